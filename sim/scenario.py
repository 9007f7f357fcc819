"""Scenario files: TOML describing a simulated swarm, its faults, its adversaries and its workload.

`load_scenario(path)` / `parse_scenario(dict)` return a frozen `Scenario` or raise `ScenarioError` naming
the offending key (``churn.per_minute: must be a number >= 0``). Unknown keys are errors, so a typo never
silently leaves a default in place. Times in scenario files are virtual seconds (``_s``) or milliseconds
(``_ms``). See ``sim/scenarios/*.toml`` for complete examples.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.advert import MAX_TTL_MS
from protocol.errors import ConfigError


class ScenarioError(ConfigError):
    """A scenario file that cannot be run as written; the message names the key and what is expected."""


@dataclass(frozen=True)
class NetworkSpec:
    latency_ms: float = 50.0
    jitter_ms: float = 20.0
    bandwidth_mbps: float = 0.0  # 0: unlimited
    loss: float = 0.0  # probability that a write stalls (a retransmission)
    stall_ms: float = 200.0
    drop: float = 0.0  # probability that a write resets its connection
    quantum_ms: float = 0.0


@dataclass(frozen=True)
class ModelSpec:
    #: "cost": the declared cost model (`sim.backend.CostModelShard`), for hundreds of nodes; "tinygrad":
    #: the real engine on a make-tiny checkpoint of these dimensions (small runs: every provider compiles it).
    backend: str = "cost"
    layers: int = 4
    hidden: int = 32
    vocab: int = 300
    #: Cost model: virtual ms per row per layer, plus a fixed ms per forward.
    per_token_layer_ms: float = 2.0
    base_ms: float = 1.0
    max_sessions: int = 8
    max_context: int = 512


@dataclass(frozen=True)
class ProviderGroup:
    count: int = 1
    layers: str = "0:4"
    lie: bool = False  # returns wrong activations (an adversary)

    def span(self) -> tuple[int, int]:
        a, b = self.layers.split(":")
        return int(a), int(b)


@dataclass(frozen=True)
class GatewayGroup:
    count: int = 1
    stop_paying_after: int = -1  # >= 0: a free-rider that stops paying after that many paid steps


@dataclass(frozen=True)
class NodesSpec:
    relays: int = 0
    providers: tuple[ProviderGroup, ...] = ()
    gateways: tuple[GatewayGroup, ...] = ()
    bootstrap: int = 2  # the first nodes are the bootstrap nodes
    #: Bootstrap addresses each node is given, drawn from those: 0 = all of them. A few of many spreads
    #: the join load (every bootstrap node otherwise holds a connection to every node).
    bootstrap_per_node: int = 0
    target_peers: int = 8
    advert_ttl_s: float = 120.0
    republish_s: float = 30.0
    #: Relays (nodes serving nothing) may republish less often, with a longer TTL: their adverts carry
    #: only addresses, which rarely change. 0: the same as ``republish_s`` / ``advert_ttl_s``.
    relay_republish_s: float = 0.0
    relay_advert_ttl_s: float = 0.0
    start_spread_s: float = 5.0  # nodes start evenly spread over this much virtual time


@dataclass(frozen=True)
class PaymentsSpec:
    enabled: bool = False
    price_wei_per_token_layer: int = 1_000_000_007
    credit_steps: int = 1
    deposit_wei: int = 10**15


@dataclass(frozen=True)
class ChurnSpec:
    #: Fraction of churnable nodes (relays and honest providers) hit by an event per virtual minute.
    per_minute: float = 0.0
    crash_fraction: float = 0.5  # of events: a crash (no goodbye); the rest leave gracefully
    restart_after_s: float = 20.0  # a node that left or crashed comes back after this long
    #: New nodes (relays) joining per virtual minute, as a fraction of the initial node count.
    join_per_minute: float = 0.0


@dataclass(frozen=True)
class PartitionSpec:
    at_s: float = 0.0
    duration_s: float = 10.0
    fraction: float = 0.5  # of honest nodes cut from the rest
    mode: str = "stall"


@dataclass(frozen=True)
class WorkloadSpec:
    generations_per_s: float = 0.0
    prompt_tokens: int = 8
    max_new_tokens: int = 8
    timeout_s: float = 60.0
    spot_check_p: float = 0.0
    step_timeout_s: float = 10.0


@dataclass(frozen=True)
class DhtSpec:
    lookups_per_s: float = 0.0


@dataclass(frozen=True)
class AdversarySpec:
    forgers: int = 0
    forge_per_s: float = 1.0
    flooders: int = 0
    flood_per_s: float = 5.0
    replayers: int = 0
    replay_per_s: float = 1.0
    eclipse_attackers: int = 0  # sybils that crowd one gateway and relay nothing


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    warmup_s: float = 15.0
    seed: int = 1
    description: str = ""
    network: NetworkSpec = field(default_factory=NetworkSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    nodes: NodesSpec = field(default_factory=NodesSpec)
    payments: PaymentsSpec = field(default_factory=PaymentsSpec)
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    partitions: tuple[PartitionSpec, ...] = ()
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    dht: DhtSpec = field(default_factory=DhtSpec)
    adversaries: AdversarySpec = field(default_factory=AdversarySpec)
    #: Targets printed beside measured values in the report: metric name -> "<= 1.5" / ">= 0.99" / "== 0".
    targets: dict[str, str] = field(default_factory=dict)

    @property
    def honest_count(self) -> int:
        n = self.nodes
        return n.relays + sum(g.count for g in n.providers if not g.lie) + sum(g.count for g in n.gateways)


# -- validation -------------------------------------------------------------------------------------------

_RANGES: dict[str, tuple[float, float | None]] = {
    "duration_s": (1, None),
    "warmup_s": (0, None),
    "network.latency_ms": (0, None),
    "network.jitter_ms": (0, None),
    "network.bandwidth_mbps": (0, None),
    "network.loss": (0, 1),
    "network.drop": (0, 1),
    "network.stall_ms": (0, None),
    "network.quantum_ms": (0, None),
    "model.layers": (1, 1000),
    "model.hidden": (4, 4096),
    "model.vocab": (260, 200_000),
    "model.per_token_layer_ms": (0, None),
    "model.base_ms": (0, None),
    "model.max_sessions": (1, None),
    "model.max_context": (2, None),
    "nodes.relays": (0, None),
    "nodes.bootstrap": (1, None),
    "nodes.bootstrap_per_node": (0, None),
    "nodes.target_peers": (1, None),
    "nodes.advert_ttl_s": (2, None),
    "nodes.republish_s": (1, None),
    "nodes.relay_republish_s": (0, None),
    "nodes.relay_advert_ttl_s": (0, None),
    "nodes.start_spread_s": (0, None),
    "nodes.providers.count": (1, None),
    "nodes.gateways.count": (1, None),
    "nodes.gateways.stop_paying_after": (-1, None),
    "payments.price_wei_per_token_layer": (1, None),
    "payments.credit_steps": (1, None),
    "payments.deposit_wei": (1, None),
    "churn.per_minute": (0, None),
    "churn.crash_fraction": (0, 1),
    "churn.restart_after_s": (0, None),
    "churn.join_per_minute": (0, None),
    "partitions.at_s": (0, None),
    "partitions.duration_s": (0, None),
    "partitions.fraction": (0, 1),
    "workload.generations_per_s": (0, None),
    "workload.prompt_tokens": (1, None),
    "workload.max_new_tokens": (1, None),
    "workload.timeout_s": (1, None),
    "workload.spot_check_p": (0, 1),
    "workload.step_timeout_s": (0.1, None),
    "dht.lookups_per_s": (0, None),
    "adversaries.forgers": (0, None),
    "adversaries.forge_per_s": (0, None),
    "adversaries.flooders": (0, None),
    "adversaries.flood_per_s": (0, None),
    "adversaries.replayers": (0, None),
    "adversaries.replay_per_s": (0, None),
    "adversaries.eclipse_attackers": (0, None),
}


def _fail(where: str, what: str) -> typing.NoReturn:
    raise ScenarioError(f"{where}: {what}")


def _convert(where: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _fail(where, "must be a table")
        return _build(tp, value, where)
    if origin is tuple:
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if not isinstance(value, list):
            _fail(where, "must be an array")
        return tuple(_convert(f"{where}[{i}]", item, v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            _fail(where, "must be a table of strings")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(where, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(where, "must be a string")
        return value
    raise AssertionError(f"unsupported field type {tp!r}")  # a schema bug, not a user error


def _build(cls: Any, raw: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        _fail(
            f"{prefix}.{unknown[0]}" if prefix else unknown[0],
            f"unknown key (known: {', '.join(sorted(names))})",
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        where = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                _fail(where, "is required")
            continue
        tp = hints[f.name]
        if isinstance(tp, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        value = _convert(where, tp, raw[f.name])
        key = _range_key(where)
        if key in _RANGES and isinstance(value, int | float):
            lo, hi = _RANGES[key]
            if value < lo or (hi is not None and value > hi):
                _fail(where, f"must be a number >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
        kwargs[f.name] = value
    return cls(**kwargs)


def _range_key(where: str) -> str:
    import re

    return re.sub(r"\[\d+\]", "", where)


def _check(sc: Scenario) -> None:
    if sc.warmup_s >= sc.duration_s:
        _fail("warmup_s", "must be shorter than duration_s")
    n = sc.nodes
    for key in ("advert_ttl_s", "relay_advert_ttl_s"):
        if getattr(n, key) > MAX_TTL_MS / 1000:
            _fail(f"nodes.{key}", f"must be <= {MAX_TTL_MS // 1000} (peers refuse adverts that live longer)")
    if n.republish_s >= n.advert_ttl_s:
        _fail("nodes.republish_s", "must be shorter than nodes.advert_ttl_s (adverts would lapse)")
    if (n.relay_republish_s or n.republish_s) >= (n.relay_advert_ttl_s or n.advert_ttl_s):
        _fail("nodes.relay_republish_s", "must be shorter than the relays' advert TTL (adverts would lapse)")
    layers = sc.model.layers
    for i, g in enumerate(sc.nodes.providers):
        where = f"nodes.providers[{i}].layers"
        try:
            a, b = g.span()
        except ValueError:
            _fail(where, f"must look like '0:{layers}'")
        if not 0 <= a < b <= layers:
            _fail(where, f"{g.layers!r} is outside the model's {layers} layers")
    honest = [g for g in sc.nodes.providers if not g.lie]
    covered = sorted({g.span() for g in honest})
    edge = 0
    for a, b in covered:
        if a > edge:
            break
        edge = max(edge, b)
    if sc.workload.generations_per_s > 0 and edge < layers:
        _fail("nodes.providers", f"honest providers must cover layers 0:{layers} for the workload")
    if sc.workload.generations_per_s > 0 and not sc.nodes.gateways:
        _fail("nodes.gateways", "a workload needs at least one gateway")
    spans = {g.span() for g in sc.nodes.providers}
    for a, b in spans:
        for c, d in spans:
            if (a, b) != (c, d) and a < d and c < b:
                _fail("nodes.providers", "provider spans must tile the model without overlapping")
    total = sc.honest_count + sum(g.count for g in sc.nodes.providers if g.lie)
    if sc.nodes.bootstrap > total:
        _fail("nodes.bootstrap", f"is larger than the {total} nodes of the scenario")
    if sc.model.backend not in ("cost", "tinygrad"):
        _fail("model.backend", "must be 'cost' or 'tinygrad'")
    if sc.model.backend == "tinygrad" and sc.model.hidden % 4:
        _fail("model.hidden", "must be a multiple of the make-tiny checkpoint's 4 heads")
    for i, p in enumerate(sc.partitions):
        if p.mode not in ("stall", "drop"):
            _fail(f"partitions[{i}].mode", "must be 'stall' or 'drop'")
    if sc.adversaries.eclipse_attackers and not sc.nodes.gateways:
        _fail("adversaries.eclipse_attackers", "the eclipse target is the first gateway: add one")
    for key, target in sc.targets.items():
        parts = target.split()
        if len(parts) != 2 or parts[0] not in ("<=", ">=", "==") or not _is_number(parts[1]):
            _fail(f"targets.{key}", "must look like '<= 1.5', '>= 0.99' or '== 0'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_scenario(raw: dict[str, Any]) -> Scenario:
    """Validate a parsed TOML document. Raises `ScenarioError`."""
    sc = _build(Scenario, raw)
    _check(sc)
    return sc


def with_duration(sc: Scenario, duration_s: float) -> Scenario:
    """``sc`` run for ``duration_s`` virtual seconds instead. Raises `ScenarioError`."""
    if not duration_s > sc.warmup_s:
        _fail("--duration", f"must be longer than the scenario's warmup_s ({sc.warmup_s:g} s)")
    return dataclasses.replace(sc, duration_s=float(duration_s))


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file. Raises `ScenarioError` (unreadable, not TOML, or invalid)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path} is not valid TOML: {exc}") from exc
    return parse_scenario(raw)
