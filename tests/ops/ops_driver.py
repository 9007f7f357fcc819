"""Drivers for the operator tests: in-process nodes on 127.0.0.1 whose API serves the status page and
``/metrics`` the way the wiring function is meant to (``with_mounts`` around the node's `Api`, and
`status_extra` merged into ``/status``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.api import serve_api
from node.app import Node, open_node, p2p_settings_of
from node.config import Config
from node.metrics import NodeMetrics
from node.model_services import ModelSettings
from node.status_page import RecentErrors, metrics_page_apps, status_extra, with_mounts
from protocol.advert import AdvertBody
from protocol.identity import Identity

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


@dataclass
class OpsNode:
    node: Node
    url: str
    metrics: NodeMetrics
    errors: RecentErrors


def model_settings(model_dir: Path, layers: tuple[int, int] | None) -> ModelSettings:
    """A shard of ``layers`` of a checkpoint (None: a gateway only), small enough for CI."""
    return ModelSettings(path=model_dir, layers=layers, devices="CPU", max_sessions=4, max_context=128)


@asynccontextmanager
async def open_ops_node(
    n: int,
    *,
    bootstrap: tuple[str, ...] = (),
    advert_body: AdvertBody | None = None,
    model: ModelSettings | None = None,
    serving: Any = None,
) -> AsyncIterator[OpsNode]:
    """A node with its API on a free loopback port. ``serving``: what the metrics read instead of the
    node's own model services (tests that count without a model)."""
    config = Config()
    p2p = p2p_settings_of(config, listen=(LOOPBACK,), bootstrap=bootstrap)
    errors = RecentErrors()
    async with open_node(config, Identity.from_int(n), p2p=p2p, advert_body=advert_body, model=model) as node:

        async def status(_query: dict[str, str], _body: bytes) -> tuple[int, Any]:
            return 200, {**node.status(), **status_extra(node, errors=errors)}

        node.api.route("GET", "/status", status)
        apps = metrics_page_apps(node, serving=serving)
        assert node.nursery is not None
        binds = await node.nursery.start(serve_api, with_mounts(node.api, apps), "127.0.0.1:0")
        logging.getLogger().addHandler(errors)
        try:
            yield OpsNode(node, binds[0], apps["/metrics"].metrics, errors)
        finally:
            logging.getLogger().removeHandler(errors)


async def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)
