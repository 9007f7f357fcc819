"""Run a `Scenario`: real nodes (`node.app.open_node`) on a `SimNetwork` under trio's mock clock.

Each node is the same wiring the CLI uses, over `SimTransport` and a `TrioClock`; serving nodes load the
declared cost-model backend (`sim.backend`). The runner drives churn (crash, graceful leave, restart, join),
partitions, a generation workload through the gateways' clients, DHT lookups, and the adversaries of
`sim.adversary`, and records everything in a `Collector` (virtual time only). `run_scenario` is the
synchronous entry point: it returns the metrics dict and never touches the wall clock except to report it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from node.app import Node, open_node, p2p_settings_of
from node.client import ClientSettings
from node.config import Config
from node.inference.config import ModelConfig
from node.logging import get_logger
from node.model_services import ModelSettings
from node.p2p import speedups
from node.p2p.clock import TrioClock
from node.p2p.gossip import TOPIC
from protocol.advert import ModelRef, SignedAdvert
from protocol.identity import Identity
from protocol.route import RouteParams

from .backend import CostModel, CostModelShard, InlineShard, TinygradReference
from .clock import sim_clock, simulation
from .collect import DELIVERY_WINDOW_S, Collector, Published, propagation_curves, summarise
from .drivers import Drivers
from .net import LinkSpec, SimNetwork
from .quiet import without_log_calls
from .scenario import GatewayGroup, ProviderGroup, Scenario
from .signatures import shared_signature_checks
from .transport import SimTransport

log = get_logger("steppe.sim")

PORT = 4001
EPOCH_MS = 1_800_000_000_000


@dataclass
class SimNode:
    index: int
    ip: str
    identity: Identity
    role: str  # relay, provider, gateway, forger, flooder, replayer, eclipse
    group: ProviderGroup | GatewayGroup | None = None
    node: Node | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    up: bool = False
    up_since: float = 0.0
    down_since: float = 0.0
    churnable: bool = False
    earned_wei: int = 0
    charged: dict[int, int] = field(default_factory=dict)
    covered: dict[int, int] = field(default_factory=dict)
    tokens_served: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def honest(self) -> bool:
        if self.role in ("relay", "gateway"):
            return self.role != "gateway" or not self.free_rider
        return self.role == "provider" and not self.group.lie  # type: ignore[union-attr]

    @property
    def free_rider(self) -> bool:
        return isinstance(self.group, GatewayGroup) and self.group.stop_paying_after >= 0

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{PORT}/p2p/{self.identity.peer_id}"


class Simulation(Drivers):
    """One run of a scenario. Build, then ``trio.run(sim.main, clock=sim.clock)``; or use `run_scenario`."""

    def __init__(
        self, scenario: Scenario, seed: int, workdir: Path, progress: Callable[[float], None] | None = None
    ) -> None:
        self.sc, self.seed, self.workdir, self.progress = scenario, seed, workdir, progress
        self.clock = sim_clock()
        self.c = Collector(epoch_ms=EPOCH_MS)
        self.nodes: list[SimNode] = []
        self.by_peer: dict[str, SimNode] = {}
        self.model_dir = workdir / "model"
        self.model_cfg: ModelConfig | None = None
        self.model_ref: ModelRef | None = None
        self.reference: TinygradReference | None = None  # the tinygrad backend's oracle
        self.spans: list[tuple[int, int]] = []
        self.payments = None  # sim.ledger.SimChain when payments are on
        self.nursery: trio.Nursery | None = None
        self.net: SimNetwork | None = None
        self.rng = None
        self.end_s = scenario.duration_s
        self.curves: dict = {}

    # -- setup ---------------------------------------------------------------------------------------

    def _prepare_model(self) -> None:
        from node.inference.maketiny import make_tiny

        m = self.sc.model
        if not (self.model_dir / "config.json").exists():
            make_tiny(
                self.model_dir, layers=m.layers, hidden=m.hidden, heads=4, kv_heads=2, vocab=m.vocab, seed=1
            )
        self.model_cfg = ModelConfig.load(self.model_dir)
        sha = hashlib.sha256(f"steppe-sim-cost-model|{m.layers}|{m.hidden}|{m.vocab}".encode()).digest()
        self.model_ref = ModelRef(name="sim-cost-model", sha256=sha, num_layers=m.layers)
        self.spans = sorted({g.span() for g in self.sc.nodes.providers if not g.lie})
        if self.sc.model.backend == "tinygrad" and self.sc.workload.generations_per_s > 0:
            self.reference = TinygradReference(self.model_dir, self.spans, self.sc.model.max_context)

    def _plan_nodes(self) -> None:
        """Node order: bootstrap-capable honest nodes first (relays, providers, gateways), then adversaries."""
        n, adv = self.sc.nodes, self.sc.adversaries
        plan: list[tuple[str, ProviderGroup | GatewayGroup | None]] = []
        plan += [("relay", None)] * n.relays
        honest_p = [g for g in n.providers if not g.lie]
        # Interleave provider groups so each stage has early providers.
        rows = max((g.count for g in honest_p), default=0)
        for k in range(rows):
            plan += [("provider", g) for g in honest_p if k < g.count]
        plan += [("gateway", g) for g in n.gateways if g.stop_paying_after < 0 for _ in range(g.count)]
        plan += [("provider", g) for g in n.providers if g.lie for _ in range(g.count)]
        plan += [("gateway", g) for g in n.gateways if g.stop_paying_after >= 0 for _ in range(g.count)]
        plan += [("forger", None)] * adv.forgers + [("flooder", None)] * adv.flooders
        plan += [("replayer", None)] * adv.replayers + [("eclipse", None)] * adv.eclipse_attackers
        for role, group in plan:
            self._add_node(role, group)

    def _add_node(self, role: str, group) -> SimNode:
        assert self.net is not None
        idx = len(self.nodes)
        ident = Identity.from_int(1 + idx + 100_000 * (self.seed % 1000))
        sn = SimNode(idx, self.net.add_node(), ident, role, group)
        sn.churnable = idx >= self.sc.nodes.bootstrap and (
            role == "relay" or (role == "provider" and not group.lie)
        )
        self.nodes.append(sn)
        self.by_peer[ident.peer_id] = sn
        return sn

    def _model_settings(self, sn: SimNode) -> ModelSettings | None:
        sc = self.sc
        if sn.role not in ("provider", "gateway"):
            return None
        assert self.model_cfg is not None
        cost = CostModel(sc.model.per_token_layer_ms / 1000, sc.model.base_ms / 1000)
        cfg = self.model_cfg
        layers = sn.group.span() if sn.role == "provider" else None  # type: ignore[union-attr]

        async def load_shard(settings: ModelSettings) -> CostModelShard | InlineShard:
            assert settings.layers is not None
            a, b = settings.layers
            if sc.model.backend == "tinygrad":
                return InlineShard.load(
                    self.model_dir,
                    a,
                    b,
                    cost=cost,
                    max_sessions=sc.model.max_sessions,
                    max_context=sc.model.max_context,
                )
            return CostModelShard(
                cfg, a, b, cost=cost, max_sessions=sc.model.max_sessions, max_context=sc.model.max_context
            )

        stop = sn.group.stop_paying_after if sn.free_rider else None  # type: ignore[union-attr]
        client = ClientSettings(
            spot_check_p=sc.workload.spot_check_p,
            step_timeout_s=sc.workload.step_timeout_s,
            route=RouteParams(whole_ranges=True),
            seed=self.seed * 7919 + sn.index,
            stop_paying_after=stop,
        )
        pay = self.payments.settings_for(sn) if self.payments is not None else None
        return ModelSettings(
            path=self.model_dir,
            layers=layers,
            max_sessions=sc.model.max_sessions,
            max_context=sc.model.max_context,
            client=client,
            lie=bool(sn.role == "provider" and sn.group.lie),  # type: ignore[union-attr]
            payments=pay,
            price_wei_per_token_layer=sc.payments.price_wei_per_token_layer if pay is not None else 0,
            credit_steps=sc.payments.credit_steps,
            load_shard=load_shard,
            model_ref=self.model_ref,
        )

    def _bootstrap_of(self, sn: SimNode) -> tuple[str, ...]:
        if sn.role == "eclipse":
            return (self.eclipse_target().addr,)
        boot = [b.addr for b in self.nodes[: self.sc.nodes.bootstrap] if b is not sn]
        k = self.sc.nodes.bootstrap_per_node
        if 0 < k < len(boot):
            # Seeded by the node's index (not the run's RNG), so a restart gets the same list.
            boot = random.Random(f"{self.seed}|boot|{sn.index}").sample(boot, k)
        return tuple(boot)

    def eclipse_target(self) -> SimNode:
        return next(s for s in self.nodes if s.role == "gateway" and not s.free_rider)

    # -- node lifecycle ------------------------------------------------------------------------------

    async def _node_task(self, sn: SimNode) -> None:
        from . import adversary

        assert self.net is not None
        sc = self.sc
        ttl_s, republish_s = sc.nodes.advert_ttl_s, sc.nodes.republish_s
        if sn.role == "relay":
            ttl_s = sc.nodes.relay_advert_ttl_s or ttl_s
            republish_s = sc.nodes.relay_republish_s or republish_s
        settings = p2p_settings_of(
            Config(),
            listen=(f"/ip4/{sn.ip}/tcp/{PORT}",),
            bootstrap=self._bootstrap_of(sn),
            advert_ttl_ms=int(ttl_s * 1000),
            republish_s=republish_s,
            target_peers=40 if sn.role == "eclipse" else sc.nodes.target_peers,
        )
        sn.stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                sn.scope = scope
                async with open_node(
                    Config(),
                    sn.identity,
                    transport=SimTransport(self.net, sn.ip),
                    clock=TrioClock(EPOCH_MS),
                    p2p=settings,
                    model=self._model_settings(sn),
                ) as node:
                    sn.node, sn.up, sn.up_since = node, True, trio.current_time()
                    self._instrument(sn)
                    async with trio.open_nursery() as nursery:
                        adversary.start(self, sn, nursery)
                        await trio.sleep_forever()
        finally:
            self._harvest(sn)
            sn.node, sn.up, sn.scope = None, False, None
            sn.down_since = trio.current_time()
            sn.stopped.set()

    def _instrument(self, sn: SimNode) -> None:
        """Count deliveries (validator callback) and duplicate copies (pubsub's receive path)."""
        node = sn.node
        assert node is not None
        c = self.c
        if not sn.honest:
            return
        gossip = node.p2p.gossip
        # A restarted node starts with an empty view: what its earlier life saw cannot make a copy a replay.
        c.max_seq_seen[sn.index] = {}

        # The node's own callback (it puts the advert's addresses in the peerstore) must still run: replacing
        # it left every simulated node unable to dial a peer it knew only from gossip.
        learn = gossip.on_advert

        def on_advert(advert: SignedAdvert) -> None:
            if learn is not None:
                learn(advert)
            now = trio.current_time()
            src = self.by_peer.get(advert.peer_id)
            if src is not None:
                c.delivered[(src.index, advert.seq)].setdefault(sn.index, now)
            seen = c.max_seq_seen[sn.index]
            if advert.peer_id in seen and advert.seq < seen[advert.peer_id]:
                c.adversary["replayed_adverts_accepted"] += 1
            seen[advert.peer_id] = max(seen.get(advert.peer_id, 0), advert.seq)
            if advert.body.software.startswith("forged"):
                c.adversary["forged_adverts_accepted"] += 1

        gossip.on_advert = on_advert
        # Every message a peer sends passes the read loop's topic test (which also drops what was seen).
        pubsub = gossip.pubsub
        wanted = pubsub._is_subscribed_to_msg
        drops_seen = getattr(wanted, "__func__", None) is speedups._wanted

        def counted(msg) -> bool:
            if TOPIC in msg.topicIDs:
                c.received_copies[sn.index] += 1
                if pubsub._is_msg_seen(msg):
                    c.duplicate_copies[sn.index] += 1
                    # the read loop's test would look it up again and refuse it (same instant, same answer)
                    if drops_seen:
                        return False
            return wanted(msg)

        pubsub._is_subscribed_to_msg = counted
        # Record our own publications: which honest nodes should receive them.
        p2p = node.p2p
        sign = p2p._sign

        def signed(ttl_ms: int) -> SignedAdvert:
            advert = sign(ttl_ms)
            now = trio.current_time()
            # Samples: adverts signed after the warm-up (the swarm formed), not withdrawals (1 s adverts).
            if ttl_ms >= 5000 and now >= self.sc.warmup_s:
                pop = frozenset(
                    s.index for s in self.nodes if s.up and s.honest and s is not sn and now - s.up_since >= 5
                )
                c.published[(sn.index, advert.seq)] = Published(
                    sn.index, advert.issued_at, advert.expires_at, pop
                )
            return advert

        p2p._sign = signed

    def _harvest(self, sn: SimNode) -> None:
        """Add what a stopping node counted to the run's totals (a node is rebuilt on restart)."""
        node = sn.node
        if node is None:
            return
        if sn.honest:
            for k, v in node.p2p.view.rejected.items():
                self.c.honest_rejected[k] += v
            banned = node.p2p.gossip._banned
            for peer in banned:
                bad = self.by_peer.get(str(peer))
                role = bad.role if bad is not None else "unknown"
                self.c.adversary[f"bans_of_{role}"] += 1
        parts = node.model
        if parts is not None and parts.service is not None:
            st = parts.service.stats
            sn.tokens_served += st.tokens_served
            for k, v in st.refused.items():
                sn.refused[k] = sn.refused.get(k, 0) + v
        if parts is not None and parts.payments is not None:
            pay = parts.payments
            sn.earned_wei += pay.earned_wei
            for ch, v in pay.charged.items():
                sn.charged[ch] = sn.charged.get(ch, 0) + v
            for ch, v in pay.covered.items():
                sn.covered[ch] = sn.covered.get(ch, 0) + v

    def start_node(self, sn: SimNode) -> None:
        assert self.nursery is not None and self.net is not None
        self.net.restart(sn.ip)
        self.nursery.start_soon(self._node_task, sn)

    async def stop_node(self, sn: SimNode, crash: bool = False) -> None:
        assert self.net is not None
        if not sn.up or sn.scope is None:
            return
        if crash:
            self.net.crash(sn.ip)
            if sn.node is not None:
                sn.node.p2p.advert = None  # a dead process says no goodbye (open_node skips the withdraw)
        sn.scope.cancel()
        await sn.stopped.wait()
        self.net.stop(sn.ip)

    async def _ticker(self) -> None:
        while True:
            if self.progress is not None:
                self.progress(trio.current_time())
            await trio.sleep(1.0)

    # -- main ----------------------------------------------------------------------------------------

    async def main(self) -> dict:
        from .ledger import SimChain, sim_patches

        sc = self.sc
        self._prepare_model()
        with simulation(self.clock, self.seed) as rng, contextlib.ExitStack() as stack:
            self.rng = rng
            net = self.net = SimNetwork(
                seed=self.seed,
                default_link=LinkSpec(
                    latency=sc.network.latency_ms / 1000,
                    jitter=sc.network.jitter_ms / 1000,
                    bandwidth=sc.network.bandwidth_mbps * 125_000 if sc.network.bandwidth_mbps else None,
                    loss=sc.network.loss,
                    stall=sc.network.stall_ms / 1000,
                    drop=sc.network.drop,
                ),
                quantum=sc.network.quantum_ms / 1000,
            )
            self._plan_nodes()
            if sc.payments.enabled:
                self.payments = SimChain(self.workdir / "pay", sc.payments)
                self.payments.fund([s for s in self.nodes if s.role in ("gateway", "provider")])
            stack.enter_context(sim_patches(self.payments))
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._ticker)
                first = list(self.nodes)
                spread = sc.nodes.start_spread_s / max(1, len(first))
                for sn in first:
                    self.start_node(sn)
                    await trio.sleep(spread)
                for task in (self._churn, self._partitions, self._workload, self._lookups):
                    nursery.start_soon(task)
                await trio.sleep_until(self.end_s)
                # Stop every node the graceful way, so providers settle their channels on the chain.
                async with trio.open_nursery() as stoppers:
                    for sn in self.nodes:
                        stoppers.start_soon(self.stop_node, sn)
                nursery.cancel_scope.cancel()
            self._finish(net)
        reach, lat = propagation_curves(self.c, self.end_s)
        self.curves = {"reach_99": reach, "latencies": lat}
        return summarise(self.c, end_s=self.end_s, scenario=self._scenario_digest())

    def _finish(self, net: SimNetwork) -> None:
        c = self.c
        served = {s.index: s.tokens_served for s in self.nodes if s.role == "provider"}
        c.extra["tokens_served"] = {
            "total": sum(served.values()),
            "by_honest_providers": sum(v for i, v in served.items() if self.nodes[i].honest),
            "by_liars": sum(v for i, v in served.items() if not self.nodes[i].honest),
        }
        refused: dict[str, int] = {}
        for s in self.nodes:
            for k, v in s.refused.items():
                refused[k] = refused.get(k, 0) + v
        c.extra["serving_refusals"] = dict(sorted(refused.items()))
        c.extra["network"] = {
            "nodes_total": len(self.nodes),
            "honest_nodes": sum(1 for s in self.nodes if s.honest),
            "bytes_sent": net.bytes_sent,
            "events": dict(sorted(net.counts.items())),
            # A hash of every send, connect, reset and fault (time, kind, addresses, size): equal metrics
            # then mean the same run, event for event.
            "trace_digest": net.trace_digest(),
        }
        if self.payments is not None:
            c.payments = self.payments.audit(self)
        from .adversary import outcomes

        outcomes(self)

    def _scenario_digest(self) -> dict:
        return {
            "name": self.sc.name,
            "seed": self.seed,
            "duration_s": self.sc.duration_s,
            "nodes": len(self.nodes),
        }


