"""Sealing throughput: Steppe's `Sealer`/`Opener` vs raw libsodium XChaCha20-Poly1305, same run.

    .venv/bin/python bench/seal.py [--seconds 1.0]

Prints MB/s for 1 KiB, 64 KiB and 1 MiB payloads, sealing and opening, and the ratio to raw AEAD
(encrypt / decrypt with a fixed key). The ratio is the figure; absolute MB/s depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import time

import nacl.bindings as sodium

from protocol.identity import Identity
from protocol.seal import Opener, Sealer

PROTO = "/steppe/infer/1"


def rate(fn, size: int, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n * size / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()
    ident = Identity.from_int(1)
    print(
        f"{'payload':>8} | {'seal MB/s':>10} {'raw enc':>10} {'ratio':>6} | {'open MB/s':>10} {'raw dec':>10} {'ratio':>6}"
    )
    for size in (1024, 64 * 1024, 1024 * 1024):
        payload = os.urandom(size)
        key, nonce, ad = os.urandom(32), os.urandom(24), b"x" * 40
        raw_ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, ad, nonce, key)
        raw_enc = rate(
            lambda: sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(payload, ad, nonce, key),
            size,
            args.seconds,
        )
        raw_dec = rate(
            lambda: sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(raw_ct, ad, nonce, key),
            size,
            args.seconds,
        )
        sealer = Sealer(ident.x25519_public, protocol=PROTO, session_id=b"bench")
        ours_seal = rate(lambda: sealer.seal(payload), size, args.seconds)
        # Opening needs messages in order: pre-seal a batch with a fresh session each round.
        batch = max(8, int(200e6 / size / 10))
        sealer = Sealer(ident.x25519_public, protocol=PROTO, session_id=b"bench")
        msgs = [sealer.seal(payload) for _ in range(batch)]
        opener = Opener(ident.x25519_private, ident.x25519_public, protocol=PROTO, session_id=b"bench")
        it = iter(msgs)
        start = time.perf_counter()
        count = 0
        for m in it:
            opener.open_untrusted(m)
            count += 1
            if time.perf_counter() - start > args.seconds:
                break
        ours_open = count * size / (time.perf_counter() - start) / 1e6
        label = f"{size // 1024} KiB" if size < 1024 * 1024 else "1 MiB"
        print(
            f"{label:>8} | {ours_seal:10.1f} {raw_enc:10.1f} {ours_seal / raw_enc:6.2f} |"
            f" {ours_open:10.1f} {raw_dec:10.1f} {ours_open / raw_dec:6.2f}"
        )


if __name__ == "__main__":
    main()
