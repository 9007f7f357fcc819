"""`GET /metrics`: the node's numbers in the Prometheus text exposition format (version 0.0.4).

No client library: a node exposes a dozen series, and most of them are counters other parts already keep
(`SwarmView.rejected`, `ServingStats`), so they are read at scrape time rather than mirrored. The one
series nobody else keeps is the step latency histogram; the serving loop feeds it through
`NodeMetrics.observe_step` (attached automatically when `ServingStats` has an ``on_step`` hook).

Payment series read 0 on a node without payments; their HELP text says so.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.app import Node

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds per forward step on one shard: sub-millisecond (tiny CPU models) up to a slow prefill.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@cache  # reading package metadata costs ~0.3 ms; it does not change while the process runs
def software_version() -> str:
    try:
        return version("steppe")
    except PackageNotFoundError:
        return "unknown"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


@dataclass
class Family:
    """One metric family: a name, a type (counter, gauge, histogram), help text and its samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append((self.name + suffix, labels, value))
        return self

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines += [f"{name}{_labels(labels)} {_number(value)}" for name, labels, value in self.samples]
        return "\n".join(lines) + "\n"


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families`` (ends with a newline, as the format requires)."""
    return "".join(f.render() for f in families)


class Histogram:
    """Cumulative-bucket histogram. Not thread-safe: observe from the event loop only."""

    def __init__(self, buckets: Iterable[float] = STEP_BUCKETS) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def family(self, name: str, help_text: str) -> Family:
        fam = Family(name, "histogram", help_text)
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            fam.add(running, "_bucket", le="+Inf" if math.isinf(bound) else _number(bound))
        fam.add(self.sum, "_sum")
        fam.add(self.count, "_count")
        return fam


def serving_stats_of(serving: Any) -> Any | None:
    """The `ServingStats` behind ``serving``: a `ModelParts`, an `InferService`, the stats themselves, or None."""
    if serving is None:
        return None
    if hasattr(serving, "tokens_served"):
        return serving
    service = getattr(serving, "service", serving)
    return getattr(service, "stats", None)


def payments_of(node: Any) -> Any | None:
    """A node's `Payments`: ``node.payments`` or ``node.model.payments``; None when payments are off."""
    found = getattr(node, "payments", None)
    return found if found is not None else getattr(getattr(node, "model", None), "payments", None)


def payment_figures(payments: Any) -> dict[str, Any] | None:
    """Counters of a `node.payments.Payments` (or a callable returning the same keys); None when absent.

    Keys: ``earned_wei`` (newly covered by accepted vouchers), ``charged_wei`` (billed for steps served),
    ``channels_open`` (incoming channels still open), ``refused`` (a reason → count mapping),
    ``transactions`` (chain transactions this node sent as a payer).
    """
    if payments is None:
        return None
    if callable(payments):
        return dict(payments())
    store = getattr(payments, "store", None)
    sender = getattr(payments, "sender", None)
    return {
        "earned_wei": int(getattr(payments, "earned_wei", 0)),
        "charged_wei": sum(getattr(payments, "charged", {}).values()),
        # A small sqlite read; the status route does the same on the event loop.
        "channels_open": len(store.open_channels()) if store is not None else 0,
        "refused": dict(getattr(payments, "refused", {}) or {}),
        "transactions": int(getattr(sender, "transactions", 0)),
    }