@dataclass
class RunResult:
    metrics: dict
    wall_s: float
    virtual_s: float
    scenario: Scenario
    seed: int
    extra: dict = field(default_factory=dict)
    #: CPU seconds the run took (this process): unlike wall time, not inflated by other work on the machine.
    cpu_s: float = 0.0

    @property
    def ratio(self) -> float:
        return self.virtual_s / self.wall_s if self.wall_s > 0 else math.inf


def run_scenario(
    scenario: Scenario,
    seed: int | None = None,
    *,
    workdir: Path | None = None,
    progress: Callable[[float], None] | None = None,
    quiet: bool = True,
) -> RunResult:
    """Run ``scenario`` to its end (blocking). ``seed`` defaults to the scenario's. ``quiet`` silences
    libp2p's own stdlib loggers (thousands of per-stream warnings at scale) for the run."""
    seed = scenario.seed if seed is None else seed
    with _workdir(workdir) as wd, _quiet_libp2p(quiet), _rare_gc(), shared_signature_checks():
        sim = Simulation(scenario, seed, wd, progress)
        t0, c0 = time.monotonic(), time.process_time()
        metrics = trio.run(sim.main, clock=sim.clock)
        wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return RunResult(metrics, wall, scenario.duration_s, scenario, seed, sim.curves, cpu_s=cpu)


