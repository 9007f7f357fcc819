"""Chains for the ledger tests: the embedded py-evm chain, anvil (a real EVM node from npm) and our own
JSON-RPC server, all behind the same `Ledger` interface and funded with the same dev accounts."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from node.ledger.abc import Ledger
from node.ledger.channels import deploy
from node.ledger.embedded import DEV_BALANCE, EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger

ROOT = Path(__file__).resolve().parents[2]
NPM = ROOT / "tools" / "npm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_rpc(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the JSON-RPC node exited with {proc.returncode}")
        try:
            httpx.post(
                url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1
            )
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"no JSON-RPC answer from {url} within {timeout} s")


def anvil_command() -> list[str]:
    """How to start anvil from the pinned npm package; skips the test when Node or the package is absent."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js/npm are not installed: anvil (npm @foundry-rs/anvil) is unavailable")
    launcher = NPM / "node_modules" / ".bin" / "anvil"
    if not launcher.exists():
        pytest.skip("tools/npm is not installed: run scripts/bootstrap (npm ci in tools/npm)")
    return [str(launcher)]


def stop(proc: subprocess.Popen) -> None:
    """Stop a node started in its own session, with anything it spawned (the npm launcher runs a child)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [*anvil_command(), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "31337", "--silent"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_rpc(url, proc)
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def served_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`steppe chain serve` in its own process over a fresh home directory."""
    home = tmp_path_factory.mktemp("chain-home")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from node.cli import main; main()",
            "--log-format",
            "json",
            "chain",
            "serve",
            "--home",
            str(home),
            "--port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_rpc(url, proc)
        yield url
    finally:
        stop(proc)


def rpc_ledger(url: str) -> Ledger:
    from node.ledger.rpc import RpcLedger

    ledger = RpcLedger(url)
    for i in range(4):  # anvil funds its own accounts: give ours the same balance as on the embedded chain
        ledger.w3.provider.make_request(
            "anvil_setBalance", [Account.from_key(dev_key(i)).address, hex(DEV_BALANCE)]
        )
    return ledger


@pytest.fixture(params=["embedded", "anvil", "served"])
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    if request.param == "embedded":
        chain_ledger: Ledger = EmbeddedLedger(EmbeddedChain(None))
    elif request.param == "anvil":
        chain_ledger = rpc_ledger(request.getfixturevalue("anvil_url"))
    else:
        from node.ledger.rpc import RpcLedger

        chain_ledger = RpcLedger(request.getfixturevalue("served_url"))
    yield chain_ledger
    chain_ledger.close()


@pytest.fixture
def contract(ledger: Ledger) -> str:
    address, _ = deploy(ledger, dev_key(0))
    return address


@pytest.fixture(scope="module")
def embedded() -> Iterator[tuple[EmbeddedLedger, str]]:
    """One embedded chain with the contract deployed, shared by a module (fast tests that don't move time)."""
    chain_ledger = EmbeddedLedger(EmbeddedChain(None))
    address, _ = deploy(chain_ledger, dev_key(0))
    yield chain_ledger, address
    chain_ledger.close()
