"""`steppe run` (a node until Ctrl-C / SIGTERM) and `steppe status` (what a running node sees)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from protocol.errors import ConfigError

HomeOpt = Annotated[
    Path, typer.Option("--home", envvar="STEPPE_HOME", help="Node home directory (keys, config).")
]


def _fake_model(spec: str):
    """``NAME:SHA256HEX:NUM_LAYERS:START:END`` -> an advert body that claims to serve those layers.

    For tests and demos of discovery without loading weights. Raises `ConfigError`.
    """
    from protocol.advert import AdvertBody, ModelRef

    try:
        name, sha, num, start, end = spec.split(":")
        model = ModelRef(name=name, sha256=bytes.fromhex(sha), num_layers=int(num))
        return AdvertBody(addrs=(), model=model, layer_start=int(start), layer_end=int(end))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"--fake-model {spec!r}: expected NAME:SHA256HEX:NUM_LAYERS:START:END ({exc})"
        ) from exc


def run(
    home: HomeOpt = Path.home() / ".steppe",
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", help="libp2p listen multiaddr, e.g. /ip4/127.0.0.1/tcp/4001."),
    ] = None,
    bootstrap: Annotated[
        list[str] | None,
        typer.Option("--bootstrap", help="Multiaddr with /p2p/<PeerID> of a node to join through."),
    ] = None,
    api: Annotated[
        str | None, typer.Option("--api", help="Serve the HTTP API on HOST:PORT ('none' to disable).")
    ] = None,
    mdns: Annotated[bool, typer.Option("--mdns", help="Find peers on the local network with mDNS.")] = False,
    advert_ttl: Annotated[float | None, typer.Option("--advert-ttl", hidden=True)] = None,
    republish: Annotated[float | None, typer.Option("--republish", hidden=True)] = None,
    no_gossip: Annotated[bool, typer.Option("--no-gossip", hidden=True)] = False,
    fake_model: Annotated[str | None, typer.Option("--fake-model", hidden=True)] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Hugging Face checkpoint folder: serve its layers and/or be its gateway."
        ),
    ] = None,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layer range START:END to serve (none: a gateway only).")
    ] = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="tinygrad devices, e.g. CUDA or CPU:0,CPU:1.")
    ] = None,
    price: Annotated[int | None, typer.Option("--price", help="Price in wei per token per layer.")] = None,
    spot_check: Annotated[
        float, typer.Option("--spot-check", help="As a gateway: probability per step of re-checking a hop.")
    ] = 0.05,
    wire_dtype: Annotated[
        str, typer.Option("--wire-dtype", help="Hidden states between hops: float32 or float16.")
    ] = "float32",
    step_timeout: Annotated[float, typer.Option("--step-timeout", hidden=True)] = 20.0,
    price_weight: Annotated[
        float,
        typer.Option("--price-weight", help="As a gateway: ms of latency one wei per token is worth (λ)."),
    ] = 0.0,
    lie: Annotated[bool, typer.Option("--lie", hidden=True)] = False,
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds to let open sessions finish when stopping.")
    ] = 30.0,
    chain_rpc: Annotated[
        str | None,
        typer.Option("--chain-rpc", help="EVM JSON-RPC URL for payments (e.g. `steppe chain serve`)."),
    ] = None,
    contract: Annotated[
        str | None,
        typer.Option("--contract", help="PaymentChannels address; with it the node charges and pays."),
    ] = None,
    stop_paying_after: Annotated[int | None, typer.Option("--stop-paying-after", hidden=True)] = None,
) -> None:
    """Run a node until Ctrl-C or SIGTERM. With no model it is a DHT/gossip node."""
    import trio

    from node.app import open_node, p2p_settings_of
    from node.config import load_config
    from node.keystore import load_identity
    from node.logging import get_logger

    flags: dict[str, Any] = {}
    if listen:
        flags["listen"] = list(listen)
    if bootstrap:
        flags["bootstrap"] = list(bootstrap)
    if api is not None:
        flags["api"] = api
    if mdns:
        flags["mdns"] = True
    model_flags: dict[str, Any] = {}
    if model is not None:
        model_flags["path"] = str(model)
    if layers is not None:
        model_flags["layers"] = layers
    if devices is not None:
        model_flags["device"] = devices
    all_flags: dict[str, Any] = {"node": flags, "model": model_flags}
    if price is not None:
        all_flags["pricing"] = {"price_wei_per_token_layer": price}
    chain_flags: dict[str, Any] = {}
    if chain_rpc is not None:
        chain_flags["rpc_url"] = chain_rpc
    if contract is not None:
        chain_flags["contract"] = contract
    if chain_flags:
        all_flags["chain"] = chain_flags
    config = load_config(home, all_flags)
    identity = load_identity(home)
    overrides: dict[str, Any] = {"gossip": not no_gossip}
    if advert_ttl is not None:
        overrides["advert_ttl_ms"] = int(advert_ttl * 1000)
    if republish is not None:
        overrides["republish_s"] = republish
    settings = p2p_settings_of(config, **overrides)
    body = _fake_model(fake_model) if fake_model else None
    api_addr = None if config.node.api.lower() in ("", "none", "off") else config.node.api
    from node.client import ClientSettings
    from node.model_services import model_settings_of
    from node.payments import PaymentSettings
    from protocol.route import RouteParams

    client = ClientSettings(
        wire_dtype=wire_dtype,
        spot_check_p=spot_check,
        step_timeout_s=step_timeout,
        route=RouteParams(whole_ranges=True, price_weight=price_weight),
        stop_paying_after=stop_paying_after,
    )
    payments = None
    if config.chain.contract:
        payments = PaymentSettings(
            rpc_url=config.chain.rpc_url,
            contract=config.chain.contract,
            chain_id=config.chain.chain_id,
            state_dir=home / "payments",
            credit_steps=config.pricing.credit_steps,
        )
    model_settings = model_settings_of(config, lie=lie, client=client, payments=payments)
    log = get_logger("steppe.run")

    async def main() -> None:
        from contextlib import AsyncExitStack, nullcontext

        from rich.console import Console

        console = Console(stderr=True)
        loading = nullcontext()
        if console.is_terminal and model_settings is not None and model_settings.layers is not None:
            a, b = model_settings.layers
            loading = console.status(
                f"loading layers {a}:{b} of {model_settings.path.name}, compiling, measuring …"
            )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with AsyncExitStack() as stack:
                with loading:
                    node = await stack.enter_async_context(
                        open_node(
                            config,
                            identity,
                            p2p=settings,
                            advert_body=body,
                            api=api_addr,
                            model=model_settings,
                        )
                    )
                log.info("node_running", peer_id=node.peer_id, addrs=node.p2p.addrs(), api=node.api_url)
                _summary(node)
                async for signum in signals:
                    log.info("node_stopping", signal=signal.Signals(signum).name, grace_s=grace)
                    break
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_force_on_second_signal, signals, log)
                    left = await node.drain(grace)
                    if left:
                        log.warning("sessions_cut_at_shutdown", sessions=left)
                    nursery.cancel_scope.cancel()
            # Leaving open_node withdrew the advert, closed streams and settled what was due.
        log.info("node_stopped")

    trio.run(main)


async def _force_on_second_signal(signals, log) -> None:
    """A second Ctrl-C (or SIGTERM) does not wait: vouchers are already on disk, settlement resumes at
    the next start."""
    import os

    async for signum in signals:
        log.warning("node_forced_exit", signal=signal.Signals(signum).name)
        os._exit(130)


def _summary(node) -> None:
    """One line a volunteer reads at start: who, where, what it serves, on which device, how fast."""
    import sys

    parts = node.model
    what = "a DHT/gossip node"
    if parts is not None and parts.shard is not None:
        engine = parts.shard.shard
        what = (
            f"layers {engine.start}:{engine.end} of {parts.model.name} on {','.join(engine.devices)} "
            f"at {parts.tokens_per_s:.0f} tokens/s"
        )
    elif parts is not None:
        what = f"a gateway for {parts.model.name}"
    api = f", API {node.api_url}" if node.api_url else ""
    print(f"steppe node {node.peer_id}: {what}{api}", file=sys.stderr, flush=True)


def status(
    api: Annotated[str, typer.Option("--api", help="The node's API URL, e.g. http://127.0.0.1:8080.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
) -> None:
    """Print what a running node sees: peers, adverts in view, rejected messages."""
    import httpx
    from rich.console import Console
    from rich.table import Table

    url = api if "://" in api else f"http://{api}"
    try:
        reply = httpx.get(url.rstrip("/") + "/status", timeout=10)
        reply.raise_for_status()
        data = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConfigError(
            f"cannot read {url}/status ({exc}); is `steppe run` serving its API there?"
        ) from exc
    console = Console()
    if as_json:
        console.print_json(json.dumps(data))
        return
    console.print(f"[bold]PeerID[/bold]   {data['peer_id']}")
    for addr in data["addrs"]:
        console.print(f"[bold]listen[/bold]   {addr}")
    console.print(f"[bold]peers[/bold]    {len(data['peers'])} connected")
    table = Table("model", "layers", "price/token/layer", "expires in")
    table.add_column("peer", no_wrap=True)  # PeerIDs are copied from here: never cut one
    for adv in data["adverts"]:
        model = adv["model"]["name"] if adv["model"] else "-"
        table.add_row(
            model,
            "{}:{}".format(*adv["layers"]),
            str(adv["price_wei_per_token_layer"]),
            f"{adv['expires_in_s']} s",
            adv["peer_id"],
        )
    console.print(table)
    rejected = ", ".join(f"{k}={v}" for k, v in sorted(data["rejected"].items())) or "none"
    console.print(f"[bold]rejected[/bold] {rejected}")


def register(app: typer.Typer) -> None:
    app.command(name="run")(run)
    app.command(name="status")(status)