#: Allocations between young-generation collections during a run (CPython's default is 700).
GC_YOUNG_THRESHOLD = 200_000


@contextlib.contextmanager
def _rare_gc() -> Iterator[None]:
    """Collect cyclic garbage rarely during a run. Hundreds of nodes keep millions of live objects, and
    with CPython's default thresholds the collector ran about 50 times per virtual second: a fifth of the
    CPU of an 84-node run (28 of 138 s). With these thresholds it takes about 2% (1.5 of 60 s), and the
    peak memory did not change. Collections still happen, in larger batches, at points set by the
    allocations, so a run's metrics stay a function of scenario and seed."""
    saved = gc.get_threshold()
    gc.collect()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _silent(*_args: object, **_kwargs: object) -> None:
    pass


@contextlib.contextmanager
def _quiet_libp2p(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    loggers = [
        logging.getLogger(name)
        for name in sorted(logging.root.manager.loggerDict)
        if name == "libp2p" or name.startswith("libp2p.")
    ]
    saved = [(lg, lg.level) for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
            # libp2p calls `logger.debug` ~600 times per virtual second per node; even a disabled call
            # costs a method call and a level check (1% of a 200-node run's CPU).
            lg.debug = _silent  # type: ignore[method-assign]
        with without_log_calls("libp2p"):
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
            lg.__dict__.pop("debug", None)


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="steppe-sim-") as tmp:
        yield Path(tmp)


__all__ = ["DELIVERY_WINDOW_S", "RunResult", "SimNode", "Simulation", "run_scenario"]
