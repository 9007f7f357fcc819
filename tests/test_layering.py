"""The dependency direction protocol <- node <- sim, enforced on the import statements themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each layer must never import (top-level module names).
FORBIDDEN = {
    "protocol": {
        "trio",
        "libp2p",
        "tinygrad",
        "eth",
        "evm",
        "web3",
        "hypercorn",
        "httpx",
        "socket",
        "threading",
        "node",
        "sim",
        "torch",
        "transformers",
        "sqlite3",
        "subprocess",
        "asyncio",
    },
    "node": {"sim"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for item in ast.walk(tree):
        if isinstance(item, ast.Import):
            names.update(alias.name.split(".")[0] for alias in item.names)
        elif isinstance(item, ast.ImportFrom) and item.level == 0 and item.module:
            names.add(item.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[layer])
        for path in (ROOT / layer).rglob("*.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{layer}/ must not import these: {offenders}"


def test_the_checker_would_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import trio\nfrom node.app import x\nfrom . import fine\n")
    assert _imports(bad) == {"trio", "node"}
