"""The drivers of a run: churn, partitions, the generation workload and DHT lookups.

`Drivers` is mixed into `sim.runner.Simulation`; each driver is a task in the run's nursery that acts at
virtual times drawn from the run's seeded RNG and records what happened in the run's `Collector`.
"""

from __future__ import annotations

import re
from contextlib import aclosing, suppress
from typing import TYPE_CHECKING

import trio

from node.client import GenerationStats
from node.inference.sampling import Sampler, SamplingParams
from node.p2p.discovery import blocks_of
from protocol.errors import SteppeError
from protocol.route import NoRoute

from .backend import reference_generation
from .collect import Generation

if TYPE_CHECKING:
    from .runner import SimNode

#: A provider lookup that has found no live provider by then counts as failed ("timeout").
LOOKUP_DEADLINE_S = 10.0


class Drivers:
    """What `Simulation` does to its nodes over time (see `sim.runner`)."""

    async def _churn(self) -> None:
        sc = self.sc
        rate = sc.churn.per_minute / 60.0
        joins = sc.churn.join_per_minute * len(self.nodes) / 60.0
        due_events = due_joins = 0.0
        await trio.sleep_until(sc.warmup_s)  # virtual time starts at 0 with the first node
        while True:
            await trio.sleep(1.0)
            up = [s for s in self.nodes if s.churnable and s.up]
            due_events += rate * sum(1 for s in self.nodes if s.churnable)
            due_joins += joins
            while due_events >= 1 and up:
                due_events -= 1
                sn = up.pop(self.rng.randrange(len(up)))
                crash = self.rng.random() < sc.churn.crash_fraction
                self.c.churn_events.append((trio.current_time(), "crash" if crash else "leave", sn.index))
                self.nursery.start_soon(self._bounce, sn, crash)
            while due_joins >= 1:
                due_joins -= 1
                sn = self._add_node("relay", None)
                sn.churnable = True
                self.c.churn_events.append((trio.current_time(), "join", sn.index))
                self.start_node(sn)

    async def _bounce(self, sn: SimNode, crash: bool) -> None:
        await self.stop_node(sn, crash=crash)
        if self.sc.churn.restart_after_s > 0:
            await trio.sleep(self.sc.churn.restart_after_s)
            self.c.churn_events.append((trio.current_time(), "restart", sn.index))
            self.start_node(sn)

    async def _partitions(self) -> None:
        assert self.net is not None
        for p in sorted(self.sc.partitions, key=lambda p: p.at_s):
            await trio.sleep_until(p.at_s)
            honest = [s.ip for s in self.nodes if s.honest]
            k = int(len(honest) * p.fraction)
            side_a = set(self.rng.sample(honest, k))
            side_b = [s.ip for s in self.nodes if s.ip not in side_a]
            part = self.net.partition(side_a, side_b, mode=p.mode)  # type: ignore[arg-type]
            self.c.churn_events.append((trio.current_time(), "partition", k))
            self.nursery.start_soon(self._heal_later, part, p.duration_s)

    async def _heal_later(self, part, after: float) -> None:
        await trio.sleep(after)
        self.net.heal(part)
        self.c.churn_events.append((trio.current_time(), "heal", 0))

    async def _workload(self) -> None:
        w = self.sc.workload
        if w.generations_per_s <= 0:
            return
        await trio.sleep_until(self.sc.warmup_s)
        interval = 1.0 / w.generations_per_s
        gateways = [s for s in self.nodes if s.role == "gateway"]
        while trio.current_time() + w.timeout_s <= self.end_s:
            sn = gateways[self.rng.randrange(len(gateways))]
            prompt = [self.rng.randrange(3, self.sc.model.vocab) for _ in range(w.prompt_tokens)]
            if sn.up:
                self.nursery.start_soon(self._generate, sn, prompt)
            await trio.sleep(interval)

    async def _generate(self, sn: SimNode, prompt: list[int]) -> None:
        w = self.sc.workload
        node = sn.node
        assert node is not None and node.model is not None and node.model.gateway is not None
        assert self.model_cfg is not None
        client = node.model.gateway.client
        stats = GenerationStats()
        sampler = Sampler(
            # No stop tokens: every generation runs max_new_tokens steps (a random model may emit EOS early).
            SamplingParams(temperature=0.0, stop_tokens=frozenset())
        )
        tokens: list[int] = []
        t0 = trio.current_time()
        reason = detail = ""
        with trio.move_on_after(w.timeout_s) as scope:
            try:
                async with aclosing(client.generate(prompt, w.max_new_tokens, sampler, stats)) as gen:
                    async for tok in gen:
                        tokens.append(tok)
            except NoRoute as exc:
                reason, detail = "no_route", _detail(exc)
            except SteppeError as exc:
                reason, detail = type(exc).__name__, _detail(exc)
        if scope.cancelled_caught:
            reason = "timeout"
        ok = not reason and len(tokens) == w.max_new_tokens
        if not reason and not ok:
            reason = "short"
        if self.reference is not None:
            want = self.reference.generate(prompt, w.max_new_tokens)
        else:
            want = reference_generation(self.model_cfg, self.spans, prompt, w.max_new_tokens)
        role = "free_rider" if sn.free_rider else "honest"
        if self.sc.adversaries.eclipse_attackers and sn is self.eclipse_target():
            role = "eclipse_target"
        self.c.generations.append(
            Generation(
                t0,
                trio.current_time(),
                sn.index,
                role,
                ok,
                reason,
                len(tokens),
                tokens == want,
                stats.failovers,
                len(stats.liars),
                stats.spot_checks,
                sum(h.paid_wei for h in stats.hops),
                detail,
                sum(1 for p in stats.liars if (s := self.by_peer.get(p)) is not None and s.honest),
            )
        )

    async def _lookups(self) -> None:
        rate = self.sc.dht.lookups_per_s
        if rate <= 0 or self.model_ref is None:
            return
        await trio.sleep_until(self.sc.warmup_s)
        blocks = list(blocks_of(0, self.sc.model.layers))
        while True:
            await trio.sleep(1.0 / rate)
            if trio.current_time() + LOOKUP_DEADLINE_S > self.end_s:
                return  # a lookup that could not use its whole deadline before the nodes stop is not made
            askers = [s for s in self.nodes if s.honest and s.up and s.node is not None]
            if askers:
                sn = askers[self.rng.randrange(len(askers))]
                self.nursery.start_soon(self._lookup, sn, blocks[self.rng.randrange(len(blocks))])

    async def _lookup(self, sn: SimNode, block: int) -> None:
        node = sn.node
        assert self.model_ref is not None
        if node is None or not sn.up:
            return  # crashed or left between being picked and this task starting
        store = node.p2p.discovery.dht.provider_store
        queried = 0
        ask = store._get_providers_from_peer_with_closers

        async def counted(peer_id, key):
            nonlocal queried
            queried += 1
            return await ask(peer_id, key)

        store._get_providers_from_peer_with_closers = counted
        t = trio.current_time()
        found = []
        try:
            with trio.move_on_after(LOOKUP_DEADLINE_S) as deadline:
                found = await node.p2p.discovery.find_providers(self.model_ref.sha256, block)
        finally:
            with suppress(AttributeError):
                del store._get_providers_from_peer_with_closers
        if not sn.up or sn.node is not node:
            self.c.lookups_asker_gone += 1  # the asker crashed, left or restarted while it waited
            return
        live = [p for p in found if (s := self.by_peer.get(str(p.peer_id))) is not None and s.up]
        if live:
            outcome = "ok"
        elif deadline.cancelled_caught:
            outcome = "timeout"
        else:
            outcome = "gone" if found else "none"
        self.c.lookups.append((t, outcome, queried, trio.current_time() - t))


def _detail(exc: BaseException) -> str:
    """An error's message for the metrics, without object addresses (they differ from run to run)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(exc))[:300]
