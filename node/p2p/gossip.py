"""Advert gossip: GossipSub on ``/meshsub/1.1.0``, topic ``/steppe/adverts/1``, with peer scoring.

Every message on the topic goes through full advert verification (`SwarmView.accept_untrusted`) before the
router forwards it. Invalid ones are dropped and counted; GossipSub's P4 counter lowers the sender's score.
The library does not act on a low score by itself except when a mesh overflows, so `_guard` prunes peers
whose score falls below `PRUNE_SCORE` from the mesh, and blacklists and disconnects those below `BAN_SCORE`
for `BAN_SECONDS`.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import Counter
from collections.abc import Callable

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import trio
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.tools.anyio_service import background_trio_service

from node.logging import get_logger
from node.p2p.clock import Clock
from protocol.advert import SignedAdvert, SwarmView, decode_advert_untrusted, verify_advert
from protocol.errors import LateAdvert, MalformedMessage, StaleAdvert

TOPIC = "/steppe/adverts/1"
HEARTBEAT_S = 1
#: Below this a peer leaves our mesh (PRUNE); below `BAN_SCORE` it is disconnected and blacklisted.
PRUNE_SCORE = -10.0
BAN_SCORE = -40.0
BAN_SECONDS = 600.0

log = get_logger("steppe.p2p.gossip")
#: A sender's signed peer record, once verified, is trusted again byte-for-byte for this long.
SENDER_RECORD_REUSE_S = 600.0


def _now() -> float:
    """Trio's clock (virtual in the simulator, where wall time made runs of one seed differ), else wall."""
    try:
        return trio.current_time()
    except RuntimeError:  # not inside trio.run
        return time.monotonic()


def _remember_verified_sender_records() -> None:
    """Verify each peer's signed peer record once, not on every pubsub RPC.

    py-libp2p attaches the sender's signed peer record to every RPC and checks it (an Ed25519 verification)
    twice per RPC, in the pubsub read loop and again in GossipSub's handler: about a tenth of a busy node's
    CPU. The record only changes when the sender's addresses do, so identical bytes from the same peer that
    this host verified within `SENDER_RECORD_REUSE_S` pass without a second verification; anything else
    goes through the library's check.
    """
    original = _pubsub_module.maybe_consume_signed_record
    if getattr(original, "remembers_verified", False):
        return
    # host -> peer -> (record bytes, when verified); per host, since each host has its own peerstore.
    verified: weakref.WeakKeyDictionary[object, dict[ID, tuple[bytes, float]]] = weakref.WeakKeyDictionary()

    def consume(msg, host, peer_id=None) -> bool:  # type: ignore[no-untyped-def]
        if peer_id is None or not msg.HasField("senderRecord"):
            return original(msg, host, peer_id)
        seen = verified.setdefault(host, {})
        record = msg.senderRecord
        now = _now()
        hit = seen.get(peer_id)
        if hit is not None and hit[0] == record and now - hit[1] < SENDER_RECORD_REUSE_S:
            return True
        ok = original(msg, host, peer_id)
        if ok:
            seen[peer_id] = (bytes(record), now)
        return ok

    consume.remembers_verified = True  # type: ignore[attr-defined]
    _pubsub_module.maybe_consume_signed_record = consume
    _gossipsub_module.maybe_consume_signed_record = consume


_remember_verified_sender_records()


def score_params() -> ScoreParams:
    """Honest peers drift slightly positive through first deliveries; each invalid advert costs 10 points.

    Messages from peers under the publish threshold are dropped before validation, so a flooder stops
    costing us verification work once it is scored down (by then `_guard` has banned it).
    """
    return ScoreParams(
        p1_time_in_mesh=TopicScoreParams(weight=0.01, cap=10.0, decay=1.0),
        p2_first_message_deliveries=TopicScoreParams(weight=1.0, cap=10.0, decay=0.99),
        p4_invalid_messages=TopicScoreParams(weight=10.0, cap=1000.0, decay=0.995),
        # The library's behaviour penalties (e.g. 10 for a GRAFT soon after a PRUNE) also hit honest peers
        # during mesh churn; only a repeat offender crosses the threshold.
        p5_behavior_penalty_weight=1.0,
        p5_behavior_penalty_decay=0.99,
        p5_behavior_penalty_threshold=20.0,
        publish_threshold=BAN_SCORE - 10.0,
        gossip_threshold=PRUNE_SCORE,
        graylist_threshold=BAN_SCORE - 40.0,
        accept_px_threshold=0.0,
    )


