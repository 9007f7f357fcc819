"""Drivers for p2p tests: named in-process nodes on 127.0.0.1 with free ports."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from node.app import Node, open_node, p2p_settings_of
from node.config import Config
from protocol.advert import AdvertBody, ModelRef
from protocol.identity import Identity

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MODEL = ModelRef(name="tiny-llama", sha256=bytes(range(32)), num_layers=16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_body(start: int, end: int) -> AdvertBody:
    return AdvertBody(addrs=(), model=MODEL, layer_start=start, layer_end=end)


@asynccontextmanager
async def open_test_node(
    n: int, *, bootstrap: tuple[str, ...] = (), api: str | None = None, **settings
) -> AsyncIterator[Node]:
    config = Config()
    parts = {k: settings.pop(k) for k in ("advert_body", "clock", "transport") if k in settings}
    settings.setdefault("listen", (LOOPBACK,))
    p2p = p2p_settings_of(config, bootstrap=bootstrap, **settings)
    async with open_node(config, Identity.from_int(n), p2p=p2p, api=api, **parts) as node:
        yield node


@asynccontextmanager
async def open_swarm(
    count: int, *, first: int = 1, bodies: dict[int, AdvertBody] | None = None, **settings
) -> AsyncIterator[list[Node]]:
    """``count`` nodes; every one after the first bootstraps from the first."""
    bodies = bodies or {}
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_test_node(first, advert_body=bodies.get(0), **settings))
        ]
        boot = (nodes[0].p2p.addrs()[0],)
        for i in range(1, count):
            nodes.append(
                await stack.enter_async_context(
                    open_test_node(first + i, bootstrap=boot, advert_body=bodies.get(i), **settings)
                )
            )
        yield nodes


def view_ids(node: Node) -> set[str]:
    return {a.peer_id for a in node.p2p.view.adverts(node.p2p.clock.now_ms())}


async def wait_for(predicate, timeout: float, interval: float = 0.1) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)
