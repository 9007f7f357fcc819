"""The model-facing services of a node: serving a shard over `/steppe/infer/1`, and the gateway.

`start_model_services` is called by the wiring function (`node.app.open_node`) when the configuration
names a model. A node with a layer range loads that shard, measures its throughput, advertises it and
serves it; a node with a model folder (layers or not) is also a gateway for that model: its API answers
OpenAI-style requests by routing generations over the peers in its view.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import trio

from node.client import Client, ClientSettings
from node.config import Config
from node.gateway import Gateway
from node.logging import get_logger
from node.openai_api import OpenAIApp
from node.payments import Payments, PaymentSettings, start_payments
from node.serving import InferService
from protocol.advert import AdvertBody, ModelRef

if TYPE_CHECKING:
    from node.app import Node
    from node.inference.worker import AsyncShard

log = get_logger("steppe.model")


@dataclass(frozen=True)
class ModelSettings:
    path: Path
    layers: tuple[int, int] | None = None  # None: a gateway only
    devices: str | None = None
    dtype: str = "float32"
    max_sessions: int = 8
    max_context: int = 2048
    price_wei_per_token_layer: int = 0
    client: ClientSettings = field(default_factory=ClientSettings)
    #: Tests and the simulator only: return perturbed activations like a dishonest provider.
    lie: bool = False
    #: None: serve for free and pay nobody (only free providers are used).
    payments: PaymentSettings | None = None
    credit_steps: int = 1
    #: Replaces tinygrad: ``await load_shard(settings)`` returns an object with `AsyncShard`'s interface
    #: (the simulator's declared cost-model backend). None: load the checkpoint with tinygrad.
    load_shard: Callable[[ModelSettings], Awaitable[Any]] | None = None
    #: The model reference to advertise; None: sha256 over the checkpoint's weight files.
    model_ref: ModelRef | None = None


def model_settings_of(config: Config, **overrides) -> ModelSettings | None:
    """From the ``[model]`` and ``[pricing]`` sections; None when no model is configured."""
    from node.inference.config import ModelConfig, parse_layers

    if not config.model.path:
        return None
    path = Path(config.model.path)
    num_layers = ModelConfig.load(path).num_layers
    layers = parse_layers(config.model.layers, num_layers) if config.model.layers else None
    settings = ModelSettings(
        credit_steps=config.pricing.credit_steps,
        path=path,
        layers=layers,
        devices=None if config.model.device == "auto" else config.model.device,
        dtype=config.model.dtype,
        max_sessions=config.model.max_sessions,
        max_context=config.model.max_context,
        price_wei_per_token_layer=config.pricing.price_wei_per_token_layer,
    )
    return ModelSettings(**{**settings.__dict__, **overrides})


@dataclass
class ModelParts:
    model: ModelRef
    shard: AsyncShard | None = None
    service: InferService | None = None
    gateway: Gateway | None = None
    openai: OpenAIApp | None = None
    tokens_per_s: float = 0.0
    latencies_ms: dict[str, float] = field(default_factory=dict)
    payments: Payments | None = None
    #: Set when the node stops: it takes no new sessions and advertises no free slots.
    draining: bool = False

    def status(self) -> dict:
        out: dict = {
            "name": self.model.name,
            "sha256": self.model.sha256.hex(),
            "num_layers": self.model.num_layers,
            "latencies_ms": {p: round(v, 2) for p, v in sorted(self.latencies_ms.items())},
        }
        if self.service is not None and self.shard is not None:
            st = self.service.stats
            engine = self.shard.shard
            out["serving"] = {
                "layers": [engine.start, engine.end],
                "tokens_per_s": round(self.tokens_per_s, 2),
                "sessions_opened": st.sessions_opened,
                "sessions_active": st.sessions_active,
                "steps": st.steps,
                "tokens_served": st.tokens_served,
                "compute_s": round(st.compute_s, 3),
                "refused": dict(st.refused),
                "free_sessions": engine.max_sessions - len(engine.sessions),
                "free_cache_tokens": engine.free_cache_tokens,
            }
        if self.openai is not None:
            out["gateway"] = {
                "requests": self.openai.requests,
                "tokens_generated": self.openai.tokens_generated,
            }
        if self.payments is not None:
            out["payments"] = self.payments.status()
        return out


async def measure_tokens_per_s(shard: AsyncShard, steps: int = 8) -> float:
    """Decode throughput of this shard (tokens/s through its layers), measured on a scratch session."""
    cfg = shard.shard.config
    sid = await shard.open_session(steps + 1)
    try:
        rows = np.zeros(1, np.int32) if shard.shard.embed else np.zeros((1, cfg.hidden_size), np.float32)
        await shard.forward(sid, rows, 0)
        t0 = trio.current_time()
        for pos in range(1, steps + 1):
            await shard.forward(sid, rows, pos)
        return steps / (trio.current_time() - t0)
    finally:
        await shard.close_session(sid)


async def start_model_services(node: Node, settings: ModelSettings, nursery: trio.Nursery) -> ModelParts:
    """Load, measure, advertise and serve; mount the gateway API. Raises `ModelLoadError`, `ConfigError`."""
    from node.inference.config import ModelConfig
    from node.inference.shard import parse_devices
    from node.inference.weights import model_reference
    from node.inference.worker import AsyncShard

    cfg = ModelConfig.load(settings.path)
    ref = settings.model_ref
    if ref is None:
        sha = await trio.to_thread.run_sync(model_reference, settings.path)
        ref = ModelRef(name=settings.path.name, sha256=bytes.fromhex(sha), num_layers=cfg.num_layers)
    parts = ModelParts(model=ref)
    if settings.payments is not None:
        parts.payments = await start_payments(node.identity, settings.payments)
        await nursery.start(parts.payments.run)
    if settings.layers is not None:
        start, end = settings.layers
        devices = parse_devices(settings.devices)
        log.info("shard_loading", model=ref.name, layers=f"{start}:{end}", devices=devices)
        t0 = time.monotonic()
        if settings.load_shard is not None:
            parts.shard = shard = await settings.load_shard(settings)
        else:
            parts.shard = shard = await AsyncShard.load(
                settings.path,
                start=start,
                end=end,
                devices=devices,
                max_sessions=settings.max_sessions,
                max_context=settings.max_context,
                dtype=settings.dtype,
            )
        devices = list(shard.shard.devices)  # what auto-detection picked, on the worker thread
        parts.tokens_per_s = await measure_tokens_per_s(shard)
        log.info(
            "shard_ready",
            layers=f"{start}:{end}",
            seconds=round(time.monotonic() - t0, 2),
            tokens_per_s=round(parts.tokens_per_s, 1),
        )
        parts.service = InferService(
            node.identity,
            shard,
            ref.sha256,
            lie=settings.lie,
            payments=parts.payments,
            price_wei_per_token_layer=settings.price_wei_per_token_layer if parts.payments is not None else 0,
            credit_steps=settings.credit_steps,
        )
        parts.service.install(node.p2p.host)
        node.p2p.set_advert_body(_advert_body(parts, settings, devices))
        nursery.start_soon(_refresh_capacity, node, parts, settings, devices)
    client = Client(
        node.p2p.host,
        ref,
        lambda: node.p2p.view.adverts(node.p2p.clock.now_ms()),
        latency_ms=parts.latencies_ms.get,
        settings=settings.client,
        payer=parts.payments.sender if parts.payments is not None else None,
    )
    parts.gateway = Gateway(settings.path, ref, client, max_context=settings.max_context)
    parts.openai = OpenAIApp(parts.gateway)
    nursery.start_soon(_measure_latencies, node, parts)
    return parts


def _advert_body(parts: ModelParts, settings: ModelSettings, devices: list[str]) -> AdvertBody:
    shard = parts.shard
    assert shard is not None and settings.layers is not None
    engine = shard.shard
    paid = parts.payments
    return AdvertBody(
        addrs=(),
        model=parts.model,
        layer_start=settings.layers[0],
        layer_end=settings.layers[1],
        serves_embedding=engine.embed,
        serves_head=engine.head,
        dtype=settings.dtype,
        device=",".join(devices)[:64],
        tokens_per_s=round(parts.tokens_per_s, 2),
        free_cache_tokens=engine.free_cache_tokens,
        free_sessions=0 if parts.draining else engine.max_sessions - len(engine.sessions),
        price_wei_per_token_layer=settings.price_wei_per_token_layer if paid is not None else 0,
        chain_id=paid.chain_id if paid is not None else 0,
        contract=paid.contract if paid is not None else "",
    )


#: How often the serving node looks at its free capacity, and the least time between two adverts sent
#: because the node became full or stopped being full.
CAPACITY_POLL_S = 2.0
#: A change of free sessions or free cache tokens by at least this fraction of the total is news...
CAPACITY_STEP = 0.25
#: ...published at most this often. Smaller changes ride on the periodic republish.
CAPACITY_STEP_INTERVAL_S = 15.0


def capacity_news(
    last: tuple[int, int], now: tuple[int, int], total: tuple[int, int]
) -> Literal["flip", "step"] | None:
    """Whether a capacity change, ``(free_sessions, free_cache_tokens)`` from ``last`` to ``now`` out of
    ``total``, is worth a network-wide advert: ``"flip"`` when the node became full (no free session) or
    stopped being full, ``"step"`` when either count moved by `CAPACITY_STEP` of its total, else None.

    Every advert reaches every node, several copies each: re-advertising each token's cache use made a
    busy provider publish every poll, and a swarm of them flood the advert topic.
    """
    if (last[0] == 0) != (now[0] == 0):
        return "flip"
    for a, b, cap in zip(last, now, total, strict=True):
        if abs(a - b) >= max(1.0, CAPACITY_STEP * cap):
            return "step"
    return None


async def _refresh_capacity(
    node: Node, parts: ModelParts, settings: ModelSettings, devices: list[str]
) -> None:
    """Re-advertise when free capacity changes enough (`capacity_news`), so clients route around a full
    node; the current numbers always ride on the periodic republish."""
    assert parts.shard is not None
    first = _advert_body(parts, settings, devices)
    total = (parts.shard.shard.max_sessions, max(1, first.free_cache_tokens))
    last, last_step = (first.free_sessions, first.free_cache_tokens), -1e9
    while True:
        await trio.sleep(CAPACITY_POLL_S)
        body = _advert_body(parts, settings, devices)
        key = (body.free_sessions, body.free_cache_tokens)
        news = capacity_news(last, key, total)
        now = trio.current_time()
        if news == "flip" or (news == "step" and now - last_step >= CAPACITY_STEP_INTERVAL_S):
            last, last_step = key, now
            node.p2p.set_advert_body(body)
        elif key != (node.p2p.advert_body.free_sessions, node.p2p.advert_body.free_cache_tokens):
            node.p2p.set_advert_body(body, publish=False)


async def _measure_latencies(node: Node, parts: ModelParts) -> None:
    """Ping the serving peers in view every few seconds; the router prefers measured, nearby peers."""
    from node.p2p.host import ID
    from node.p2p.streams import StreamError
    from protocol.errors import MalformedMessage

    while True:
        now = node.p2p.clock.now_ms()
        for advert in node.p2p.view.adverts(now):
            if advert.body.model is None or advert.body.model.sha256 != parts.model.sha256:
                continue
            try:
                with trio.move_on_after(5):
                    rtt = await node.p2p.ping(ID.from_base58(advert.peer_id))
                    old = parts.latencies_ms.get(advert.peer_id)
                    ms = rtt * 1000
                    parts.latencies_ms[advert.peer_id] = ms if old is None else 0.7 * old + 0.3 * ms
            except (StreamError, MalformedMessage):
                parts.latencies_ms.pop(advert.peer_id, None)
        await trio.sleep(5.0)
