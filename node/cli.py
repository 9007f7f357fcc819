"""The `steppe` command line. Sub-command groups live beside the parts they drive and register here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from node.logging import configure_logging
from protocol.errors import ConfigError, SteppeError

app = typer.Typer(
    name="steppe",
    help="Steppe: a peer-to-peer network for confidential, paid AI inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)

HomeOpt = Annotated[
    Path, typer.Option("--home", envvar="STEPPE_HOME", help="Node home directory (keys, config, state).")
]
DEFAULT_HOME = Path.home() / ".steppe"


@app.callback()
def _root(
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="STEPPE_LOG_FORMAT",
            help="auto (console on a TTY, else json), console or json.",
        ),
    ] = "auto",
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="STEPPE_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    try:
        configure_logging(log_format, log_level)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def identity_facts(home: Path) -> dict[str, str]:
    from node.keystore import load_identity

    ident = load_identity(home)
    return {
        "peer_id": ident.peer_id,
        "x25519_public_key": ident.x25519_public.hex(),
        "evm_address": ident.evm_address,
        "home": str(home),
    }


def _print_facts(facts: dict[str, str], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(facts))
        return
    console.print(f"[bold]PeerID[/bold]          {facts['peer_id']}")
    console.print(f"[bold]X25519 key[/bold]      {facts['x25519_public_key']}")
    console.print(f"[bold]EVM address[/bold]     {facts['evm_address']}")
    console.print(f"[bold]home[/bold]            {facts['home']}")


@app.command()
def init(
    home: HomeOpt = DEFAULT_HOME,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing identity (the old one is lost).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Create a node identity (identity.key, wallet.key; mode 0600) and a documented config.toml."""
    from node.config import CONFIG_FILE, DEFAULT_CONFIG_TOML
    from node.keystore import create_identity

    create_identity(home, force=force)
    cfg = home / CONFIG_FILE
    if force or not cfg.exists():
        cfg.write_text(DEFAULT_CONFIG_TOML)
    _print_facts(identity_facts(home), as_json)


@app.command()
def keys(
    home: HomeOpt = DEFAULT_HOME,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Print this node's PeerID, X25519 sealing key and EVM address."""
    _print_facts(identity_facts(home), as_json)


DEMO_PROMPT = "Tell me about the steppe."


def _demo_model(path: Path | None) -> Path:
    """The demo model: ``path`` if given, else a make-tiny checkpoint cached in the user's cache folder."""
    from node.inference.maketiny import make_tiny

    if path is not None:
        return path
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steppe" / "demo-model"
    if not (cache / "config.json").exists():
        console.print(f"generating the demo model (random weights, llama architecture) in {cache}")
        make_tiny(cache, arch="llama", layers=6, hidden=128, heads=4, kv_heads=2, vocab=512, seed=7)
    return cache


@app.command()
def devnet(
    model: Annotated[
        Path, typer.Option("--model", help="Checkpoint folder every node loads its layers from.")
    ],
    nodes: Annotated[
        int, typer.Option("--nodes", help="How many serving nodes (each ~1/N of the layers).")
    ] = 3,
    base_port: Annotated[
        int | None,
        typer.Option("--base-port", help="First TCP port; nodes take the next ones (default: free ports)."),
    ] = None,
) -> None:
    """Start N real node processes on loopback serving a model, plus a gateway API; Ctrl-C stops all."""
    import signal
    import time

    from node.devnet import Devnet

    net = Devnet(model=model, nodes=nodes, base_port=base_port)
    with console.status(f"starting {nodes} nodes and a gateway …"):
        net.start()
    console.print(f"[bold green]devnet up[/bold green]: {nodes} nodes, state in {net.root}")
    for n in net.members:
        console.print(f"  {n.name}  layers {n.layers[0]}:{n.layers[1]}  {n.addr}")
    console.print(f"[bold]API[/bold] {net.api_url}/v1   (Ctrl-C to stop)")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping …"):
            net.stop()
    console.print("devnet stopped")


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="What to ask.")],
    api: Annotated[
        str | None, typer.Option("--api", help="A node's API URL (default http://127.0.0.1:8080).")
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option(
            "--bootstrap", help="Join the network directly through this multiaddr (needs --model DIR)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="With --api: a model id (default: the first served). With --bootstrap: the checkpoint folder.",
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 32,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Use the chat template.")] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the route, per-hop latency and tokens/s.")
    ] = False,
) -> None:
    """Ask the network (through a node's API, or joining it directly) and stream the answer."""
    from node.ask import ask_api, ask_p2p

    options = dict(max_tokens=max_tokens, temperature=temperature, seed=seed, chat=chat, out=sys.stdout)
    if bootstrap:
        if api is not None:
            raise ConfigError("use either --api or --bootstrap, not both")
        if model is None or not Path(model).is_dir():
            raise ConfigError("--bootstrap needs --model DIR: the checkpoint folder holding the tokenizer")
        stats = ask_p2p(list(bootstrap), Path(model), prompt, **options)
    else:
        stats = ask_api(api or "http://127.0.0.1:8080", prompt, model=model, **options)
    if verbose:
        _print_stats(stats)


