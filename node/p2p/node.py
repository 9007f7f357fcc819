"""`P2PNode`: one node's presence on the network — host, advert gossip, DHT, stream protocols.

Owns the libp2p host and every service on it. Publishes this node's signed advert on start, every
``republish_s``, when the body changes, and when new peers join the topic; keeps the expiring, validated
`SwarmView`; keeps bootstrap peers connected with exponential backoff. `withdraw` (called by the wiring
function before shutdown) publishes a short-lived advert so peers forget the node within a second; then
cancelling `run` closes streams, connections and listeners.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import msgspec
import trio
from libp2p.abc import ITransport
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.logging import get_logger
from node.p2p.clock import Clock, WallClock
from node.p2p.discovery import Discovery
from node.p2p.gossip import AdvertGossip
from node.p2p.host import build_host, dialable_addrs, open_host, parse_listen_addr, parse_peer_addr
from node.p2p.protocols import ADVERT_PROTOCOL, PING_PROTOCOL, serve_advert, serve_ping
from node.p2p.streams import ProtocolServer, StreamError, request
from protocol.advert import (
    DEFAULT_TTL_MS,
    MAX_TTL_MS,
    AdvertBody,
    SignedAdvert,
    SwarmView,
    encode_advert,
    make_advert,
)
from protocol.errors import ConfigError, MalformedMessage
from protocol.identity import Identity
from protocol.p2pmsg import AdvertRequest

log = get_logger("steppe.p2p.node")

#: Distinct (peer, addresses) pairs of verified adverts whose parsed form is kept.
ADDR_CACHE_SIZE = 4096
#: Least time between two republishes triggered only by our mesh gaining peers.
GREW_REPUBLISH_S = 5.0
#: Growth of our mesh triggers a republish only while our last advert went out to fewer mesh peers
#: than this: with a few peers it already floods the whole connected swarm, so later growth (every join
#: adds mesh peers to someone) would only multiply traffic. N joins otherwise cost ~N^2 advert copies.
GREW_UNTIL_PEERS = 2
#: Provider records are kept by the ~20 nodes closest to the key, and a node that restarts comes back with
#: none. In a 200-node swarm with 20% churn a minute, a 10-minute refresh let every record keeper a lookup
#: reached forget a block's providers (3 of 212 lookups found none); refreshed this often, most keepers
#: still hold them. One refresh costs a lookup and ~20 small messages.
PROVIDE_EVERY_S = 120.0


@dataclass(frozen=True)
class P2PSettings:
    """What the p2p layer needs from the configuration."""

    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    advert_ttl_ms: int = DEFAULT_TTL_MS
    republish_s: float = 30.0
    #: False: join no gossip topic (discovery through the DHT only; used by tests).
    gossip: bool = True
    #: Dial advertised peers until this many connections are open.
    target_peers: int = 8
    max_backoff_s: float = 30.0
    software: str = "steppe/0.1.0"

    def __post_init__(self) -> None:
        # Peers refuse adverts that live longer than MAX_TTL_MS: a node publishing them would be invisible
        # and penalised for every copy it forwards.
        if not 1000 <= self.advert_ttl_ms <= MAX_TTL_MS:
            raise ConfigError(
                f"advert TTL must be 1 to {MAX_TTL_MS // 1000} s, not {self.advert_ttl_ms / 1000:g} s"
            )
        if not 0 < self.republish_s < self.advert_ttl_ms / 1000:
            raise ConfigError(
                f"republish interval must be above 0 and shorter than the advert TTL "
                f"({self.advert_ttl_ms / 1000:g} s), not {self.republish_s:g} s"
            )


class P2PNode:
    """Build with `node.app.open_node` (the one wiring function); this class only composes the p2p parts."""

    def __init__(
        self,
        identity: Identity,
        settings: P2PSettings,
        *,
        clock: Clock | None = None,
        transport: ITransport | None = None,
        advert_body: AdvertBody | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self.clock = clock or WallClock()
        self.listen = [parse_listen_addr(a) for a in settings.listen]
        self.bootstrap = [parse_peer_addr(a) for a in settings.bootstrap]
        self.host = build_host(identity, self.listen, transport=transport, mdns=settings.mdns)
        self.peer_id = identity.peer_id
        self.view = SwarmView(own_peer_id=self.peer_id)
        self.gossip = AdvertGossip(
            self.host, self.view, self.clock, deliver=settings.gossip, on_advert=self._learn_addrs
        )
        self.discovery = Discovery(self.host, self.clock)
        self.ping_server = ProtocolServer(self.host, PING_PROTOCOL, serve_ping)
        self.advert_server = ProtocolServer(self.host, ADVERT_PROTOCOL, lambda s: serve_advert(s, self))
        self._body = advert_body or AdvertBody(addrs=())
        self.advert: SignedAdvert | None = None
        self._changed = trio.Event()
        self._provided: tuple = ()  # (what was announced, when)

    # -- the advert --

    @property
    def advert_body(self) -> AdvertBody:
        """What this node advertises now (before its addresses and software are filled in)."""
        return self._body

    def set_advert_body(self, body: AdvertBody, *, publish: bool = True) -> None:
        """Replace what this node advertises (``addrs`` is filled in here); republished at once, or with
        ``publish=False`` at the next periodic republish (small changes not worth a network-wide copy)."""
        self._body = body
        if publish:
            self._changed.set()

    def addrs(self) -> list[str]:
        """Dialable multiaddrs of this node, each ending in ``/p2p/<PeerID>``."""
        return dialable_addrs(self.host)

    def _sign(self, ttl_ms: int) -> SignedAdvert:
        now = self.clock.now_ms()
        seq = max(now, (self.advert.seq + 1) if self.advert else 0)
        body = msgspec.structs.replace(
            self._body, addrs=tuple(self.addrs()[:16]), software=self.settings.software
        )
        self.advert = make_advert(self.identity, body, seq=seq, now_ms=now, ttl_ms=ttl_ms)
        return self.advert

    async def _publish(self, ttl_ms: int | None = None) -> None:
        advert = self._sign(ttl_ms or self.settings.advert_ttl_ms)
        frame = encode_advert(advert)
        await self.gossip.publish(frame)
        log.debug("advert_published", seq=advert.seq, topic_peers=len(self.gossip.topic_peers()))

    async def _provider(self) -> None:
        """Announce provider records for the model blocks we serve once DHT peers exist.

        Announce when what we serve changes, after a failed round, and every `PROVIDE_EVERY_S` (record keepers
        come and go) — not on every advert.
        """
        while True:
            await trio.sleep(2.0)
            body = self.advert.body if self.advert is not None else None
            if body is None or body.model is None or body.layer_end <= body.layer_start:
                continue
            if self.discovery.routing_table_size() == 0:
                continue
            what = (body.model.sha256, body.layer_start, body.layer_end)
            now = trio.current_time()
            if self._provided[:1] != (what,) or now - self._provided[1] >= PROVIDE_EVERY_S:
                with trio.move_on_after(30):
                    if await self.discovery.provide(*what):
                        self._provided = (what, now)
                        log.info("blocks_provided", model=what[0].hex()[:16], layers=f"{what[1]}:{what[2]}")

    async def _publisher(self) -> None:
        """Publish on start, every ``republish_s``, on change, and when the topic gains peers."""
        last, seen_peers = -1e9, 0
        while True:
            with trio.move_on_after(1.0):
                await self._changed.wait()
            now = trio.current_time()
            # Mesh peers, not topic peers: a publish goes to the mesh only, and a node that just (re)joined
            # has topic peers a heartbeat before it has a mesh, so its first advert can reach nobody.
            peers = len(self.gossip.mesh_peers())
            due = now - last >= self.settings.republish_s
            # Our first mesh peers get our advert soon, but not at once: when many nodes join together, a
            # republish per second per node floods the topic.
            grew = (
                peers > seen_peers
                and seen_peers < GREW_UNTIL_PEERS
                # An advert that reached no mesh peer went nowhere: send it as soon as there is one.
                and (seen_peers == 0 or now - last >= min(GREW_REPUBLISH_S, self.settings.republish_s))
            )
            if self._changed.is_set() or due or grew:
                self._changed = trio.Event()
                last, seen_peers = now, peers
                with trio.move_on_after(10):
                    await self._publish()
            seen_peers = min(seen_peers, peers)

    async def _expirer(self) -> None:
        while True:
            await trio.sleep(1.0)
            for pid in self.view.expire(self.clock.now_ms()):
                log.info("advert_expired", peer_id=pid)

    # -- connectivity --

    def _learn_addrs(self, advert: SignedAdvert) -> None:
        """Put a verified advert's addresses in the peerstore, so any part of the node can dial its peer.

        A newly accepted advert is fresh evidence that its peer runs, so the peer also leaves the swarm's
        negative dial cache, which otherwise refuses to dial it for 60 s after one failed dial. Without this
        a provider that restarted stayed undialable from a gateway that had tried it while it was down, and
        a generation could spend all its failovers on such providers (3 of 91 failed so in a churn-200 run)."""
        pid, addrs = _advertised_addrs(advert.peer_id, advert.body.addrs)
        self._unblock(pid)
        if addrs:
            ttl_s = max(1, (advert.expires_at - self.clock.now_ms()) // 1000)
            self.host.get_peerstore().add_addrs(pid, list(addrs), ttl_s)

    def _unblock(self, peer_id: ID) -> None:
        """Take ``peer_id`` out of the swarm's negative dial cache (a 60 s refusal after one failed dial)."""
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)

    async def _keep_connected(self, info: PeerInfo) -> None:
        """Keep one bootstrap peer connected; back off exponentially (with jitter) while it is unreachable."""
        delay = 0.5
        while True:
            if info.peer_id not in self.host.get_connected_peers():
                # The swarm refuses to redial a peer for 60 s after a failed dial; our backoff decides instead.
                self._unblock(info.peer_id)
                try:
                    with trio.fail_after(10):
                        await self.host.connect(info)
                    log.info("bootstrap_connected", peer_id=str(info.peer_id))
                    delay = 0.5
                except Exception as exc:  # dial errors come in many library types
                    log.info(
                        "bootstrap_unreachable",
                        peer_id=str(info.peer_id),
                        retry_s=round(delay, 1),
                        error=repr(exc)[:200],
                    )
                    await trio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self.settings.max_backoff_s)
                    continue
            await trio.sleep(2.0)

    async def _dial_advertised(self) -> None:
        """Connect to peers we learnt from adverts until ``target_peers`` connections are open."""
        while True:
            await trio.sleep(2.0)
            connected = set(self.host.get_connected_peers())
            for advert in self.view.adverts(self.clock.now_ms()):
                if len(connected) >= self.settings.target_peers:
                    break
                pid = ID.from_base58(advert.peer_id)
                if pid in connected or not advert.body.addrs:
                    continue
                try:
                    info = parse_peer_addr(advert.body.addrs[0])
                    with trio.fail_after(5):
                        await self.host.connect(PeerInfo(pid, [*info.addrs]))
                    connected.add(pid)
                except Exception as exc:  # unreachable or bad address: try again next round
                    log.debug("advertised_peer_unreachable", peer_id=advert.peer_id, error=repr(exc)[:200])

    # -- discovery through the DHT --

    async def fetch_advert(self, info: PeerInfo) -> SignedAdvert:
        """Ask a peer for its current advert over `ADVERT_PROTOCOL` and add it to the view.

        Raises `StreamError` (unreachable, remote error) or `MalformedMessage` (invalid advert, counted).
        """
        if info.addrs:
            self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 600)
        reply = await request(self.host, info.peer_id, ADVERT_PROTOCOL, AdvertRequest())
        assert isinstance(reply, SignedAdvert)
        if reply.peer_id != str(info.peer_id):
            self.view.rejected["invalid"] += 1
            raise MalformedMessage("peer answered with another peer's advert")
        now = self.clock.now_ms()
        held = self.view.get(reply.peer_id, now)
        if held is not None and held.seq == reply.seq:
            return held
        advert = self.view.accept(reply, now)
        self._learn_addrs(advert)
        return advert

    async def find_providers(
        self, model_sha256: bytes, block: int, *, fetch_timeout: float = 5.0
    ) -> list[SignedAdvert]:
        """Providers of a model block found through the DHT alone, with their verified adverts.

        Adverts are fetched concurrently; a provider that cannot be reached (gone since it announced) or
        answers with an invalid advert is left out.
        """
        found: list[SignedAdvert] = []

        async def fetch(info: PeerInfo) -> None:
            try:
                with trio.fail_after(fetch_timeout):
                    found.append(await self.fetch_advert(info))
            except (StreamError, MalformedMessage, trio.TooSlowError) as exc:
                log.info("provider_advert_unavailable", peer_id=str(info.peer_id), error=str(exc)[:200])

        async with trio.open_nursery() as nursery:
            for info in await self.discovery.find_providers(model_sha256, block):
                nursery.start_soon(fetch, info)
        return sorted(found, key=lambda a: a.peer_id)

    async def ping(self, peer_id: ID, payload: bytes = b"") -> float:
        """Round trip in seconds over `PING_PROTOCOL`. Raises `StreamError` or `MalformedMessage`."""
        from protocol.p2pmsg import Ping, Pong

        nonce = random.getrandbits(63)
        start = trio.current_time()
        reply = await request(self.host, peer_id, PING_PROTOCOL, Ping(nonce, payload))
        if not isinstance(reply, Pong) or reply.nonce != nonce or reply.payload != payload:
            raise MalformedMessage("pong does not echo the ping")
        return trio.current_time() - start

    # -- life --

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with open_host(self.host, self.listen):
            async with trio.open_nursery() as nursery:
                await nursery.start(self.gossip.run)
                await nursery.start(self.discovery.run)
                for info in self.bootstrap:
                    nursery.start_soon(self._keep_connected, info)
                nursery.start_soon(self._publisher)
                nursery.start_soon(self._provider)
                nursery.start_soon(self._expirer)
                nursery.start_soon(self._dial_advertised)
                log.info("p2p_started", peer_id=self.peer_id, addrs=self.addrs())
                task_status.started()
        log.info("p2p_stopped", peer_id=self.peer_id)

    async def withdraw(self) -> None:
        """Replace our advert everywhere with one that expires in a second (call before cancelling `run`).

        A higher seq makes every peer take it; it then expires, so peers forget this node at once instead of
        after the TTL. Raises nothing; gives up silently when no peer listens.
        """
        if self.advert is None or not self.settings.gossip or not self.gossip.topic_peers():
            return
        await self.gossip.publish(encode_advert(self._sign(1000)))
        await trio.sleep(0.2)  # the router sends from per-peer queues: let them drain

    def status(self) -> dict:
        now = self.clock.now_ms()
        adverts = []
        for adv in sorted(self.view.adverts(now), key=lambda a: a.peer_id):
            body = adv.body
            adverts.append(
                {
                    "peer_id": adv.peer_id,
                    "seq": adv.seq,
                    "expires_at": adv.expires_at,
                    "expires_in_s": round((adv.expires_at - now) / 1000, 1),
                    "addrs": list(body.addrs),
                    "model": None
                    if body.model is None
                    else {
                        "name": body.model.name,
                        "sha256": body.model.sha256.hex(),
                        "num_layers": body.model.num_layers,
                    },
                    "layers": [body.layer_start, body.layer_end],
                    "price_wei_per_token_layer": body.price_wei_per_token_layer,
                    "payment_address": body.payment_address,
                }
            )
        return {
            "peer_id": self.peer_id,
            "addrs": self.addrs(),
            "peers": sorted(str(p) for p in self.host.get_connected_peers()),
            "adverts": adverts,
            "rejected": dict(self.view.rejected),
            "rejected_by_sender": dict(self.gossip.rejected_from),
            "gossip": {
                "enabled": self.settings.gossip,
                "mesh": sorted(str(p) for p in self.gossip.mesh_peers()),
                "pruned": dict(self.gossip.pruned),
                "scores": {str(p): round(self.gossip.score(p), 2) for p in self.gossip.topic_peers()},
            },
            "dht": {"routing_table": self.discovery.routing_table_size()},
            "streams": {"errors": dict(self.ping_server.errors + self.advert_server.errors)},
        }


@functools.lru_cache(maxsize=ADDR_CACHE_SIZE)
def _advertised_addrs(peer_id: str, texts: tuple[str, ...]) -> tuple[ID, tuple]:
    """The peer id and the usable multiaddrs of an advert: addresses that do not parse, or that name another
    peer, are skipped (the advert itself is valid). Cached: a peer republishes the same addresses, and every
    node receives every advert."""
    pid = ID.from_base58(peer_id)
    addrs: list = []
    for text in texts:
        try:
            info = parse_peer_addr(text)
        except ConfigError:
            continue
        if info.peer_id == pid:
            addrs.extend(info.addrs)
    return pid, tuple(addrs)
