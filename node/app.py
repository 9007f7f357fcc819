"""The one wiring function: build a running node from a `Config`, an identity and optional parts.

The CLI (`steppe run`), the devnet and the simulator all call `open_node` (or `run_node`). Parts a caller
may swap: the libp2p transport (the simulator's), the clock (`TrioClock` under `trio.testing.MockClock`),
p2p settings (tests shorten TTLs or switch gossip off) and the advert body. Later parts (inference serving,
payments) are added here as further optional arguments and services in the same nursery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import trio
from libp2p.abc import ITransport

from node.api import Api, serve_api, status_routes
from node.config import Config
from node.logging import get_logger
from node.metrics import metrics_asgi
from node.model_services import ModelParts, ModelSettings, start_model_services
from node.p2p.clock import Clock
from node.p2p.node import P2PNode, P2PSettings
from node.status_page import install_recent_errors, status_extra, status_page_asgi
from protocol.advert import AdvertBody
from protocol.identity import Identity

log = get_logger("steppe.app")


def p2p_settings_of(config: Config, **overrides) -> P2PSettings:
    """P2P settings from the config's ``[node]`` section; ``overrides`` replace single fields."""
    base = P2PSettings(listen=config.node.listen, bootstrap=config.node.bootstrap, mdns=config.node.mdns)
    return dataclasses.replace(base, **overrides)


@dataclass
class Node:
    """Handle on a running node. ``api_url`` is None when no API is served."""

    config: Config
    identity: Identity
    p2p: P2PNode
    api: Api
    api_url: str | None = None
    model: ModelParts | None = None
    nursery: trio.Nursery | None = field(default=None, repr=False)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    async def drain(self, grace_s: float) -> int:
        """The first half of a graceful stop: refuse new sessions, advertise no free slots, and wait up to
        ``grace_s`` for open sessions to finish. Returns how many were still open (closed on exit)."""
        service = self.model.service if self.model is not None else None
        if service is None:
            return 0
        service.accepting = False
        self.model.draining = True
        self.p2p.set_advert_body(msgspec.structs.replace(self.p2p.advert_body, free_sessions=0))
        with trio.move_on_after(grace_s):
            while service.stats.sessions_active:
                await trio.sleep(0.1)
        return service.stats.sessions_active

    def status(self) -> dict:
        out = self.p2p.status()
        if self.model is not None:
            out["model"] = self.model.status()
        out.update(status_extra(self, errors=install_recent_errors()))
        return out


@asynccontextmanager
async def open_node(
    config: Config,
    identity: Identity,
    *,
    transport: ITransport | None = None,
    clock: Clock | None = None,
    p2p: P2PSettings | None = None,
    advert_body: AdvertBody | None = None,
    api: str | None = None,
    model: ModelSettings | None = None,
) -> AsyncIterator[Node]:
    """Start a node; it runs for the duration of the block and shuts down cleanly after it.

    ``api``: ``HOST:PORT`` to serve the HTTP API on (``None``: no API; use ``config.node.api`` explicitly
    to serve where the config says). Raises `ConfigError` for bad addresses. On cancellation every service
    stops, the advert is withdrawn, and every socket and thread the node opened is closed.
    """
    p2p_node = P2PNode(
        identity, p2p or p2p_settings_of(config), clock=clock, transport=transport, advert_body=advert_body
    )
    handle = Node(config=config, identity=identity, p2p=p2p_node, api=Api())
    status_routes(handle.api, handle)
    async with trio.open_nursery() as nursery:
        handle.nursery = nursery
        await nursery.start(p2p_node.run)
        if model is not None:
            handle.model = await start_model_services(handle, model, nursery)
            if handle.model.openai is not None:
                handle.api.mount("/v1/", handle.model.openai)
        handle.api.mount("/", status_page_asgi())
        handle.api.mount("/metrics", metrics_asgi(handle))
        if api is not None:
            binds = await nursery.start(serve_api, handle.api, api)
            handle.api_url = binds[0] if binds else None
            log.info("api_serving", url=handle.api_url)
        try:
            yield handle
        finally:
            # Withdraw the advert while gossip still runs, then stop everything.
            with trio.move_on_after(2, shield=True):
                await p2p_node.withdraw()
            nursery.cancel_scope.cancel()


async def run_node(
    config: Config,
    identity: Identity,
    *,
    task_status=trio.TASK_STATUS_IGNORED,
    **parts,
) -> None:
    """`open_node` as a trio service: runs until cancelled. ``task_status.started`` gets the `Node`."""
    async with open_node(config, identity, **parts) as handle:
        task_status.started(handle)
        await trio.sleep_forever()
