"""The node's sense of time. Everything in node/p2p reads wall time through a `Clock`.

Sleeping always goes through trio, so under `trio.testing.MockClock` the simulator controls both: it
passes a `TrioClock`, whose milliseconds advance with trio's clock from a fixed epoch.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class WallClock:
    """The system clock (the default)."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class TrioClock:
    """``epoch_ms`` plus trio's current time: follows `trio.testing.MockClock`. Call only inside trio.run."""

    def __init__(self, epoch_ms: int = 1_800_000_000_000) -> None:
        self.epoch_ms = epoch_ms

    def now_ms(self) -> int:
        return self.epoch_ms + int(trio.current_time() * 1000)
