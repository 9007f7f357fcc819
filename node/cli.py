"""The `steppe` command line. Sub-command groups live beside the parts they drive and register here."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from node.logging import configure_logging
from protocol.errors import SteppeError

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


@app.command()
def demo(
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Where the demo keeps its state (default: a temporary folder)."),
    ] = None,
) -> None:
    """Run the whole story on embedded defaults: identity now; network, inference and payments as they land."""
    if home is None:
        home = Path(tempfile.mkdtemp(prefix="steppe-demo-"))
    console.rule("[bold]Steppe demo")
    from node.keystore import create_identity

    if not (home / "identity.key").exists():
        create_identity(home)
    _print_facts(identity_facts(home), as_json=False)


# Command groups owned by other parts. Each module exposes `register(app)`.
_COMMAND_MODULES = (
    "node.p2p.cli",
    "node.inference.cli",
    "node.ledger.cli",
)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is None:
            continue
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(app)


_register_all()


def main() -> None:
    try:
        app()
    except SteppeError as exc:
        err_console.print(f"[bold red]error:[/bold red] {exc}")
        sys.exit(2)
