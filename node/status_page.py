"""The status page at ``/``: one self-contained HTML file that polls ``/status`` every 2 s and draws it.

Three pieces the wiring function uses:

* `status_extra(node, ...)`: what the page shows beyond `Node.status()` (identity, version, recent errors,
  payments when given); merge it into the ``/status`` JSON. The page reads the model and serving
  counters from ``status["model"]`` (`ModelParts.status()`) and payments from ``status["payments"]``
  (`Payments.status()`), and shows "—" for whatever is absent.
* `status_page_asgi()`: an ASGI app serving the page. The page has no external fetches: CSS, JS and the
  chart (a canvas) are inline, pinned by hashes in its Content-Security-Policy.
* `with_mounts(app, {path: asgi_app})`: an ASGI router sending exact paths to raw ASGI apps (the page,
  ``/metrics``) and everything else to ``app`` (the JSON `Api`), for as long as `Api` has no ``mount``.

`RecentErrors` keeps the last warnings and errors logged in this process for the page.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.metrics import payments_of, software_version

if TYPE_CHECKING:
    from node.app import Node

PAGE = Path(__file__).parent / "static" / "status.html"
#: Log fields worth showing next to an error's event name; everything else (and anything long) is dropped.
_DETAIL_KEYS = ("error", "peer_id", "peer", "channel", "layers", "code", "reason", "signal")


@cache
def page() -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy (hashes of its one inline script and style)."""
    html = PAGE.read_text("utf-8")

    def digest(tag: str) -> str:
        match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        assert match is not None, f"status page lost its <{tag}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode() + "'"

    csp = (
        f"default-src 'none'; connect-src 'self'; img-src 'self' data:; script-src {digest('script')}; "
        f"style-src {digest('style')}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp


def status_page_asgi() -> Callable:
    """ASGI app answering GET/HEAD with the status page (mount it at ``/``)."""
    body, csp = page()

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        ok = method in ("GET", "HEAD")
        data = body if ok else b"method not allowed\n"
        headers = [
            (b"content-type", b"text/html; charset=utf-8" if ok else b"text/plain; charset=utf-8"),
            (b"content-length", str(len(data)).encode()),
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200 if ok else 405, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    return app


def with_mounts(app: Callable, mounts: Mapping[str, Callable]) -> Callable:
    """An ASGI app: an HTTP request whose path equals a key of ``mounts`` goes to that app; a key ending in
    ``/`` (other than ``/`` itself, e.g. ``"/v1/"``) also takes every path under it. The rest, and lifespan
    events, go to ``app``."""
    exact = dict(mounts)
    prefixes = [(p, a) for p, a in mounts.items() if p.endswith("/") and p != "/"]

    async def router(scope: dict, receive: Callable, send: Callable) -> None:
        target = None
        if scope["type"] == "http":
            path = scope.get("path", "")
            target = exact.get(path) or next((a for p, a in prefixes if path.startswith(p)), None)
        await (target or app)(scope, receive, send)

    return router


class RecentErrors(logging.Handler):
    """A logging handler keeping the last ``capacity`` WARNING-or-worse records, summarised for the page.

    Only the event name, the logger and a few short, known fields are kept (see ``_DETAIL_KEYS``): log
    lines may carry prompts or addresses the operator would not publish on a page.
    """

    def __init__(self, capacity: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.entries: collections.deque[dict[str, str]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if isinstance(msg, dict):  # a structlog event dict (wrapped for the stdlib formatter)
            event = str(msg.get("event", ""))
            detail = " ".join(f"{k}={str(msg[k])[:120]}" for k in _DETAIL_KEYS if k in msg)
        else:
            event, detail = (record.getMessage() if record.args else str(msg))[:200], ""
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC).strftime("%H:%M:%S")
        self.entries.append(
            {
                "time": when,
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": event,
                "detail": detail,
            }
        )

    def snapshot(self) -> list[dict[str, str]]:
        return list(self.entries)


def install_recent_errors(capacity: int = 50, logger: logging.Logger | None = None) -> RecentErrors:
    """Attach a `RecentErrors` to ``logger`` (default: the root logger) and return it.

    Call it after `configure_logging`, which replaces the root logger's handlers.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if isinstance(handler, RecentErrors):
            return handler
    handler = RecentErrors(capacity)
    target.addHandler(handler)
    return handler


def status_extra(node: Node, *, errors: RecentErrors | None = None, payments: Any = None) -> dict[str, Any]:
    """What the status page shows beyond `Node.status()`: identity, software version, the time, recent
    errors and, when the node has payments (``payments``, else `node.metrics.payments_of`), their
    ``status()``. Reads the voucher store (a small sqlite query) through ``Payments.status()``."""
    payments = payments if payments is not None else payments_of(node)
    ident = node.identity
    out: dict[str, Any] = {
        "identity": {
            "peer_id": ident.peer_id,
            "evm_address": ident.evm_address,
            "x25519_public_key": ident.x25519_public.hex(),
        },
        "version": software_version(),
        "time_ms": int(time.time() * 1000),
        "recent_errors": errors.snapshot() if errors is not None else [],
    }
    if payments is not None:
        out["payments"] = payments.status()
    return out


def metrics_page_apps(node: Node, *, serving: Any = None, payments: Any = None) -> dict[str, Callable]:
    """``{"/": status page, "/metrics": Prometheus text}`` for `with_mounts`."""
    from node.metrics import metrics_asgi

    return {"/": status_page_asgi(), "/metrics": metrics_asgi(node, serving=serving, payments=payments)}


__all__ = [
    "RecentErrors",
    "install_recent_errors",
    "metrics_page_apps",
    "page",
    "status_extra",
    "status_page_asgi",
    "with_mounts",
]
