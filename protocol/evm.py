"""secp256k1 / Ethereum primitives: addresses, EIP-191 personal messages, recoverable signatures.

Pure functions over bytes. Signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28} and low ``s``,
the form Solidity's ``ecrecover`` accepts.
"""

from __future__ import annotations

import coincurve
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from .errors import InvalidSignature

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2


def address_of_public_key(public_key: coincurve.PublicKey) -> str:
    """The checksummed address of a public key: the last 20 bytes of keccak(uncompressed point)."""
    return to_checksum_address(keccak(public_key.format(compressed=False)[1:])[-20:])


def address_of_private_key(private_key: bytes) -> str:
    return address_of_public_key(coincurve.PrivateKey(private_key).public_key)


def personal_message_hash(message: bytes) -> bytes:
    """EIP-191 version 0x45 ("personal_sign") hash of ``message``."""
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def sign_hash(private_key: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; returns ``r || s || v`` (65 bytes, v in {27, 28}, low s)."""
    sig = coincurve.PrivateKey(private_key).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover_address(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed ``digest``.

    Raises `InvalidSignature` for a signature of the wrong length, a ``v`` outside {27, 28}, a high ``s``
    (rejected like the contract does, so a signature has exactly one valid encoding) or a point that does
    not recover.
    """
    if len(signature) != 65:
        raise InvalidSignature(f"signature must be 65 bytes, got {len(signature)}")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidSignature(f"signature v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < SECP256K1_N and 0 < s <= _HALF_N):
        raise InvalidSignature("signature r/s out of range (high s is not accepted)")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception/ValueError on bad points
        raise InvalidSignature("signature does not recover to a public key") from exc
    return address_of_public_key(public_key)


def personal_sign(private_key: bytes, message: bytes) -> bytes:
    return sign_hash(private_key, personal_message_hash(message))


def recover_personal(message: bytes, signature: bytes) -> str:
    return recover_address(personal_message_hash(message), signature)