def forget_addrs(peerstore: PeerStore, peer: ID) -> None:
    """Drop ``peer``'s addresses and signed record, so that nothing dials it back.

    py-libp2p's ``clear_addrs`` clears the addresses, then raises `PeerStoreError` when the peer's entry has
    outlived its TTL (its record check reads the addresses through the expiry test). Raised in the gossip
    guard, that ended the guard and the node with it (a 200-node simulation stopped so).
    """
    try:
        peerstore.clear_addrs(peer)
    except PeerStoreError:
        peerstore.peer_record_map.pop(peer, None)


class AdvertGossip:
    """Owns the Pubsub + GossipSub pair for the advert topic and feeds valid adverts into ``view``.

    ``deliver=False`` joins no topic (tests use it to prove that DHT discovery alone suffices).
    ``on_advert`` is called for each newly accepted advert of another peer.
    """

    def __init__(
        self,
        host: IHost,
        view: SwarmView,
        clock: Clock,
        *,
        deliver: bool = True,
        on_advert: Callable[[SignedAdvert], None] | None = None,
    ) -> None:
        self.host = host
        self.view = view
        self.clock = clock
        self.deliver = deliver
        self.on_advert = on_advert
        self.own_id = host.get_id()
        self.router = GossipSub(
            [PROTOCOL_ID_V11],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=HEARTBEAT_S,
            score_params=score_params(),
            # The library's per-forwarder rate limit runs *after* validation and local delivery: a message
            # over the limit is accepted here but not forwarded, and the honest forwarder is penalised.
            # Every node's advert crosses every link, in bursts (joins, restarts), so at a few hundred
            # nodes it cut propagation and banned honest relays. Garbage is policed by validation and
            # scoring (an invalid advert costs its forwarder 10 points; `_guard` bans), not by this limit.
            spam_protection_enabled=False,
            # "Adaptive gossip" rates mesh health every 30 s and, below 0.7 (routine after a few peers
            # churn), stretches the heartbeat from 1 s to 30-60 s: meshes stop being repaired and IHAVE
            # gossip nearly stops. It also widened gossip fan-out (twice the duplicate copies measured).
            adaptive_gossip_enabled=False,
        )
        self.pubsub = Pubsub(host, self.router, seen_ttl=120, sweep_interval=60)
        # Message ids are (PeerID, seqno). The library starts seqnos at the Unix time in *seconds* and adds
        # one per message, so a node restarted within minutes reuses ids its peers still hold as seen and
        # its adverts are silently dropped. Start at nanoseconds, as go-libp2p does.
        self.pubsub.counter = clock.now_ms() * 1_000_000
        self.pubsub.set_topic_validator(TOPIC, self._validate, False)
        #: Refused messages by sender (forwarder) PeerID.
        self.rejected_from: Counter[str] = Counter()
        self.pruned: Counter[str] = Counter()
        self._banned: dict[ID, float] = {}
        self._subscription = None

    # -- validation (runs inside the library's receive path: must not raise) --

    def _validate(self, forwarder: ID, msg) -> bool:
        if forwarder == self.own_id:
            return True  # our own publish
        now = self.clock.now_ms()
        try:
            try:
                advert = decode_advert_untrusted(bytes(msg.data))
            except MalformedMessage:
                self.view.rejected["malformed"] += 1
                raise
            current = self.view.get(advert.peer_id, now)
            if current is not None and current.seq == advert.seq and current.sig == advert.sig:
                return True  # the copy we hold, arriving again (e.g. after a DHT fetch): valid, not news
            if advert.peer_id == str(self.own_id):
                # Only we can sign it: an older copy of ours relayed back (e.g. after our restart).
                try:
                    verify_advert(advert, now)
                except MalformedMessage:
                    self.view.rejected["invalid"] += 1
                    raise
                return True
            self.view.accept(advert, now)  # counts "invalid" / "stale" / "late" itself
        except (StaleAdvert, LateAdvert):
            # Authentic but not newer than the copy we hold, or expired moments ago: kept out of the view
            # (counted there) without blaming the forwarder, since an honest peer can relay an older copy that
            # crossed a newer one, or one that expired on the way (a slow hop; our own stall of a few seconds
            # once got every advert queued meanwhile counted as invalid and the bootstrap peer pruned).
            return True
        except MalformedMessage as exc:
            self.rejected_from[str(forwarder)] += 1
            log.debug("advert_rejected", forwarder=str(forwarder), error=str(exc)[:200])
            return False
        if self.on_advert is not None:
            self.on_advert(advert)
        return True

    # -- service --

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with background_trio_service(self.pubsub), background_trio_service(self.router):
                await self.pubsub.wait_until_ready()
                if self.deliver:
                    self._subscription = await self.pubsub.subscribe(TOPIC)
                async with trio.open_nursery() as nursery:
                    if self._subscription is not None:
                        nursery.start_soon(self._drain)
                    nursery.start_soon(self._guard)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            # The seen-message cache runs a sweeper on an OS thread; without this it outlives the node.
            self.pubsub.seen_messages.stop()

    async def _drain(self) -> None:
        # Accepted adverts were stored by the validator; the subscription queue only needs emptying.
        while True:
            await self._subscription.get()

    async def publish(self, advert_frame: bytes) -> None:
        """Publish our signed advert. Raises nothing on a lonely node (the router drops it)."""
        if not self.deliver:
            return
        try:
            await self.pubsub.publish(TOPIC, advert_frame)
        except Exception as exc:  # the library raises assorted errors with no peers or mid-shutdown
            log.warning("advert_publish_failed", error=repr(exc))

    def topic_peers(self) -> set[ID]:
        return set(self.pubsub.peer_topics.get(TOPIC, set()))

    def mesh_peers(self) -> set[ID]:
        return set(self.router.mesh.get(TOPIC, set()))

    def score(self, peer: ID) -> float:
        scorer = self.router.scorer
        return scorer.score(peer, [TOPIC]) if scorer is not None else 0.0

    async def _guard(self) -> None:
        """Prune low-score peers from the mesh; blacklist the worst for `BAN_SECONDS`."""
        while True:
            await trio.sleep(HEARTBEAT_S)
            now = trio.current_time()
            for peer, until in list(self._banned.items()):
                if until <= now:
                    del self._banned[peer]
                    self.pubsub.blacklisted_peers.discard(peer)
            for peer in self.topic_peers() | self.mesh_peers():
                score = self.score(peer)
                if not math.isfinite(score) or score >= PRUNE_SCORE:
                    continue
                if peer in self.router.mesh.get(TOPIC, set()):
                    self.router.mesh[TOPIC].discard(peer)
                    self.pruned[str(peer)] += 1
                    log.info("gossip_peer_pruned", peer_id=str(peer), score=round(score, 1))
                    try:
                        await self.router.emit_prune(TOPIC, peer, False, False)
                    except Exception as exc:  # the peer may be gone already
                        log.debug("gossip_prune_failed", peer_id=str(peer), error=repr(exc))
                if score < BAN_SCORE and peer not in self._banned:
                    self._banned[peer] = now + BAN_SECONDS
                    log.warning(
                        "gossip_peer_banned", peer_id=str(peer), score=round(score, 1), seconds=BAN_SECONDS
                    )
                    self.pubsub.add_to_blacklist(peer)
                    # Pubsub's blacklist only drops its stream: forget the addresses (so the auto-dialler
                    # does not call it back) and close the connection.
                    forget_addrs(self.host.get_peerstore(), peer)
                    try:
                        await self.host.disconnect(peer)
                    except Exception as exc:  # already gone
                        log.debug("gossip_disconnect_failed", peer_id=str(peer), error=repr(exc))
