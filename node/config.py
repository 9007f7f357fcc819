"""Node configuration: ``config.toml`` < ``STEPPE_<SECTION>_<KEY>`` environment variables < flags.

Every value is validated on load; an unknown key or a bad value raises `ConfigError` naming where it came
from. Sections are frozen dataclasses; `DEFAULT_CONFIG_TOML` is the documented file `steppe init` writes.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class NodeSection:
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    api: str = "127.0.0.1:8080"


@dataclass(frozen=True)
class ModelSection:
    path: str = ""
    layers: str = ""
    device: str = "auto"
    dtype: str = "float32"
    max_sessions: int = 8
    max_context: int = 2048


@dataclass(frozen=True)
class PricingSection:
    price_wei_per_token_layer: int = 1_000_000_000
    credit_steps: int = 1


@dataclass(frozen=True)
class ChainSection:
    rpc_url: str = ""
    contract: str = ""
    chain_id: int = 0


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    model: ModelSection = field(default_factory=ModelSection)
    pricing: PricingSection = field(default_factory=PricingSection)
    chain: ChainSection = field(default_factory=ChainSection)


DEFAULT_CONFIG_TOML = """\
# Steppe node configuration.
# Precedence: this file < environment variables STEPPE_<SECTION>_<KEY> (e.g. STEPPE_NODE_API) < flags.

[node]
# libp2p listen multiaddrs (TCP). 0.0.0.0 listens on every interface.
listen = ["/ip4/0.0.0.0/tcp/4001"]
# Multiaddrs with /p2p/<PeerID> of nodes to join through.
bootstrap = []
# Find peers on the local network with mDNS.
mdns = false
# HTTP API (OpenAI-compatible, /status, /metrics). Keep it on 127.0.0.1 unless you put auth in front.
api = "127.0.0.1:8080"

[model]
# A Hugging Face checkpoint directory (config.json + safetensors). Empty: a DHT/gossip-only node.
path = ""
# Layer range to serve, "start:end" (end exclusive). Empty: all layers.
layers = ""
# "auto" picks CUDA, AMD, METAL, else CPU:LLVM. Several devices: "CPU:0,CPU:1".
device = "auto"
# Compute dtype: float32 or float16.
dtype = "float32"
max_sessions = 8
max_context = 2048

[pricing]
# Price in wei per token per layer served.
price_wei_per_token_layer = 1000000000
# How many unpaid steps a client may run before it must send a voucher.
credit_steps = 1

[chain]
# An EVM JSON-RPC URL. Empty: the embedded chain under this home directory.
rpc_url = ""
# Payment-channel contract address. Empty: deploy on the embedded chain.
contract = ""
chain_id = 0
"""


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is tuple:
        if isinstance(value, str):  # environment variables: comma-separated lists
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if typ is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.lower() in ("1", "true", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must not be negative, got {value}")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {typ}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_config(layers: list[tuple[str, dict[str, Any]]]) -> Config:
    """Merge ``[(source_name, {section: {key: value}})]`` in order, later sources winning."""
    merged: dict[str, dict[str, Any]] = {}
    sections = _section_types(Config)
    for source, data in layers:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of sections")
        for sec_name, sec_values in data.items():
            if sec_name not in sections:
                raise ConfigError(f"{source}: unknown section [{sec_name}]; known: {', '.join(sections)}")
            if not isinstance(sec_values, dict):
                raise ConfigError(f"{source}: [{sec_name}] must be a table")
            fields = _section_types(sections[sec_name])
            for key, value in sec_values.items():
                if key not in fields:
                    raise ConfigError(f"{source}: unknown key {sec_name}.{key}; known: {', '.join(fields)}")
                merged.setdefault(sec_name, {})[key] = _coerce(
                    value, fields[key], f"{source}: {sec_name}.{key}"
                )
    return Config(**{name: sections[name](**merged.get(name, {})) for name in sections})


def env_layer(environ: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``STEPPE_NODE_API=…`` → ``{"node": {"api": "…"}}``. Unknown STEPPE_ names raise `ConfigError`."""
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, Any]] = {}
    sections = _section_types(Config)
    for name, value in environ.items():
        if not name.startswith("STEPPE_") or name in _NON_CONFIG_ENV:
            continue
        rest = name[len("STEPPE_") :].lower()
        sec, _, key = rest.partition("_")
        if sec not in sections or key not in _section_types(sections[sec]):
            raise ConfigError(f"environment variable {name} is not a known setting")
        out.setdefault(sec, {})[key] = value
    return out


# STEPPE_* variables that are not config keys (test switches, paths).
_NON_CONFIG_ENV = frozenset(
    {
        "STEPPE_SKIP_SLOW",
        "STEPPE_HOME",
        "STEPPE_LOG_FORMAT",
        "STEPPE_LOG_LEVEL",
        "STEPPE_CONTRACTS_DIR",
        "STEPPE_TEST_DEPS",
    }
)


def load_config(home: Path, flags: dict[str, dict[str, Any]] | None = None) -> Config:
    """Load ``home/config.toml`` (optional), then the environment, then ``flags``. Raises `ConfigError`."""
    layers: list[tuple[str, dict[str, Any]]] = []
    path = home / CONFIG_FILE
    if path.exists():
        try:
            layers.append((str(path), tomllib.loads(path.read_text("utf-8"))))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    layers.append(("environment", env_layer()))
    if flags:
        layers.append(("command line", flags))
    return build_config(layers)


def as_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)
