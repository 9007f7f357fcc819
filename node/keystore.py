"""Key files on disk: ``identity.key`` (Ed25519 seed) and ``wallet.key`` (secp256k1 EVM key).

Format, one line of text: ``steppe-key v1 <kind> <64 hex> <8 hex checksum>``. The checksum (first 4 bytes
of sha256 over the kind and the key) catches truncation and corruption; mode 0600 is required on load.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from protocol.errors import KeyFileError
from protocol.evm import SECP256K1_N
from protocol.identity import Identity

IDENTITY_FILE = "identity.key"
WALLET_FILE = "wallet.key"
_MAGIC = "steppe-key"


def _checksum(kind: str, key: bytes) -> str:
    return hashlib.sha256(kind.encode() + b":" + key).hexdigest()[:8]


def encode_key(kind: str, key: bytes) -> str:
    return f"{_MAGIC} v1 {kind} {key.hex()} {_checksum(kind, key)}\n"


def write_key_file(path: Path, kind: str, key: bytes) -> None:
    """Write atomically with mode 0600 from the start (the secret never exists world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, encode_key(kind, key).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_key_file(path: Path, kind: str) -> bytes:
    """Read a key file. Raises `KeyFileError` saying what is wrong and what to do."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: no such key file; run `steppe init --home {path.parent}` first") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} let other users read a secret key; "
            f"run `chmod 600 {path}`"
        )
    if st.st_size > 4096:
        raise KeyFileError(f"{path}: {st.st_size} bytes is too large for a key file; it is not one of ours")
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: unreadable ({exc}); restore it from your backup") from exc
    parts = text.split()
    if len(parts) != 5 or parts[0] != _MAGIC:
        raise KeyFileError(
            f"{path}: not a Steppe key file (truncated or corrupt); restore it from your backup"
        )
    _, version, found_kind, key_hex, check = parts
    if version != "v1":
        raise KeyFileError(f"{path}: key file version {version!r} is not supported by this release")
    if found_kind != kind:
        raise KeyFileError(f"{path}: holds a {found_kind!r} key where a {kind!r} key belongs")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise KeyFileError(f"{path}: key is not hex (corrupt); restore it from your backup") from exc
    if len(key) != 32 or _checksum(kind, key) != check:
        raise KeyFileError(f"{path}: checksum mismatch (truncated or corrupt); restore it from your backup")
    if kind == "secp256k1" and not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise KeyFileError(f"{path}: not a valid secp256k1 key")
    return key


def create_identity(home: Path, *, force: bool = False) -> Identity:
    """Generate and store a new identity in ``home``. Raises `KeyFileError` if one exists and not ``force``."""
    home.mkdir(parents=True, exist_ok=True)
    id_path, wallet_path = home / IDENTITY_FILE, home / WALLET_FILE
    existing = [p for p in (id_path, wallet_path) if p.exists()]
    if existing and not force:
        raise KeyFileError(
            f"{existing[0]} already exists; refusing to overwrite a node identity. "
            "Use --force to replace it (the old PeerID and wallet are lost unless backed up)."
        )
    ident = Identity.generate()
    write_key_file(id_path, "ed25519", ident.seed)
    write_key_file(wallet_path, "secp256k1", ident.evm_key)
    return ident


def load_identity(home: Path) -> Identity:
    """Load the identity stored in ``home``. Raises `KeyFileError`."""
    return Identity(
        seed=read_key_file(home / IDENTITY_FILE, "ed25519"),
        evm_key=read_key_file(home / WALLET_FILE, "secp256k1"),
    )
