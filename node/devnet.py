"""A devnet: real `steppe run` processes on loopback serving a model's layers, plus a gateway API.

Used by `steppe devnet`, `steppe demo` and the integration tests. Each node is its own process with its own
home (keys made here), listening on 127.0.0.1; the first node is everyone's bootstrap peer. The gateway
holds the model's tokenizer, no layers, and serves the OpenAI-compatible API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.keystore import create_identity, load_identity
from node.logging import get_logger
from protocol.errors import SteppeError

log = get_logger("steppe.devnet")


class DevnetError(SteppeError):
    """The devnet could not start (a node exited, or the network did not come together in time)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_layers(num_layers: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``[0, num_layers)`` as evenly as possible."""
    if not 1 <= parts <= num_layers:
        raise DevnetError(f"cannot split {num_layers} layers over {parts} nodes")
    bounds = [num_layers * k // parts for k in range(parts + 1)]
    return list(zip(bounds, bounds[1:], strict=False))


def steppe_command() -> list[str]:
    """How to start `steppe` in a child process: the console script next to this interpreter if present."""
    script = Path(sys.executable).parent / "steppe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "node"]


@dataclass
class DevNode:
    name: str
    home: Path
    port: int
    layers: tuple[int, int] | None
    proc: subprocess.Popen | None = None
    peer_id: str = ""
    log_path: Path | None = None
    api_port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"


@dataclass
class Chain:
    """The devnet's shared chain: a `steppe chain serve` process, the deployed contract, the funding."""

    home: Path
    port: int
    proc: subprocess.Popen | None = None
    contract: str = ""
    chain_id: int = 0
    funded: dict[str, int] = field(default_factory=dict)  # address -> wei sent at start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ledger(self):
        from node.ledger.rpc import RpcLedger

        return RpcLedger(self.url)

    def start(self, addresses: list[str], fund_wei: int, timeout_s: float = 60.0) -> None:
        """Serve, deploy the contract and fund ``addresses`` from a dev account. Raises `DevnetError`."""
        from node.ledger.channels import deploy
        from node.ledger.embedded import dev_key

        self.home.mkdir(parents=True, exist_ok=True)
        args = [*steppe_command(), "chain", "serve", "--home", str(self.home), "--port", str(self.port)]
        with open(self.home / "chain.log", "ab") as logf:
            self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise DevnetError(
                    f"the chain exited with {self.proc.returncode}; see {self.home / 'chain.log'}"
                )
            try:
                httpx.post(
                    self.url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                    timeout=2,
                )
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise DevnetError("the chain did not answer JSON-RPC in time") from None
                time.sleep(0.2)
        ledger = self.ledger()
        try:
            self.chain_id = ledger.chain_id
            self.contract, _ = deploy(ledger, dev_key(0))
            for address in addresses:
                ledger.transact(dev_key(0), address, value=fund_wei, gas=21_000)
                self.funded[address] = fund_wei
        finally:
            ledger.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Devnet:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    model: Path
    nodes: int = 3
    base_port: int | None = None
    root: Path | None = None
    layer_split: Sequence[tuple[int, int]] | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    members: list[DevNode] = field(default_factory=list)
    gateway: DevNode | None = None
    api_url: str = ""
    #: With a price, a shared chain (`steppe chain serve`) runs too; every node charges and pays.
    price: int = 0
    fund_wei: int = 10**18
    chain: Chain | None = None

    def __enter__(self) -> Devnet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.stop_chain()

    def _layout(self) -> None:
        from node.inference.config import ModelConfig

        num_layers = ModelConfig.load(self.model).num_layers
        ranges = list(self.layer_split or split_layers(num_layers, self.nodes))
        self.root = self.root or Path(tempfile.mkdtemp(prefix="steppe-devnet-"))
        port = self.base_port
        for i, rng in enumerate([*ranges, None]):
            name = f"node{i}" if rng is not None else "gateway"
            home = self.root / name
            if not (home / "identity.key").exists():
                create_identity(home)
            p, api = (port + 2 * i, port + 2 * i + 1) if port else (free_port(), free_port())
            node = DevNode(name, home, p, rng, peer_id=load_identity(home).peer_id, api_port=api)
            if rng is None:
                self.gateway = node
            else:
                self.members.append(node)

    def spawn(self, node: DevNode, *, bootstrap: str | None) -> None:
        args = [
            *steppe_command(),
            "--log-format",
            "json",
            "run",
            "--home",
            str(node.home),
            "--listen",
            f"/ip4/127.0.0.1/tcp/{node.port}",
            "--model",
            str(self.model),
        ]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        if node.layers is not None:
            args += ["--layers", f"{node.layers[0]}:{node.layers[1]}"]
        if self.chain is not None:
            args += [
                "--chain-rpc",
                self.chain.url,
                "--contract",
                self.chain.contract,
                "--price",
                str(self.price),
            ]
        args += ["--api", f"127.0.0.1:{node.api_port}"]
        args += self.extra_args.get(node.name, [])
        node.log_path = node.home / "node.log"
        env = {**os.environ, **self.env}
        with open(node.log_path, "ab") as logf:
            node.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        log.debug(
            "devnet_node_started", node=node.name, peer_id=node.peer_id, layers=node.layers, pid=node.proc.pid
        )

    def start(self, timeout_s: float = 180.0) -> None:
        """Start every node and wait until the gateway routes over all layers. Raises `DevnetError`."""
        self._layout()
        assert self.gateway is not None
        self.api_url = self.gateway.api_url
        if self.price:
            assert self.root is not None
            self.chain = Chain(self.root / "chain", free_port())
            try:
                self.chain.start([self.address(n) for n in [*self.members, self.gateway]], self.fund_wei)
            except BaseException:
                self.chain.stop()
                raise
        boot = self.members[0].addr
        for i, node in enumerate(self.members):
            self.spawn(node, bootstrap=None if i == 0 else boot)
        self.spawn(self.gateway, bootstrap=boot)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            self.stop_chain()
            raise

    def wait_ready(self, timeout_s: float, serving: int | None = None) -> None:
        """Until the gateway's view holds adverts of ``serving`` nodes (default: all members)."""
        want = len(self.members) if serving is None else serving
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for node in [*self.members, self.gateway]:
                if node is not None and node.proc is not None and node.proc.poll() is not None:
                    raise DevnetError(f"{node.name} exited with {node.proc.returncode}; see {node.log_path}")
            try:
                status = httpx.get(self.api_url + "/status", timeout=5).json()
                seen = sum(1 for a in status["adverts"] if a.get("model") and a["layers"][1] > a["layers"][0])
                if seen >= want:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise DevnetError(f"the gateway saw {seen} of {want} serving nodes after {timeout_s:.0f} s")

    def stream_completion(self, body: dict, timeout_s: float = 120.0) -> Iterator[tuple[str, dict]]:
        """POST a streaming ``/v1/completions`` to the gateway; yield ``(text so far, stats so far)`` per
        event (stats: the ``steppe`` part of the final usage chunk). Raises `DevnetError` on an error event."""
        text, stats = "", {}
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", self.api_url + "/v1/completions", json=body, timeout=timeout_s) as reply:
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    raise DevnetError(f"the gateway answered an error: {event['error']}")
                text += "".join(choice["text"] for choice in event["choices"])
                stats = event.get("steppe", stats)
                yield text, stats

    def wait_serving(self, node: DevNode, timeout_s: float = 120.0) -> None:
        """Until ``node`` itself reports its shard loaded and served. Raises `DevnetError`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise DevnetError(f"{node.name} exited with {node.proc.returncode}; see {node.log_path}")
            try:
                if "serving" in self.status(node).get("model", {}):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise DevnetError(f"{node.name} did not start serving within {timeout_s:.0f} s")

    @staticmethod
    def address(node: DevNode) -> str:
        return load_identity(node.home).evm_address

    def status(self, node: DevNode) -> dict:
        """The node's ``/status`` JSON. Raises `httpx.HTTPError`."""
        return httpx.get(node.api_url + "/status", timeout=10).json()

    def kill(self, node: DevNode, sig: int = signal.SIGKILL) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(sig)
            node.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM everyone (graceful), SIGKILL whoever is still up after ``timeout_s``."""
        procs = [n.proc for n in [*self.members, self.gateway] if n is not None and n.proc is not None]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_chain(self) -> None:
        """Stop the chain too (after `stop`: nodes settle on the chain while they shut down)."""
        if self.chain is not None:
            self.chain.stop()