def _print_stats(stats: dict) -> None:
    for route in stats.get("routes", []):
        console.print(f"[bold]route[/bold]   {route}")
    for hop in stats.get("hops", []):
        console.print(
            f"  hop {hop['layers']:>7} …{hop['peer_id'][-8:]}  {hop['avg_ms']} ms/step "
            f"(network+sealing {hop['overhead_ms']} ms)"
        )
    console.print(
        f"[bold]tokens[/bold]  {stats.get('new_tokens')} new, {stats.get('tokens_per_s')} tokens/s, "
        f"first token after {stats.get('time_to_first_token_s')} s"
    )
    checks = stats.get("spot_checks", {})
    if checks.get("run"):
        console.print(
            f"[bold]spot checks[/bold] {checks['run']} ({checks['cost_fraction'] * 100:.1f}% of the time)"
        )


@app.command()
def demo(
    model: Annotated[
        Path | None, typer.Option("--model", help="Checkpoint to serve (default: a generated tiny model).")
    ] = None,
    nodes: Annotated[int, typer.Option("--nodes")] = 3,
    prompt: Annotated[str, typer.Option("--prompt")] = DEMO_PROMPT,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 24,
    price: Annotated[int, typer.Option("--price", help="Wei per token per layer (0: free, no chain).")] = 10
    ** 12,
) -> None:
    """The whole story in one command: a model, a chain, a 3-node devnet, a sealed, paid generation."""
    from node.ask import ask_api
    from node.devnet import Devnet

    console.rule("[bold]Steppe demo")
    model_dir = _demo_model(model)
    net = Devnet(model=model_dir, nodes=nodes, price=price)
    with console.status(f"starting a chain, {nodes} volunteer nodes and a gateway on 127.0.0.1 …"):
        net.start()
    try:
        if net.chain is not None:
            console.print(
                f"chain {net.chain.url} (id {net.chain.chain_id}), PaymentChannels at {net.chain.contract}"
            )
        for n in net.members:
            console.print(
                f"node [bold]{n.name}[/bold] {n.peer_id}  serves layers {n.layers[0]}:{n.layers[1]}"
            )
        console.print(
            f"gateway API {net.api_url}/v1 (OpenAI-compatible), price {price} wei per token per layer"
        )
        console.print(f"[bold]prompt[/bold]  {prompt}")
        console.print("[bold]answer[/bold]  ", end="")
        stats = ask_api(
            net.api_url, prompt, max_tokens=max_tokens, temperature=0.0, chat=True, out=sys.stdout
        )
        console.print("[dim](random weights: the words are noise; the route and the numbers are real)[/dim]")
        _print_stats(stats)
        if net.chain is not None:
            _print_payments(net, stats)
    finally:
        with console.status("stopping the devnet (providers settle their channels on chain) …"):
            net.stop()
    try:
        if net.chain is not None:
            _print_settlement(net)
    finally:
        net.stop_chain()
    console.print("[bold green]demo finished[/bold green]")


def _print_payments(net, stats: dict) -> None:
    console.print(f"[bold]paid[/bold]    {stats.get('paid_wei', 0)} wei in vouchers, one per hop per step")
    for n in net.members:
        pay = net.status(n)["model"]["payments"]
        channels = ", ".join(f"#{c['channel']} deposit {c['deposit']}" for c in pay["open_channels_in"])
        console.print(f"  {n.name} earned {pay['earned_wei']} wei (vouchers on disk; channel {channels})")


def _print_settlement(net) -> None:
    from node.ledger.channels import ChannelClient
    from node.ledger.embedded import dev_key

    ledger = net.chain.ledger()
    try:
        client = ChannelClient(ledger, net.chain.contract, dev_key(0))
        names = {net.address(n): n.name for n in [*net.members, net.gateway]}
        opened = {}
        for event in client.events():
            if event.name == "ChannelOpened":
                opened[event.args["channelId"]] = event.args
                console.print(
                    f"[bold]open[/bold]    channel #{event.args['channelId']} gateway → "
                    f"{names.get(event.args['payee'], event.args['payee'])}, deposit {event.args['deposit']} wei "
                    f"(tx {event.tx_hash.hex()[:16]}…)"
                )
            elif event.name == "ChannelClosed":
                payee = opened.get(event.args["channelId"], {}).get("payee", "?")
                console.print(
                    f"[bold]settle[/bold]  channel #{event.args['channelId']}: {event.args['paid']} wei to "
                    f"{names.get(payee, payee)}, {event.args['refunded']} wei back to the gateway "
                    f"(tx {event.tx_hash.hex()[:16]}…)"
                )
        for address, name in names.items():
            funded = net.chain.funded.get(address, 0)
            delta = ledger.balance(address) - funded
            console.print(f"  {name:8} balance change {delta:+} wei (gas included)")
    finally:
        ledger.close()


# Command groups owned by other parts register through the "steppe.commands" entry points (see
# pyproject.toml): each names a `register(app)` function. This keeps node/ from importing sim/.
COMMAND_GROUP = "steppe.commands"


def _register_all() -> None:
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(app)


_register_all()


def main() -> None:
    try:
        app()
    except SteppeError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)
