"""`/metrics`: the Prometheus text format, checked with the reference parser, on a real two-node swarm."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import trio

from node.metrics import Family, Histogram, render
from node.serving import ServingStats
from protocol.advert import AdvertBody, ModelRef

from .ops_driver import open_ops_node, wait_for

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is the reference parser")

MODEL = ModelRef(name="tiny-llama", sha256=bytes(range(32)), num_layers=16)


def parse(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in parser.text_string_to_metric_families(text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    for samples in families.values():
        for s in samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((sample, labels))


def test_a_histogram_renders_cumulative_buckets_that_the_reference_parser_reads_back() -> None:
    hist = Histogram((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 3.0):
        hist.observe(seconds)
    fams = parse(render([hist.family("steppe_step_seconds", "Step time.")]))
    buckets = {s.labels["le"]: s.value for s in fams["steppe_step_seconds"] if s.name.endswith("_bucket")}
    # le is inclusive: 0.01 falls in the 0.01 bucket.
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}
    assert value(fams, "steppe_step_seconds_count") == 5
    assert value(fams, "steppe_step_seconds_sum") == pytest.approx(3.565)


def test_label_values_with_quotes_backslashes_and_newlines_survive_the_round_trip() -> None:
    nasty = 'a"b\\c\nd'
    fams = parse(
        render([Family("steppe_x_total", "counter", "Help with \\ and\nnewline.").add(3, reason=nasty)])
    )
    assert value(fams, "steppe_x_total", reason=nasty) == 3


async def test_metrics_of_a_live_swarm_count_peers_adverts_rejections_and_serving() -> None:
    stats = ServingStats(sessions_opened=4, sessions_active=1, steps=40, tokens_served=55, compute_s=0.25)
    stats.refused.update(Counter(busy=2))
    body = AdvertBody(addrs=(), model=MODEL, layer_start=0, layer_end=8)
    async with open_ops_node(1, serving=stats) as alice:
        boot = (alice.node.p2p.addrs()[0],)
        async with open_ops_node(2, bootstrap=boot, advert_body=body):
            await wait_for(lambda: len(alice.node.p2p.view.adverts(alice.node.p2p.clock.now_ms())) == 1, 15)
            alice.node.p2p.view.rejected["stale"] += 2  # as if two replays had arrived
            alice.metrics.observe_step(0.003)
            async with httpx.AsyncClient() as http:
                reply = await http.get(alice.url + "/metrics")
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
            fams = parse(reply.text)
    assert value(fams, "steppe_peers_connected") == 1
    assert value(fams, "steppe_adverts_in_view") == 1
    assert value(fams, "steppe_adverts_accepted_total") >= 1
    assert value(fams, "steppe_adverts_rejected_total", reason="stale") == 2
    assert value(fams, "steppe_tokens_served_total") == 55
    assert value(fams, "steppe_sessions_opened_total") == 4
    assert value(fams, "steppe_sessions_active") == 1
    assert value(fams, "steppe_sessions_refused_total", reason="busy") == 2
    assert value(fams, "steppe_steps_total") == 40
    assert value(fams, "steppe_step_seconds_count") == 1
    assert value(fams, "steppe_step_seconds_bucket", le="0.005") == 1
    assert value(fams, "steppe_voucher_wei_total") == 0
    assert value(fams, "steppe_info", peer_id=alice.node.peer_id) == 1
    assert "payments are off" in reply.text  # the payment series say why they read 0


async def test_the_json_routes_still_answer_behind_the_mounts_and_post_to_metrics_is_refused() -> None:
    async with open_ops_node(3) as carol:
        async with httpx.AsyncClient() as http:
            status = (await http.get(carol.url + "/status")).json()
            post = await http.post(carol.url + "/metrics", content=b"x")
            missing = await http.get(carol.url + "/nope")
        await trio.sleep(0)
    assert status["peer_id"] == carol.node.peer_id
    assert status["identity"]["evm_address"] == carol.node.identity.evm_address
    assert "model" not in status and "payments" not in status  # the page shows "—" for these
    assert post.status_code == 405
    assert missing.status_code == 404


async def test_a_prefix_mount_takes_every_path_under_it_and_leaves_the_rest_to_the_api() -> None:
    from node.status_page import with_mounts

    seen: list[str] = []

    async def app(name: str, scope: dict, receive, send) -> None:
        seen.append(name + " " + scope["path"])

    router = with_mounts(
        lambda *a: app("api", *a), {"/": lambda *a: app("page", *a), "/v1/": lambda *a: app("openai", *a)}
    )
    for path in ("/", "/v1/models", "/v1/chat/completions", "/status", "/v1"):
        await router({"type": "http", "path": path}, None, None)
    assert seen == ["page /", "openai /v1/models", "openai /v1/chat/completions", "api /status", "api /v1"]
