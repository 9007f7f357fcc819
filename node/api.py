"""The node's HTTP API: a small ASGI app served by hypercorn's trio worker inside the node's nursery.

Routes are registered on `Api` by the parts that own them (`GET /status` and `GET /providers` here; the
OpenAI-compatible routes join later through `Api.route`). Keep it on 127.0.0.1: there is no auth.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from node.logging import get_logger
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from node.app import Node

log = get_logger("steppe.api")

#: A route handler gets the query parameters and the request body; returns (status, JSON-able object).
Handler = Callable[[dict[str, str], bytes], Awaitable[tuple[int, Any]]]
_MAX_BODY = 1024 * 1024


def parse_api_addr(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (port 0 picks a free one). Raises `ConfigError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"API address {text!r} must look like 127.0.0.1:8080")
    return host.strip("[]"), int(port)


class Api:
    """A minimal ASGI application with exact-path routes."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.mounts: dict[str, Callable] = {}

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def mount(self, path: str, app: Callable) -> None:
        """Hand requests for ``path`` to the ASGI ``app`` (it reads its own body). A ``path`` ending in
        ``/`` (other than ``/`` itself) takes everything below it; any other path matches exactly."""
        self.mounts[path] = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        for prefix, app in self.mounts.items():
            below = (
                len(prefix) > 1 and prefix.endswith("/") and (path.startswith(prefix) or path == prefix[:-1])
            )
            if below or path == prefix:
                await app(scope, receive, send)
                return
        body = bytearray()
        while True:
            event = await receive()
            body += event.get("body", b"")
            if len(body) > _MAX_BODY:
                await _respond(send, 413, {"error": "request body too large"})
                return
            if not event.get("more_body"):
                break
        handler = self.routes.get((scope["method"], scope["path"]))
        if handler is None:
            known = any(path == scope["path"] for _, path in self.routes)
            await _respond(send, 405 if known else 404, {"error": "no such route"})
            return
        query = _parse_query(scope.get("query_string", b""))
        try:
            status, payload = await handler(query, bytes(body))
        except (ValueError, KeyError) as exc:
            status, payload = 400, {"error": str(exc)}
        await _respond(send, status, payload)


def _parse_query(raw: bytes) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(raw.decode("latin-1")))


async def _respond(send: Callable, status: int, payload: Any) -> None:
    data = json.dumps(payload, indent=None).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def status_routes(api: Api, node: Node) -> None:
    async def status(_query: dict[str, str], _body: bytes) -> tuple[int, Any]:
        return 200, node.status()

    async def providers(query: dict[str, str], _body: bytes) -> tuple[int, Any]:
        model = bytes.fromhex(query["model"])
        if len(model) != 32:
            raise ValueError("model must be a 64-hex-digit sha256")
        block = int(query.get("block", "0"))
        with trio.move_on_after(30):
            adverts = await node.p2p.find_providers(model, block)
            return 200, {"providers": sorted(a.peer_id for a in adverts)}
        return 504, {"error": "provider lookup timed out"}

    api.route("GET", "/status", status)
    api.route("GET", "/providers", providers)


async def serve_api(api: Api, addr: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``api`` on ``addr`` until cancelled. ``task_status.started`` gets the bound ``http://HOST:PORT``."""
    host, port = parse_api_addr(addr)
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    await serve(api, config, task_status=task_status)
