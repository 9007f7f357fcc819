"""Graceful shutdown of a serving node: SIGTERM lets the open session finish, refuses new ones, exits 0."""

from __future__ import annotations

import signal

import httpx
import pytest

from node.devnet import Devnet
from node.inference.maketiny import make_tiny

pytestmark = pytest.mark.slow
PROMPT = "the steppe is wide and the wind"


def test_sigterm_lets_the_open_session_finish_then_refuses_new_ones_and_exits_zero(tmp_path) -> None:
    model = tmp_path / "tiny-stop"
    make_tiny(model, arch="llama", layers=3, hidden=64, heads=4, kv_heads=2, vocab=384, seed=4)
    with Devnet(model=model, nodes=3, root=tmp_path / "net") as net:
        middle = net.members[1]
        body = {"model": "tiny-stop", "prompt": PROMPT, "max_tokens": 40, "temperature": 0}
        reference = httpx.post(net.api_url + "/v1/completions", json=body, timeout=120).json()
        stopped = False
        for text, stats in net.stream_completion(body):  # noqa: B007 - the last values are checked below
            if not stopped and len(text) > 3:
                middle.proc.send_signal(signal.SIGTERM)
                stopped = True
        # The session it was serving ran to the end on it: no failover was needed.
        assert text == reference["choices"][0]["text"]
        assert stats["failovers"] == 0
        assert middle.proc.wait(timeout=60) == 0
        log = middle.log_path.read_text()
        assert "node_stopping" in log and "node_stopped" in log
        # With its layers gone, the network says so clearly.
        after = httpx.post(net.api_url + "/v1/completions", json=body, timeout=120)
        assert (
            after.status_code in (502, 503) and "no route for layers 1:2" in after.json()["error"]["message"]
        )
