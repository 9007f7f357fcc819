"""`steppe chain …`: serve the embedded chain over JSON-RPC, deploy the contract, fund, check balances, list channels.

Commands talk to ``--rpc-url`` when given (or ``chain.rpc_url`` in the node's config), else to the embedded
chain stored under ``--home``. While `steppe chain serve` runs on a home, point the other commands at its
URL rather than at the same home: one process at a time should write an embedded chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from protocol.errors import ConfigError

if TYPE_CHECKING:
    from node.ledger.abc import Ledger

chain_app = typer.Typer(
    help="Payment chain: serve a devnet chain, deploy the contract, fund, inspect.", no_args_is_help=True
)
console = Console()

HomeOpt = Annotated[Path, typer.Option("--home", envvar="STEPPE_HOME", help="Node home directory.")]
RpcOpt = Annotated[
    str, typer.Option("--rpc-url", help="EVM JSON-RPC URL; empty: the embedded chain under --home.")
]
DevOpt = Annotated[
    int,
    typer.Option("--dev-account", help="Pay with dev account N (development chains); -1: the node's wallet."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DEFAULT_HOME = Path.home() / ".steppe"


def _ledger(home: Path, rpc_url: str) -> Ledger:
    from node.ledger.connect import open_ledger

    chain_id = 0
    if (home / "config.toml").exists():
        from node.config import load_config

        section = load_config(home).chain
        rpc_url, chain_id = rpc_url or section.rpc_url, section.chain_id
    return open_ledger(home, rpc_url, chain_id=chain_id)


def _key(home: Path, dev_account: int) -> bytes:
    if dev_account >= 0:
        from node.ledger.embedded import dev_key

        return dev_key(dev_account)
    from node.keystore import load_identity

    return load_identity(home).evm_key


def _address(value: str) -> str:
    from eth_utils import is_hex_address, to_checksum_address  # slow import: only when a command runs

    if not is_hex_address(value):
        raise ConfigError(f"{value!r} is not an EVM address (0x followed by 40 hex digits)")
    return to_checksum_address(value)


@chain_app.command("serve")
def serve_command(
    home: HomeOpt = DEFAULT_HOME,
    port: Annotated[int, typer.Option("--port", help="TCP port for JSON-RPC.")] = 8545,
    host: Annotated[
        str, typer.Option("--host", help="Listen address; keep 127.0.0.1 (dev accounts are unlocked).")
    ] = "127.0.0.1",
    chain_id: Annotated[int, typer.Option("--chain-id")] = 1337,
) -> None:
    """Serve the embedded chain under HOME over Ethereum JSON-RPC with funded, unlocked dev accounts."""
    import trio

    from node.ledger.embedded import open_chain_at_home
    from node.ledger.server import ChainServer

    chain = open_chain_at_home(home, chain_id=chain_id)
    server = ChainServer(chain, host=host, port=port)
    console.print(f"JSON-RPC on http://{host}:{port}  chain id {chain_id}  block {chain.head().block_number}")
    for address in server.methods.accounts:
        console.print(f"  dev account {address}")
    try:
        trio.run(server.run)
    except KeyboardInterrupt:
        pass
    finally:
        chain.close()


@chain_app.command("deploy")
def deploy_command(
    home: HomeOpt = DEFAULT_HOME, rpc_url: RpcOpt = "", dev_account: DevOpt = 0, as_json: JsonOpt = False
) -> None:
    """Deploy the PaymentChannels contract (the committed build) and print its address."""
    from node.ledger.channels import deploy

    ledger = _ledger(home, rpc_url)
    try:
        address, receipt = deploy(ledger, _key(home, dev_account))
    finally:
        ledger.close()
    if as_json:
        console.print_json(
            json.dumps({"contract": address, "chain_id": ledger.chain_id, "gas_used": receipt.gas_used})
        )
    else:
        console.print(
            f"PaymentChannels at [bold]{address}[/bold] on chain {ledger.chain_id} (gas {receipt.gas_used})"
        )


@chain_app.command("fund")
def fund_command(
    address: Annotated[str, typer.Argument(help="Address to send ether to.")],
    amount_wei: Annotated[int, typer.Argument(help="Amount in wei.")],
    home: HomeOpt = DEFAULT_HOME,
    rpc_url: RpcOpt = "",
    dev_account: DevOpt = 0,
) -> None:
    """Send AMOUNT_WEI to ADDRESS (from a dev account by default)."""
    ledger = _ledger(home, rpc_url)
    try:
        receipt = ledger.transact(_key(home, dev_account), _address(address), value=amount_wei, gas=21_000)
        balance = ledger.balance(_address(address))
    finally:
        ledger.close()
    console.print(
        f"sent {amount_wei} wei to {_address(address)} in block {receipt.block_number}; balance {balance} wei"
    )


@chain_app.command("balance")
def balance_command(
    address: Annotated[str, typer.Argument(help="Address; default: this node's wallet.")] = "",
    home: HomeOpt = DEFAULT_HOME,
    rpc_url: RpcOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Print the balance of ADDRESS (or of this node's wallet) in wei."""
    from eth_account import Account

    who = _address(address) if address else Account.from_key(_key(home, -1)).address
    ledger = _ledger(home, rpc_url)
    try:
        balance = ledger.balance(who)
    finally:
        ledger.close()
    if as_json:
        console.print_json(json.dumps({"address": who, "wei": str(balance)}))
    else:
        console.print(f"{who}  {balance} wei  ({balance / 10**18:.6f} ether)")


@chain_app.command("channels")
def channels_command(
    contract: Annotated[str, typer.Option("--contract", help="PaymentChannels address.")],
    home: HomeOpt = DEFAULT_HOME,
    rpc_url: RpcOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """List every channel of the contract with its payer, payee, deposit, expiry and state."""
    from node.ledger.channels import ChannelClient
    from node.ledger.embedded import dev_key

    ledger = _ledger(home, rpc_url)
    try:
        client = ChannelClient(ledger, _address(contract), dev_key(0))  # read-only: the key signs nothing
        rows = []
        for event in client.events():
            if event.name == "ChannelOpened":
                c = client.channel(event.args["channelId"])
                rows.append(
                    {
                        "id": c.channel_id,
                        "payer": c.payer,
                        "payee": c.payee,
                        "deposit": str(c.deposit),
                        "expires_at": c.expires_at,
                        "open": c.open,
                    }
                )
    finally:
        ledger.close()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "payer", "payee", "deposit (wei)", "expires at", "state")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["payer"],
            r["payee"],
            r["deposit"],
            str(r["expires_at"]),
            "open" if r["open"] else "settled",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(chain_app, name="chain")
