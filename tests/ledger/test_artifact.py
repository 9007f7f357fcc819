"""The committed build is what the pinned compiler makes of the committed source."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from node.ledger.artifact import CONTRACTS_DIR, load_artifact

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("PaymentChannels", "RefusingPayer")


@pytest.mark.parametrize("name", NAMES)
def test_the_artifact_names_the_source_it_was_built_from(name: str) -> None:
    source = (CONTRACTS_DIR / f"{name}.sol").read_bytes()
    artifact = json.loads((CONTRACTS_DIR / f"{name}.json").read_text())
    assert artifact["sourceSha256"] == hashlib.sha256(source).hexdigest(), (
        "source changed: run node contracts/compile.mjs"
    )
    pinned = json.loads((ROOT / "tools" / "npm" / "package.json").read_text())["dependencies"]["solc"]
    assert artifact["compiler"]["version"].startswith(pinned + "+")
    assert artifact["compiler"]["evmVersion"] == "prague"  # py-evm 0.12's newest fork


def test_recompiling_with_the_pinned_solc_gives_identical_bytes() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: cannot run the pinned solc (npm) to recompile")
    if not (ROOT / "tools" / "npm" / "node_modules" / "solc").exists():
        pytest.skip("tools/npm is not installed: run scripts/bootstrap (npm ci in tools/npm)")
    fresh = json.loads(
        subprocess.run(
            ["node", str(CONTRACTS_DIR / "compile.mjs"), "--stdout"],
            check=True,
            capture_output=True,
            timeout=120,
        ).stdout
    )
    for name in NAMES:
        committed = json.loads((CONTRACTS_DIR / f"{name}.json").read_text())
        assert fresh[name] == committed, f"{name}.json is stale: run node contracts/compile.mjs"
    assert load_artifact().bytecode == bytes.fromhex(fresh["PaymentChannels"]["bytecode"][2:])
