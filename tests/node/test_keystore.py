from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.keystore import IDENTITY_FILE, WALLET_FILE, create_identity, load_identity
from protocol.errors import KeyFileError


def test_created_keys_are_0600_and_load_back_to_the_same_identity(tmp_path: Path) -> None:
    ident = create_identity(tmp_path)
    for name in (IDENTITY_FILE, WALLET_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert load_identity(tmp_path) == ident


def test_creating_again_without_force_refuses_and_changes_nothing(tmp_path: Path) -> None:
    create_identity(tmp_path)
    before = (tmp_path / IDENTITY_FILE).read_bytes()
    with pytest.raises(KeyFileError, match="--force"):
        create_identity(tmp_path)
    assert (tmp_path / IDENTITY_FILE).read_bytes() == before
    create_identity(tmp_path, force=True)
    assert (tmp_path / IDENTITY_FILE).read_bytes() != before


def test_a_group_readable_key_is_refused_with_the_fix(tmp_path: Path) -> None:
    create_identity(tmp_path)
    os.chmod(tmp_path / IDENTITY_FILE, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(tmp_path)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b.replace(b"v1", b"v9"),
        lambda b: b[:30] + (b"0" if b[30:31] != b"0" else b"1") + b[31:],
        lambda b: b"",
        lambda b: b"\xff\xfe garbage",
    ],
    ids=["truncated", "version", "flipped-digit", "empty", "binary"],
)
def test_a_truncated_or_corrupt_key_is_refused_with_a_clear_message(tmp_path: Path, mangle) -> None:
    create_identity(tmp_path)
    path = tmp_path / IDENTITY_FILE
    path.write_bytes(mangle(path.read_bytes()))
    with pytest.raises(KeyFileError, match=str(path)):
        load_identity(tmp_path)


def test_a_missing_key_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="steppe init"):
        load_identity(tmp_path)
