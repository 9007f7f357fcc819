"""Ed25519 checks shared by the nodes of one simulation run.

Every node checks the signatures on every message it is handed: an advert's own signature and the pubsub
envelope's, both Ed25519 (`nacl.signing.VerifyKey.verify`). In a run of 200 nodes the same signature on the
same bytes is checked by each of them, about 2% of the run's CPU. An Ed25519 check is a pure function of
key, message and signature, so `shared_signature_checks` lets the nodes of one process share its answer:
the first check of a (key, message, signature) triple is made as always, and an identical triple checked
again gets the same answer without the arithmetic. Only successes are kept, at most `CHECKS_KEPT` of them
(oldest dropped first): a forged or altered advert differs in its bytes, meets no kept answer, and is
checked and refused as before. Outcomes are the same with and without sharing, so a run's metrics are too.

A real node is its own process, with nothing to share; this is for the simulator only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import nacl.encoding
import nacl.signing

#: Successful checks remembered (a triple is a few hundred bytes).
CHECKS_KEPT = 16_384


@contextlib.contextmanager
def shared_signature_checks(
    kept: int = CHECKS_KEPT,
) -> Iterator[dict[tuple[bytes, bytes, bytes | None], bytes]]:
    """For the duration, identical Ed25519 checks in this process share one answer. Yields the record of
    kept successes (for tests)."""
    original = nacl.signing.VerifyKey.verify
    passed: dict[tuple[bytes, bytes, bytes | None], bytes] = {}
    raw = nacl.encoding.RawEncoder

    def verify(
        self: nacl.signing.VerifyKey, smessage: Any, signature: Any = None, encoder: Any = raw
    ) -> bytes:
        if (
            encoder is not raw
            or type(smessage) is not bytes
            or (signature is not None and type(signature) is not bytes)
        ):
            return original(self, smessage, signature, encoder)
        key = (self._key, smessage, signature)
        hit = passed.get(key)
        if hit is not None:
            return hit
        result: bytes = original(self, smessage, signature, encoder)  # raises on a bad signature
        if len(passed) >= kept:
            del passed[next(iter(passed))]
        passed[key] = result
        return result

    verify.__wrapped__ = original  # type: ignore[attr-defined]
    nacl.signing.VerifyKey.verify = verify  # type: ignore[method-assign]
    try:
        yield passed
    finally:
        nacl.signing.VerifyKey.verify = original  # type: ignore[method-assign]


__all__ = ["CHECKS_KEPT", "shared_signature_checks"]
