"""The `steppe` command as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from node.keystore import load_identity


def steppe(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPPE_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "steppe"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_init_creates_keys_and_config_and_prints_the_identity(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = steppe("init", "--home", str(home), "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    ident = load_identity(home)
    assert facts["peer_id"] == ident.peer_id
    assert (
        facts["peer_id"]
        == ID.from_pubkey(Ed25519PrivateKey.from_bytes(ident.seed).get_public_key()).to_base58()
    )
    assert facts["evm_address"] == ident.evm_address
    assert facts["x25519_public_key"] == ident.x25519_public.hex()
    assert (home / "config.toml").exists()
    assert (home / "identity.key").stat().st_mode & 0o777 == 0o600


def test_init_again_refuses_and_keys_prints_the_same_identity(tmp_path: Path) -> None:
    assert steppe("init", "--home", str(tmp_path)).returncode == 0
    before = (tmp_path / "identity.key").read_bytes()
    again = steppe("init", "--home", str(tmp_path))
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "identity.key").read_bytes() == before
    keys = steppe("keys", "--home", str(tmp_path), "--json")
    assert json.loads(keys.stdout)["peer_id"] == load_identity(tmp_path).peer_id


def test_keys_on_a_world_readable_key_fails_with_what_to_do(tmp_path: Path) -> None:
    steppe("init", "--home", str(tmp_path))
    os.chmod(tmp_path / "wallet.key", 0o644)
    out = steppe("keys", "--home", str(tmp_path))
    assert out.returncode == 2
    assert "chmod 600" in out.stderr


def test_help_lists_every_command() -> None:
    out = steppe("--help")
    assert out.returncode == 0
    for command in ("init", "keys", "demo"):
        assert command in out.stdout