class NodeMetrics:
    """Collects a node's series at scrape time.

    ``serving`` (see `serving_stats_of`) and ``payments`` (see `payment_figures`) default to the node's
    own ``node.model`` and its ``payments`` (see `payments_of`), looked up at each scrape, so parts
    started after the metrics are seen. Either may be absent (a DHT-only node; payments off).
    """

    def __init__(
        self,
        node: Node,
        *,
        serving: Any = None,
        payments: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self._serving = serving
        self._payments = payments
        self.clock = clock
        self.started = clock()
        self.step_seconds = Histogram()
        self._hooked: Any = None

    @property
    def serving(self) -> Any:
        return self._serving if self._serving is not None else getattr(self.node, "model", None)

    @property
    def payments(self) -> Any:
        return self._payments if self._payments is not None else payments_of(self.node)

    def _hook(self, stats: Any) -> None:
        # The serving loop calls ``stats.on_step(seconds)`` per step once `ServingStats` has that field.
        if stats is not None and stats is not self._hooked and hasattr(stats, "on_step"):
            if getattr(stats, "on_step", None) is None:
                stats.on_step = self.observe_step
            self._hooked = stats

    def observe_step(self, seconds: float) -> None:
        self.step_seconds.observe(seconds)

    def families(self) -> list[Family]:
        p2p = self.node.p2p
        now_ms = p2p.clock.now_ms()
        view = p2p.view
        out = [
            Family(
                "steppe_info", "gauge", "Constant 1, labelled with this node's identity and software."
            ).add(1, peer_id=self.node.peer_id, version=software_version()),
            Family(
                "steppe_uptime_seconds", "gauge", "Seconds since the metrics were attached to this node."
            ).add(round(self.clock() - self.started, 3)),
            Family("steppe_peers_connected", "gauge", "libp2p peers currently connected.").add(
                len(p2p.host.get_connected_peers())
            ),
            Family(
                "steppe_adverts_in_view", "gauge", "Valid, unexpired capability adverts in this node's view."
            ).add(len(view.adverts(now_ms))),
            Family(
                "steppe_adverts_accepted_total", "counter", "Capability adverts accepted into the view."
            ).add(getattr(view, "accepted", 0)),
        ]
        rejected = Family(
            "steppe_adverts_rejected_total",
            "counter",
            "Capability adverts refused, by reason (malformed, invalid, stale, self, full).",
        )
        for reason, n in sorted(view.rejected.items()):
            rejected.add(n, reason=reason)
        out.append(rejected)
        out += self._serving_families()
        out += self._payment_families()
        return out

    def _serving_families(self) -> list[Family]:
        stats = serving_stats_of(self.serving)
        self._hook(stats)
        get = (lambda name: getattr(stats, name)) if stats is not None else (lambda _name: 0)
        refused = Family(
            "steppe_sessions_refused_total", "counter", "Inference sessions or steps refused, by reason."
        )
        for reason, n in sorted((getattr(stats, "refused", None) or {}).items()):
            refused.add(n, reason=reason)
        return [
            Family(
                "steppe_sessions_opened_total", "counter", "Inference sessions opened on this node's shard."
            ).add(get("sessions_opened")),
            Family("steppe_sessions_active", "gauge", "Inference sessions open now.").add(
                get("sessions_active")
            ),
            refused,
            Family("steppe_steps_total", "counter", "Forward steps (prefill or decode) computed.").add(
                get("steps")
            ),
            Family(
                "steppe_tokens_served_total", "counter", "Token positions pushed through this node's layers."
            ).add(get("tokens_served")),
            Family("steppe_compute_seconds_total", "counter", "Seconds spent computing forward steps.").add(
                round(float(get("compute_s")), 6)
            ),
            self.step_seconds.family(
                "steppe_step_seconds",
                "Compute time of one forward step on this node's shard (fed by the serving loop's step hook).",
            ),
        ]

    def _payment_families(self) -> list[Family]:
        figures = payment_figures(self.payments)
        note = "" if figures is not None else " Reads 0: payments are off on this node."
        figures = figures or {}
        refused = Family(
            "steppe_payments_refused_total", "counter", "Steps refused for payment, by reason." + note
        )
        for reason, n in sorted((figures.get("refused") or {}).items()):
            refused.add(n, reason=reason)
        return [
            Family(
                "steppe_voucher_wei_total",
                "counter",
                "Wei newly covered by vouchers this node accepted." + note,
            ).add(figures.get("earned_wei", 0)),
            Family(
                "steppe_charged_wei_total", "counter", "Wei this node billed for the steps it served." + note
            ).add(figures.get("charged_wei", 0)),
            Family(
                "steppe_channels_open", "gauge", "Payment channels paying this node, open now." + note
            ).add(figures.get("channels_open", 0)),
            refused,
            Family(
                "steppe_payment_transactions_total",
                "counter",
                "Chain transactions sent as a payer (opens, top-ups)." + note,
            ).add(figures.get("transactions", 0)),
        ]

    def render(self) -> str:
        return render(self.families())


def asgi_text(produce: Callable[[], tuple[str, bytes]]) -> Callable:
    """An ASGI app answering every GET/HEAD with ``produce() -> (content_type, body)``; 405 otherwise."""

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain; charset=utf-8", b"method not allowed\n"
        else:
            status, (ctype, body) = 200, produce()
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


def metrics_asgi(node: Node, *, serving: Any = None, payments: Any = None) -> Callable:
    """An ASGI app serving ``node``'s metrics (mount it at ``/metrics``). ``.metrics`` is its `NodeMetrics`."""
    metrics = NodeMetrics(node, serving=serving, payments=payments)
    app = asgi_text(lambda: (CONTENT_TYPE, metrics.render().encode()))
    app.metrics = metrics  # type: ignore[attr-defined]
    return app


def register_metrics(api: Any, node: Node, *, serving: Any = None, payments: Any = None) -> NodeMetrics:
    """Mount ``GET /metrics`` on ``api`` (needs ``api.mount(path, asgi_app)``). Raises `TypeError` without it."""
    mount = getattr(api, "mount", None)
    if mount is None:
        raise TypeError(
            "this Api cannot serve non-JSON routes; mount metrics_asgi(node) with node.status_page.with_mounts"
        )
    app = metrics_asgi(node, serving=serving, payments=payments)
    mount("/metrics", app)
    return app.metrics
