"""Node identity: one Ed25519 seed is the libp2p identity and (converted to X25519) the sealing key.

A separate secp256k1 key is the node's EVM account. The binding — the EVM key signing the PeerID with
EIP-191 — lets anyone check that a payment address belongs to the peer that advertises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import nacl.bindings
import nacl.signing

from . import evm
from .errors import InvalidSignature, MalformedMessage

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}
# libp2p PublicKey protobuf for Ed25519: field 1 (KeyType) = 1, field 2 (Data) = 32 bytes.
_ED25519_PROTO_PREFIX = b"\x08\x01\x12\x20"
# Multihash "identity" (0x00) of the 36-byte protobuf: the key is inlined in the PeerID.
_PEER_ID_PREFIX = b"\x00\x24" + _ED25519_PROTO_PREFIX
BINDING_DOMAIN = b"steppe/evm-binding/v1:"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = bytearray()
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    out.extend(b"1" * (len(data) - len(data.lstrip(b"\0"))))
    return bytes(reversed(out)).decode()


def b58decode(text: str) -> bytes:
    raw = text.encode("ascii", "strict")
    n = 0
    for c in raw:
        n = n * 58 + _B58_INDEX[c]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(raw) - len(raw.lstrip(b"1"))) + body


def peer_id_of_ed25519(public_key: bytes) -> str:
    """The libp2p PeerID (``12D3KooW…``) of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b58encode(_PEER_ID_PREFIX + public_key)


def ed25519_of_peer_id_untrusted(peer_id: str) -> bytes:
    """The Ed25519 public key inlined in a PeerID. Raises `MalformedMessage` for any other PeerID."""
    try:
        if len(peer_id) > 64:
            raise ValueError("too long")
        raw = b58decode(peer_id)
    except (KeyError, ValueError, UnicodeEncodeError) as exc:
        raise MalformedMessage(f"not a base58 PeerID: {peer_id[:64]!r}") from exc
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        raise MalformedMessage("PeerID is not an inlined Ed25519 key")
    return raw[len(_PEER_ID_PREFIX) :]


def x25519_of_ed25519_public(public_key: bytes) -> bytes:
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except Exception as exc:  # pynacl raises RuntimeError for a point not on the curve
        raise MalformedMessage("Ed25519 key has no X25519 form") from exc


def verify_ed25519(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raises `InvalidSignature` unless ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except Exception as exc:  # BadSignatureError, ValueError, TypeError on wrong sizes
        raise InvalidSignature("Ed25519 signature does not verify") from exc


def binding_message(peer_id: str) -> bytes:
    return BINDING_DOMAIN + peer_id.encode()


#: Verified EVM bindings remembered (a binding never changes while its node runs; one per peer).
BINDING_CACHE_SIZE = 4096


def verify_evm_binding(peer_id: str, evm_address: str, signature: bytes) -> None:
    """Raises `InvalidSignature` unless ``evm_address`` signed ``peer_id`` (EIP-191).

    A node republishes the same binding in every advert, so the secp256k1 recovery runs once per distinct
    (peer, address, signature) that verified; a failure is not remembered and fails again when asked."""
    _verify_evm_binding_once(peer_id, evm_address, bytes(signature))


@lru_cache(maxsize=BINDING_CACHE_SIZE)
def _verify_evm_binding_once(peer_id: str, evm_address: str, signature: bytes) -> None:
    # lru_cache keeps return values only: a raised InvalidSignature is raised again on the next call.
    if evm.recover_personal(binding_message(peer_id), signature) != evm_address:
        raise InvalidSignature("EVM binding is signed by another address than the payment address")


@dataclass(frozen=True)
class Identity:
    """A node's keys. ``seed`` is the Ed25519 seed; ``evm_key`` the secp256k1 private key. Both secret."""

    seed: bytes
    evm_key: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32 or len(self.evm_key) != 32:
            raise ValueError("seed and evm_key are 32 bytes each")

    def __repr__(self) -> str:  # never print secrets
        return f"Identity(peer_id={self.peer_id!r}, evm_address={self.evm_address!r})"

    @cached_property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @cached_property
    def peer_id(self) -> str:
        return peer_id_of_ed25519(self.public_key)

    @cached_property
    def x25519_public(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)

    @cached_property
    def x25519_private(self) -> bytes:
        return nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self.seed + self.public_key)

    @cached_property
    def evm_address(self) -> str:
        return evm.address_of_private_key(self.evm_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing_key.sign(message).signature

    def evm_binding(self) -> bytes:
        """The EVM key's EIP-191 signature over this node's PeerID."""
        return evm.personal_sign(self.evm_key, binding_message(self.peer_id))

    @classmethod
    def generate(cls) -> Identity:
        import os

        while True:
            evm_key = os.urandom(32)
            if 0 < int.from_bytes(evm_key, "big") < evm.SECP256K1_N:
                return cls(seed=os.urandom(32), evm_key=evm_key)

    @classmethod
    def from_int(cls, n: int) -> Identity:
        """A deterministic identity for tests and the simulator. Never use for real funds."""
        from hashlib import sha256

        return cls(
            seed=sha256(b"steppe-test-seed:%d" % n).digest(),
            evm_key=sha256(b"steppe-test-evm:%d" % n).digest(),
        )
