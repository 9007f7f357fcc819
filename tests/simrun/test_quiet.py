"""`sim.quiet.without_log_calls`: a quiet run's libp2p builds no log messages, and behaves the same."""

from __future__ import annotations

import contextlib
import dis
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from libp2p.stream_muxer.yamux.yamux import Yamux

import sim.runner
from sim.quiet import without_log_calls
from sim.report import metrics_bytes
from sim.runner import run_scenario
from sim.scenario import parse_scenario

from .test_runs import tiny

SOURCE = """
import logging
logger = logging.getLogger("quietprobe")
formatted = []

class Loud:
    def __repr__(self):
        formatted.append(1)
        return "loud"

def plain(x):
    logger.debug(f"plain {Loud()} {x}")
    return x + 1

def only_logs():
    logger.info(f"{Loud()}")

def errors_stay():
    logger.error("%s", Loud())
    return "kept"

class Base:
    def who(self):
        return "base"

class Child(Base):
    def who(self):
        logger.warning(f"{Loud()}")
        return "child of " + super().who()

    @staticmethod
    def static():
        logger.debug(f"{Loud()}")
        return "static"

    @property
    def prop(self):
        logger.debug(f"{Loud()}")
        return "prop"

def outer(y):
    def inner():
        logger.debug(f"{Loud()}")
        return y * 2
    return inner()

async def coro():
    if True:
        logger.debug(f"{Loud()}")
    return "awaited"
"""


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[object]:
    path = tmp_path / "quietprobe_mod.py"
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location("libp2pquietprobe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["libp2pquietprobe"] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        del sys.modules["libp2pquietprobe"]


def _calls(mod) -> list[object]:  # type: ignore[no-untyped-def]
    return [
        mod.plain(1),
        mod.only_logs(),
        mod.Child().who(),
        mod.Child.static(),
        mod.Child().prop,
        mod.outer(4),
        trio.run(mod.coro),
    ]


def test_log_statements_are_dropped_inside_and_restored_after(probe) -> None:  # type: ignore[no-untyped-def]
    expected = [2, None, "child of base", "static", "prop", 8, "awaited"]
    with without_log_calls("libp2pquietprobe") as changed:
        assert changed == 7  # plain, only_logs, who, static, the getter, outer (for inner), coro
        assert _calls(probe) == expected
        assert probe.formatted == []  # no message was built
        assert probe.errors_stay() == "kept" and probe.formatted  # the error level is not dropped
    probe.formatted.clear()
    assert _calls(probe) == expected
    assert len(probe.formatted) == 7  # every statement is back


def test_libp2p_hot_paths_lose_their_debug_calls_for_the_run_only() -> None:
    def debug_calls() -> int:
        return sum(1 for i in dis.get_instructions(Yamux.read_stream) if i.argval == "debug")

    assert debug_calls() > 0
    with without_log_calls("libp2p") as changed:
        assert changed > 100
        assert debug_calls() == 0
    assert debug_calls() > 0


def test_a_run_without_the_log_calls_is_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sc = parse_scenario(tiny(duration_s=20))
    stripped = run_scenario(sc, 5, workdir=tmp_path / "a")

    @contextlib.contextmanager
    def keep_them(prefix: str = "libp2p") -> Iterator[int]:
        yield 0

    monkeypatch.setattr(sim.runner, "without_log_calls", keep_them)
    kept = run_scenario(sc, 5, workdir=tmp_path / "b")
    assert metrics_bytes(stripped.metrics) == metrics_bytes(kept.metrics)
    assert stripped.metrics["network"]["events"]["send"] > 0
