"""Capability adverts: what a node serves, at what price, signed by its identity.

An advert is a `SignedAdvert` envelope ``{version, peer_id, seq, issued_at, expires_at, body, sig}``. The
Ed25519 key inlined in ``peer_id`` signs domain-separated canonical bytes of everything but ``sig``; the
body's ``payment_address`` signs the PeerID (EIP-191, ``evm_binding``). Times are integer milliseconds since
the Unix epoch. ``seq`` only grows: a node uses its clock in ms (or last + 1) so it survives restarts.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import msgspec

from . import codec
from .errors import InvalidAdvert, InvalidSignature, LateAdvert, MalformedMessage, StaleAdvert
from .identity import Identity, ed25519_of_peer_id_untrusted, verify_ed25519, verify_evm_binding

ADVERT_VERSION = 1
ADVERT_MAX_SIZE = 8 * 1024
SIGNING_DOMAIN = b"steppe/advert/v1\x00"
DEFAULT_TTL_MS = 120_000
#: Clock skew tolerated for ``issued_at`` in the future.
MAX_FUTURE_SKEW_MS = 30_000
#: An advert that expired less than this long ago is late, not invalid: an honest relay can deliver it so
#: (a slow hop, a receiver that stalled for seconds), so its forwarder is not blamed. Older: invalid.
LATE_GRACE_MS = MAX_FUTURE_SKEW_MS
#: No advert may claim to live longer than this.
MAX_TTL_MS = 600_000

Str64 = Annotated[str, msgspec.Meta(max_length=64)]
Str256 = Annotated[str, msgspec.Meta(max_length=256)]
Address = Annotated[str, msgspec.Meta(pattern=r"^(0x[0-9a-fA-F]{40})?$")]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Sha256 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class ModelRef(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A model by name and the sha256 over its weight files (see node.inference for how it is computed)."""

    name: Str256
    sha256: Sha256
    num_layers: Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class AdvertBody(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    addrs: Annotated[tuple[Str256, ...], msgspec.Meta(max_length=16)]
    model: ModelRef | None = None
    layer_start: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    layer_end: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 0
    serves_embedding: bool = False
    serves_head: bool = False
    dtype: Str64 = ""
    device: Str64 = ""
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e9)] = 0.0
    free_cache_tokens: U64 = 0
    free_sessions: U64 = 0
    price_wei_per_token_layer: U64 = 0  # int64 caps it at ~9.2 ETH per token per layer
    payment_address: Address = ""
    evm_binding: Annotated[bytes, msgspec.Meta(max_length=65)] = b""
    chain_id: U64 = 0
    contract: Address = ""
    software: Str64 = ""

    def __post_init__(self) -> None:
        if self.layer_end < self.layer_start:
            raise ValueError("layer_end is below layer_start")
        if self.model is not None and self.layer_end > self.model.num_layers:
            raise ValueError("layer range exceeds the model's layers")


@codec.register
class SignedAdvert(codec.Message, frozen=True):
    TYPE_ID = 1
    MAX_SIZE = ADVERT_MAX_SIZE

    version: int
    peer_id: Annotated[str, msgspec.Meta(max_length=64)]
    seq: U64
    issued_at: U64
    expires_at: U64
    body: AdvertBody
    sig: Annotated[bytes, msgspec.Meta(max_length=64)]


def signing_bytes(
    version: int, peer_id: str, seq: int, issued_at: int, expires_at: int, body: AdvertBody
) -> bytes:
    """Canonical bytes the node signs: domain tag + msgpack array (msgspec encodes structs deterministically)."""
    return SIGNING_DOMAIN + msgspec.msgpack.encode((version, peer_id, seq, issued_at, expires_at, body))


def make_advert(
    identity: Identity, body: AdvertBody, *, seq: int, now_ms: int, ttl_ms: int = DEFAULT_TTL_MS
) -> SignedAdvert:
    """Sign ``body`` as ``identity``. Fills ``payment_address``/``evm_binding`` when empty."""
    if not body.payment_address:
        body = msgspec.structs.replace(
            body, payment_address=identity.evm_address, evm_binding=identity.evm_binding()
        )
    expires = now_ms + ttl_ms
    sig = identity.sign(signing_bytes(ADVERT_VERSION, identity.peer_id, seq, now_ms, expires, body))
    return SignedAdvert(ADVERT_VERSION, identity.peer_id, seq, now_ms, expires, body, sig)


def encode_advert(advert: SignedAdvert) -> bytes:
    return codec.encode_frame(advert)


def decode_advert_untrusted(data: bytes) -> SignedAdvert:
    """Structure only (no signature check). Raises `MalformedMessage`."""
    if len(data) > codec.HEADER_SIZE + ADVERT_MAX_SIZE:
        raise InvalidAdvert(f"advert of {len(data)} bytes exceeds {ADVERT_MAX_SIZE}")
    msg = codec.decode_frame_untrusted(data, allowed=(SignedAdvert,))
    assert isinstance(msg, SignedAdvert)
    return msg


