"""Sealed payloads: end-to-end encryption of inference bodies, on top of (not instead of) libp2p's Noise.

Sealing protects payloads from relays and from anything that stores them. Construction:

* the sender holds an ephemeral X25519 key pair per session (forward secrecy per session);
* key = BLAKE2b-256(X25519(eph_sk, recipient_pk) || eph_pk || recipient_pk), personalised;
* XChaCha20-Poly1305 (IETF) with a random 24-byte nonce;
* associated data = (version, protocol, session id, sequence number), so a body cannot be moved to another
  protocol, session or position.

Wire layout: ``version u8 | recipient hint 8 | seq u64 | eph_pk 32 | nonce 24 | ciphertext + tag 16``.
The hint (a hash of the recipient key) tells "sealed to someone else" apart from "tampered with".
An `Opener` accepts sequence numbers strictly in order: 0, 1, 2, …; a replay or a gap is refused.
"""

from __future__ import annotations

import hashlib
import os
import struct

import nacl.bindings as sodium
from nacl.exceptions import CryptoError

from .errors import OutOfOrderMessage, ReplayedMessage, TamperedPayload, TruncatedPayload, WrongRecipient

SEAL_VERSION = 1
_HEAD = struct.Struct(">B8sQ32s24s")
HEADER_SIZE = _HEAD.size
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE
_PERSON = b"steppe-seal-v1"
MAX_SESSION_ID = 64
MAX_PROTOCOL = 64


def key_hint(public_key: bytes) -> bytes:
    return hashlib.blake2b(public_key, digest_size=8, person=b"steppe-hint").digest()


def _derive(shared: bytes, eph_pk: bytes, recipient_pk: bytes) -> bytes:
    return hashlib.blake2b(shared + eph_pk + recipient_pk, digest_size=32, person=_PERSON).digest()


def associated_data(protocol: str, session_id: bytes, seq: int) -> bytes:
    proto = protocol.encode()
    if len(proto) > MAX_PROTOCOL or len(session_id) > MAX_SESSION_ID:
        raise ValueError("protocol name or session id too long")
    return (
        bytes([SEAL_VERSION, len(proto)])
        + proto
        + bytes([len(session_id)])
        + session_id
        + struct.pack(">Q", seq)
    )


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair ``(public, private)``."""
    return sodium.crypto_box_keypair()


class Sealer:
    """Seals a session's messages to one recipient, numbering them 0, 1, 2, …

    One ephemeral key pair per `Sealer`; the symmetric key is derived once. Not thread-safe.
    """

    def __init__(self, recipient_public: bytes, *, protocol: str, session_id: bytes) -> None:
        if len(recipient_public) != 32:
            raise ValueError("an X25519 public key is 32 bytes")
        self.protocol = protocol
        self.session_id = session_id
        self.next_seq = 0
        self._hint = key_hint(recipient_public)
        self._eph_pk, eph_sk = generate_keypair()
        self._key = _derive(
            sodium.crypto_scalarmult(eph_sk, recipient_public), self._eph_pk, recipient_public
        )

    def seal(self, plaintext: bytes) -> bytes:
        seq = self.next_seq
        self.next_seq += 1
        nonce = os.urandom(24)
        head = _HEAD.pack(SEAL_VERSION, self._hint, seq, self._eph_pk, nonce)
        ad = associated_data(self.protocol, self.session_id, seq)
        return head + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, self._key)


def seal(recipient_public: bytes, plaintext: bytes, *, protocol: str, session_id: bytes, seq: int) -> bytes:
    """One-shot seal with an explicit sequence number (a fresh ephemeral key each call)."""
    sealer = Sealer(recipient_public, protocol=protocol, session_id=session_id)
    sealer.next_seq = seq
    return sealer.seal(plaintext)


def open_untrusted(
    recipient_private: bytes,
    recipient_public: bytes,
    data: bytes,
    *,
    protocol: str,
    session_id: bytes,
    _cache: dict[bytes, bytes] | None = None,
) -> tuple[int, bytes]:
    """Open one sealed payload without sequence checks; returns ``(seq, plaintext)``.

    Raises `TruncatedPayload`, `WrongRecipient` or `TamperedPayload` (all `MalformedMessage`).
    """
    if len(data) < OVERHEAD:
        raise TruncatedPayload(
            f"sealed payload of {len(data)} bytes is shorter than its {OVERHEAD}-byte overhead"
        )
    version, hint, seq, eph_pk, nonce = _HEAD.unpack_from(data)
    if version != SEAL_VERSION:
        raise TamperedPayload(f"unknown seal version {version}")
    if hint != key_hint(recipient_public):
        raise WrongRecipient("payload is sealed to another key")
    key = _cache.get(eph_pk) if _cache is not None else None
    if key is None:
        try:
            shared = sodium.crypto_scalarmult(recipient_private, eph_pk)
        except Exception as exc:  # a low-order point yields an error in libsodium
            raise TamperedPayload("ephemeral key is not a valid X25519 point") from exc
        key = _derive(shared, eph_pk, recipient_public)
        if _cache is not None:
            if len(_cache) >= 4:
                _cache.clear()
            _cache[eph_pk] = key
    try:
        ad = associated_data(protocol, session_id, seq)
        plaintext = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(data[HEADER_SIZE:]), ad, nonce, key
        )
    except (CryptoError, ValueError) as exc:
        raise TamperedPayload(
            "authentication failed: the payload, its header or its context was altered"
        ) from exc
    return seq, plaintext


class Opener:
    """Opens one session's messages in order. Accepts seq 0, 1, 2, … exactly once each."""

    def __init__(self, private_key: bytes, public_key: bytes, *, protocol: str, session_id: bytes) -> None:
        self._sk, self._pk = private_key, public_key
        self.protocol = protocol
        self.session_id = session_id
        self.expected_seq = 0
        self._cache: dict[bytes, bytes] = {}

    def open_untrusted(self, data: bytes) -> bytes:
        """Raises `TruncatedPayload`, `WrongRecipient`, `TamperedPayload`, `ReplayedMessage`, `OutOfOrderMessage`."""
        seq, plaintext = open_untrusted(
            self._sk, self._pk, data, protocol=self.protocol, session_id=self.session_id, _cache=self._cache
        )
        if seq < self.expected_seq:
            raise ReplayedMessage(f"sequence number {seq} was already accepted (replay)")
        if seq > self.expected_seq:
            raise OutOfOrderMessage(
                f"sequence number {seq} arrived before {self.expected_seq} (reordered or lost)"
            )
        self.expected_seq += 1
        return plaintext
