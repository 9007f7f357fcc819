"""Shared fixtures and factories for the whole suite."""

from __future__ import annotations

import os

# tinygrad reads these at import: one backend and one thread for the whole suite (CI has 2 cores).
os.environ.setdefault("DEV", "CPU:LLVM")
os.environ.setdefault("NUM_CPU_THREADS", "1")

import pytest

from protocol.identity import Identity


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("STEPPE_SKIP_SLOW") == "1":
        skip = pytest.mark.skip(reason="STEPPE_SKIP_SLOW=1")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def alice() -> Identity:
    return Identity.from_int(1)


@pytest.fixture
def bob() -> Identity:
    return Identity.from_int(2)


@pytest.fixture
def carol() -> Identity:
    return Identity.from_int(3)