def verify_advert(advert: SignedAdvert, now_ms: int, *, last_seq: int | None = None) -> None:
    """Full verification. Raises `InvalidAdvert`, or one of its kinds an honest relay can cause: `LateAdvert`
    (expired less than `LATE_GRACE_MS` ago) or `StaleAdvert` (a seq not above ``last_seq``)."""
    if advert.version != ADVERT_VERSION:
        raise InvalidAdvert(f"unknown advert version {advert.version}")
    try:
        public_key = ed25519_of_peer_id_untrusted(advert.peer_id)
        verify_ed25519(
            public_key,
            signing_bytes(
                advert.version, advert.peer_id, advert.seq, advert.issued_at, advert.expires_at, advert.body
            ),
            advert.sig,
        )
    except MalformedMessage as exc:
        raise InvalidAdvert(f"advert signature does not match its PeerID: {exc}") from exc
    body = advert.body
    if not body.payment_address or not body.evm_binding:
        raise InvalidAdvert("advert has no EVM binding for its payment address")
    try:
        verify_evm_binding(advert.peer_id, body.payment_address, body.evm_binding)
    except InvalidSignature as exc:
        raise InvalidAdvert(f"bad EVM binding: {exc}") from exc
    if advert.issued_at > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidAdvert("advert issued too far in the future")
    if advert.expires_at <= advert.issued_at or advert.expires_at - advert.issued_at > MAX_TTL_MS:
        raise InvalidAdvert("advert lifetime out of bounds")
    if advert.expires_at <= now_ms:
        if now_ms - advert.expires_at <= LATE_GRACE_MS:
            raise LateAdvert(f"advert expired {now_ms - advert.expires_at} ms ago (late, not forged)")
        raise InvalidAdvert("advert expired")
    if last_seq is not None and advert.seq <= last_seq:
        raise StaleAdvert(f"advert seq {advert.seq} is not above the last seen ({last_seq})")


class SwarmView:
    """The validated, expiring view of the swarm's adverts. Pure: the caller passes the time.

    ``rejected`` counts refusals by reason (``malformed``, ``invalid``, ``stale``, ``late``, ``self``,
    ``full``). The last seq of a peer is remembered after its advert expires so a replay of an old copy is
    still refused.
    """

    def __init__(self, own_peer_id: str | None = None, max_peers: int = 100_000) -> None:
        self.own_peer_id = own_peer_id
        self.max_peers = max_peers
        self._adverts: dict[str, SignedAdvert] = {}
        self._last_seq: dict[str, int] = {}
        self.rejected: Counter[str] = Counter()
        self.accepted = 0

    def accept_untrusted(self, data: bytes, now_ms: int) -> SignedAdvert:
        """Decode, verify and store. Raises `MalformedMessage` (counted) when refused."""
        try:
            advert = decode_advert_untrusted(data)
        except MalformedMessage:
            self.rejected["malformed"] += 1
            raise
        return self.accept(advert, now_ms)

    def accept(self, advert: SignedAdvert, now_ms: int) -> SignedAdvert:
        try:
            verify_advert(advert, now_ms, last_seq=self._last_seq.get(advert.peer_id))
        except StaleAdvert:
            self.rejected["stale"] += 1
            raise
        except LateAdvert:
            self.rejected["late"] += 1
            raise
        except InvalidAdvert:
            self.rejected["invalid"] += 1
            raise
        if advert.peer_id not in self._adverts and len(self._adverts) >= self.max_peers:
            self.expire(now_ms)
            if len(self._adverts) >= self.max_peers:
                self.rejected["full"] += 1
                raise InvalidAdvert("swarm view is full")
        self._last_seq[advert.peer_id] = advert.seq
        self._adverts[advert.peer_id] = advert
        self.accepted += 1
        return advert

    def expire(self, now_ms: int) -> list[str]:
        gone = [pid for pid, adv in self._adverts.items() if adv.expires_at <= now_ms]
        for pid in gone:
            del self._adverts[pid]
        return gone

    def remove(self, peer_id: str) -> None:
        self._adverts.pop(peer_id, None)

    def get(self, peer_id: str, now_ms: int) -> SignedAdvert | None:
        adv = self._adverts.get(peer_id)
        return adv if adv is not None and adv.expires_at > now_ms else None

    def adverts(self, now_ms: int) -> list[SignedAdvert]:
        return [adv for adv in self._adverts.values() if adv.expires_at > now_ms]

    def last_seq(self, peer_id: str) -> int | None:
        return self._last_seq.get(peer_id)
