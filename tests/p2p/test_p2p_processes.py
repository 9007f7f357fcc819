"""Real `steppe run` processes on 127.0.0.1: adverts spread, a killed node is forgotten, DHT-only discovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from node.keystore import create_identity

from .p2p_driver import MODEL, free_port

STEPPE = str(Path(sys.executable).parent / "steppe")
TTL_S = 6


class Proc:
    def __init__(self, home: Path, *, bootstrap: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.home = home
        self.peer_id = create_identity(home).peer_id
        self.port, api_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{api_port}"
        self.addr = f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"
        args = [STEPPE, "--log-format", "json", "--log-level", "info", "run", "--home", str(home)]
        args += ["--listen", f"/ip4/127.0.0.1/tcp/{self.port}", "--api", f"127.0.0.1:{api_port}"]
        args += ["--advert-ttl", str(TTL_S), "--republish", "2", *extra]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        self.log = open(home / "node.log", "wb")  # closed in stop()
        self.popen = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    async def status(self, client: httpx.AsyncClient) -> dict | None:
        try:
            reply = await client.get(self.api + "/status", timeout=5)
        except httpx.HTTPError:
            return None
        return reply.json() if reply.status_code == 200 else None

    def stop(self) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return None
        finally:
            self.log.close()


def fake_model(start: int, end: int) -> tuple[str, ...]:
    return ("--fake-model", f"{MODEL.name}:{MODEL.sha256.hex()}:{MODEL.num_layers}:{start}:{end}")


async def diagnosis(procs: list[Proc], client: httpx.AsyncClient) -> str:
    """What each node knows of the others, for a failure message: who is stuck where."""
    lines = []
    for i, p in enumerate(procs):
        st = await p.status(client)
        if st is None:
            lines.append(f"n{i} {p.peer_id[-6:]}: no status")
            continue
        short = sorted(x[-6:] for x in st["peers"])
        seen = sorted(a["peer_id"][-6:] for a in st["adverts"])
        mesh = sorted(x[-6:] for x in st["gossip"]["mesh"])
        scores = {k[-6:]: v for k, v in st["gossip"]["scores"].items()}
        lines.append(
            f"n{i} {p.peer_id[-6:]}: connected {short} adverts {seen} mesh {mesh} scores {scores} "
            f"rejected {st['rejected']} by {st['rejected_by_sender']} pruned {st['gossip']['pruned']}"
        )
        p.log.flush()
        tail = (p.home / "node.log").read_bytes()[-1500:].decode(errors="replace")
        lines.append("   log: " + tail.replace("\n", "\n   log: "))
    return "\n".join(lines)


def each_sees_the_others(seen: list[set[str] | None], ids: list[str]) -> bool:
    """Every node's view (from `views`) holds the adverts of all the others."""
    return all(v == set(ids) - {pid} for v, pid in zip(seen, ids, strict=True))


async def views(procs: list[Proc], client: httpx.AsyncClient) -> list[set[str] | None]:
    out = []
    for p in procs:
        st = await p.status(client)
        out.append(None if st is None else {a["peer_id"] for a in st["adverts"]})
    return out


