"""The committed build of ``contracts/PaymentChannels.sol``: ABI, bytecode and selectors. No compiler needed."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

#: The committed build lives in the repository's ``contracts/``; an installed copy (the Docker image) says
#: where it put that folder with STEPPE_CONTRACTS_DIR.
CONTRACTS_DIR = Path(
    os.environ.get("STEPPE_CONTRACTS_DIR") or Path(__file__).resolve().parents[2] / "contracts"
)


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


@dataclass(frozen=True)
class Artifact:
    abi: list[dict[str, Any]]
    bytecode: bytes
    deployed_bytecode: bytes
    compiler_version: str
    source_sha256: str

    def selector(self, name: str) -> bytes:
        return self.functions[name][0]

    @functools.cached_property
    def functions(self) -> dict[str, tuple[bytes, list[str], list[str]]]:
        """name -> (4-byte selector, input types, output types)."""
        out = {}
        for item in self.abi:
            if item["type"] == "function":
                out[item["name"]] = (
                    keccak(_signature(item).encode())[:4],
                    [i["type"] for i in item["inputs"]],
                    [o["type"] for o in item["outputs"]],
                )
        return out

    @functools.cached_property
    def errors(self) -> dict[bytes, str]:
        """4-byte custom-error selector -> error name."""
        return {keccak(_signature(i).encode())[:4]: i["name"] for i in self.abi if i["type"] == "error"}

    @functools.cached_property
    def events(self) -> dict[bytes, dict[str, Any]]:
        """topic0 -> event ABI."""
        return {keccak(_signature(i).encode()): i for i in self.abi if i["type"] == "event"}


@functools.cache
def load_artifact(name: str = "PaymentChannels") -> Artifact:
    """The committed build of ``contracts/<name>.sol``."""
    raw = json.loads((CONTRACTS_DIR / f"{name}.json").read_text())
    return Artifact(
        abi=raw["abi"],
        bytecode=bytes.fromhex(raw["bytecode"].removeprefix("0x")),
        deployed_bytecode=bytes.fromhex(raw["deployedBytecode"].removeprefix("0x")),
        compiler_version=raw["compiler"]["version"],
        source_sha256=raw["sourceSha256"],
    )


def revert_name(data: bytes) -> str | None:
    """The contract's custom error name for revert ``data`` (or ``Error``/``Panic``), None if unknown."""
    if len(data) < 4:
        return None
    if data[:4] == bytes.fromhex("08c379a0"):
        return "Error"
    if data[:4] == bytes.fromhex("4e487b71"):
        return "Panic"
    return load_artifact().errors.get(bytes(data[:4]))
