"""How fast the simulated network runs real libp2p: N hosts gossiping, virtual seconds per wall second.

    python -m sim.bench_net [N ...] [--seconds S] [--seed K]

Each run builds N real hosts (Noise, Yamux, GossipSub /meshsub/1.1.0 with a 1 s heartbeat) on 50 ms
± 20 ms links, lets each dial 4 random others, waits for meshes, publishes one message per virtual
second from rotating hosts for S virtual seconds, and reports delivery and the virtual/wall ratio.
The reference is the wall-clock (and CPU) time of the same run: ratio > 1 means faster than real time.
On a shared machine virtual/cpu is the steadier figure.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field

import trio
import trio.testing

from protocol.identity import Identity

from .clock import simulation
from .host import SimHost, connect_random, open_gossipsub, open_sim_host
from .net import LinkSpec, SimNetwork

TOPIC = "/steppe/bench/1"


@dataclass
class GossipResult:
    nodes: int
    seed: int
    published: int = 0
    delivered: int = 0  # (message, receiver) pairs, publisher excluded
    latencies: list[float] = field(default_factory=list)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time: less sensitive than wall time to a shared machine
    trace_digest: str = ""
    bytes_sent: int = 0

    @property
    def delivery(self) -> float:
        expected = self.published * (self.nodes - 1)
        return self.delivered / expected if expected else 0.0

    @property
    def ratio(self) -> float:
        return self.virtual_s / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _gossip(
    clock: trio.testing.MockClock, result: GossipResult, seconds: float, link: LinkSpec, quantum: float
) -> None:
    with simulation(clock, result.seed) as rng:
        net = SimNetwork(seed=result.seed, default_link=link, quantum=quantum)
        async with contextlib.AsyncExitStack() as stack:
            hosts: list[SimHost] = []
            pubsubs = []
            for i in range(result.nodes):
                sim_host = await stack.enter_async_context(open_sim_host(net, Identity.from_int(i)))
                hosts.append(sim_host)
                pubsubs.append(await stack.enter_async_context(open_gossipsub(sim_host.host)))
            await connect_random(hosts, 4, rng)
            subs = [await ps.subscribe(TOPIC) for ps in pubsubs]
            await trio.sleep(5.0)  # a few heartbeats: meshes form
            sent_at: dict[bytes, float] = {}

            async def receive(i: int) -> None:
                me = hosts[i].host.get_id().to_bytes()
                while True:
                    msg = await subs[i].get()
                    if msg.from_id == me:  # a publisher's own subscription sees its message too
                        continue
                    result.delivered += 1
                    result.latencies.append(trio.current_time() - sent_at[msg.data])

            async with trio.open_nursery() as nursery:
                for i in range(result.nodes):
                    nursery.start_soon(receive, i)
                for k in range(int(seconds)):
                    src = k % result.nodes
                    payload = b"%d:%d" % (src, k)
                    sent_at[payload] = trio.current_time()
                    await pubsubs[src].publish(TOPIC, payload)
                    result.published += 1
                    await trio.sleep(1.0)
                await trio.sleep(2.0)  # stragglers
                nursery.cancel_scope.cancel()
            result.virtual_s = trio.current_time()
            result.trace_digest = net.trace_digest()
            result.bytes_sent = net.bytes_sent


def run_gossip(
    nodes: int, *, seed: int = 1, seconds: float = 10.0, link: LinkSpec | None = None, quantum: float = 0.0
) -> GossipResult:
    """Run one gossip simulation in a fresh trio run under ``MockClock(autojump_threshold=0)``.
    Full delivery is ``published * (nodes - 1)``: a publisher's own copy is not counted."""
    result = GossipResult(nodes=nodes, seed=seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    link = link or LinkSpec(latency=0.05, jitter=0.02)
    trio.run(_gossip, clock, result, seconds, link, quantum, clock=clock)
    result.wall_s = time.perf_counter() - start
    result.cpu_s = time.process_time() - cpu_start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nodes", type=int, nargs="*", default=[20, 60])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quantum", type=float, nargs="*", default=[0.0], help="arrival grid(s), seconds")
    args = parser.parse_args()
    print(
        "nodes  quantum  virtual_s  wall_s  virtual/wall  cpu_s  virtual/cpu  delivery  p50_s   p99_s   MB_sent"
    )
    for n in args.nodes:
        for q in args.quantum:
            r = run_gossip(n, seed=args.seed, seconds=args.seconds, quantum=q)
            print(
                f"{n:5d}  {q:7.3f}  {r.virtual_s:9.1f}  {r.wall_s:6.1f}  {r.ratio:12.2f}  {r.cpu_s:5.1f}"
                f"  {r.virtual_s / r.cpu_s:11.2f}  {r.delivery:8.4f}"
                f"  {r.percentile(0.5):.3f}  {r.percentile(0.99):.3f}  {r.bytes_sent / 1e6:7.2f}"
            )


if __name__ == "__main__":
    main()