@pytest.mark.slow  # ~25 s alone, up to a minute on a busy 2-core machine
@pytest.mark.skipif(not os.path.exists(STEPPE), reason="the steppe console script is not installed")
async def test_five_processes_see_each_other_forget_a_killed_one_and_a_late_one_uses_the_dht(
    tmp_path: Path,
) -> None:
    procs: list[Proc] = []
    try:
        boot = Proc(tmp_path / "n0")
        procs.append(boot)
        ranges = [(0, 8), (0, 8), (8, 16), (4, 12)]
        for i, (start, end) in enumerate(ranges, start=1):
            procs.append(Proc(tmp_path / f"n{i}", bootstrap=boot.addr, extra=fake_model(start, end)))
        ids = [p.peer_id for p in procs]
        async with httpx.AsyncClient() as client:
            with trio.fail_after(60):  # process start-up (imports) on a loaded machine
                while None in await views(procs, client):
                    await trio.sleep(0.3)
            start = time.monotonic()
            seen: list = []
            with trio.move_on_after(15):
                while True:
                    seen = await views(procs, client)
                    if each_sees_the_others(seen, ids):
                        break
                    await trio.sleep(0.3)
            spread_s = time.monotonic() - start
            if spread_s >= 15:
                pytest.fail(
                    f"views after 15 s: {[sorted(v or ()) for v in seen]} of {ids}\n"
                    + await diagnosis(procs, client)
                )

            # SIGKILL a provider: no goodbye; its advert must leave every view once its TTL runs out.
            victim = procs.pop(2)
            victim.popen.kill()
            victim.popen.wait()
            victim.log.close()
            with trio.fail_after(TTL_S + 12):
                while any(v is None or victim.peer_id in v for v in await views(procs, client)):
                    await trio.sleep(0.3)

            # A late node that never joins the gossip topic finds block 0's providers through the DHT.
            late = Proc(tmp_path / "late", bootstrap=boot.addr, extra=("--no-gossip",))
            procs.append(late)
            want = {ids[1]}  # n1 serves 0:8 (n2, also 0:8, was killed); n4 serves 4:12 -> blocks 0 and 1
            want.add(ids[4])
            with trio.fail_after(60):
                while True:
                    try:
                        reply = await client.get(
                            f"{late.api}/providers",
                            params={"model": MODEL.sha256.hex(), "block": "0"},
                            timeout=30,
                        )
                        if reply.status_code == 200 and set(reply.json()["providers"]) == want:
                            break
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.5)
            late_status = await late.status(client)
            assert late_status is not None and not late_status["gossip"]["enabled"]
            assert {a["peer_id"] for a in late_status["adverts"]} >= want

            # `steppe status` renders what the API serves.
            out = await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    [STEPPE, "status", "--api", boot.api], capture_output=True, text=True, timeout=30
                )
            )
            assert out.returncode == 0 and ids[1] in out.stdout and "rejected" in out.stdout
        codes = [p.stop() for p in procs]
        assert codes == [0] * len(procs), codes
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.kill()
                p.popen.wait()


@pytest.mark.slow  # ~20 s
@pytest.mark.skipif(not os.path.exists(STEPPE), reason="the steppe console script is not installed")
async def test_a_node_stalled_past_the_advert_ttl_blames_no_relay_and_catches_up(tmp_path: Path) -> None:
    """Adverts queued while a node was frozen (SIGSTOP) expire before it reads them: late, not invalid.

    Counting them invalid once scored the bootstrap relay down to a prune, leaving the node deaf and mute."""
    procs: list[Proc] = []
    try:
        boot = Proc(tmp_path / "n0")
        procs.append(boot)
        for i, (start, end) in enumerate([(0, 8), (8, 16)], start=1):
            procs.append(Proc(tmp_path / f"n{i}", bootstrap=boot.addr, extra=fake_model(start, end)))
        ids = [p.peer_id for p in procs]

        async def all_see_all(client: httpx.AsyncClient) -> bool:
            return each_sees_the_others(await views(procs, client), ids)

        async with httpx.AsyncClient() as client:
            with trio.fail_after(75):
                while not await all_see_all(client):
                    await trio.sleep(0.3)
            frozen = procs[1]
            frozen.popen.send_signal(signal.SIGSTOP)
            try:
                await trio.sleep(TTL_S + 3)  # the others republish every 2 s meanwhile
            finally:
                frozen.popen.send_signal(signal.SIGCONT)
            with trio.move_on_after(20) as waited:
                while not await all_see_all(client):
                    await trio.sleep(0.3)
            if waited.cancelled_caught:
                pytest.fail("no recovery 20 s after the stall\n" + await diagnosis(procs, client))
            st = await frozen.status(client)
            assert st is not None
            assert st["rejected"].get("late", 0) >= 1, st["rejected"]  # it did read expired copies...
            assert st["rejected"].get("invalid", 0) == 0 and st["rejected_by_sender"] == {}, (
                st
            )  # ...blaming none
            assert all(score >= 0 for score in st["gossip"]["scores"].values()), st["gossip"]
        codes = [p.stop() for p in procs]
        assert codes == [0] * len(procs), codes
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGCONT)
                p.popen.kill()
