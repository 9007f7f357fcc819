"""Layer-range loading reads only that range's bytes: measured as peak RSS in fresh subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from node.inference.maketiny import make_tiny

_PROBE = """
import json, sys
from tinygrad import Tensor
from node.inference.shard import Shard
def hwm():  # this process's own peak (ru_maxrss would include the forking parent's)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
(Tensor.ones(4) + 1).realize()  # tinygrad and its device are up: this is the baseline
base = hwm()
shard = Shard(sys.argv[1], start=int(sys.argv[2]), end=int(sys.argv[3]), max_sessions=1, max_context=16,
              chunk=4, warmup=False)
peak = hwm()
print(json.dumps({"base_kb": base, "peak_kb": peak}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_half_the_layers_needs_at_most_sixty_percent_of_the_memory_of_all(tmp_path):
    # 12 layers x ~12.6 MB of fp32 weights: the weights dwarf the tiny embedding and head.
    make_tiny(tmp_path, layers=12, hidden=512, heads=8, kv_heads=8, vocab=300, intermediate=1536)
    env = {**os.environ, "DEV": os.environ.get("DEV", "CPU:LLVM")}

    def load(start: int, end: int) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, str(tmp_path), str(start), str(end)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        return r["peak_kb"] - r["base_kb"]

    whole, half = load(0, 12), load(0, 6)
    assert whole > 100_000  # the measurement sees the weights at all (> 100 MB)
    assert half <= 0.6 * whole, (half, whole)
