"""Whole runs: real nodes on the simulated network with the cost model, through the CLI and the runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from sim.report import metrics_bytes
from sim.runner import run_scenario
from sim.scenario import parse_scenario

SMOKE = Path(__file__).resolve().parents[2] / "sim" / "scenarios" / "smoke.toml"


def tiny(**extra) -> dict:
    """Six nodes, a short paid workload: the smallest run that exercises every part."""
    raw = {
        "name": "tiny",
        "duration_s": 30,
        "warmup_s": 10,
        "model": {"layers": 2},
        "nodes": {
            "relays": 1,
            "bootstrap": 1,
            "target_peers": 4,
            "republish_s": 8,
            "start_spread_s": 2,
            "providers": [{"count": 2, "layers": "0:1"}, {"count": 1, "layers": "1:2"}],
            "gateways": [{"count": 1}],
        },
        "payments": {"enabled": True},
        "workload": {"generations_per_s": 0.5, "timeout_s": 10, "max_new_tokens": 4},
        "dht": {"lookups_per_s": 0.5},
    }
    raw.update(extra)
    return raw


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    result = CliRunner().invoke(app, ["sim", "run", str(SMOKE), "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "virtual/wall" in result.output
    return out


def test_the_smoke_scenario_writes_metrics_a_report_and_plots(smoke: Path) -> None:
    for name in (
        "metrics.json",
        "report.md",
        "propagation_cdf.png",
        "generations_over_time.png",
        "dht_hops.png",
    ):
        assert (smoke / name).stat().st_size > 0, name
    assert (smoke / "propagation_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (smoke / "report.md").read_text()
    assert "cost model" in report and "virtual/wall ratio" in report
    assert "| `advert_propagation.time_to_99pct_p99_s` | <= 1.5 |" in report
    assert "wall" not in (smoke / "metrics.json").read_text()


def test_the_smoke_swarm_gossips_generates_and_pays(smoke: Path) -> None:
    m = json.loads((smoke / "metrics.json").read_text())
    prop = m["advert_propagation"]
    assert prop["adverts_measured"] > 10 and prop["delivery_ratio"] >= 0.99
    assert 0.03 <= prop["time_to_99pct_p50_s"] <= 1.5  # at least one 50 - 20 ms link, a few hops at most
    assert m["duplicate_amplification"]["copies_per_delivered_advert"] > 1
    honest = m["generations"]["honest"]
    assert honest["started"] >= 3 and honest["completed"] == honest["started"]
    # The cost model gives every generation a reference answer; only the liar can make one differ.
    assert honest["correct"] == honest["completed"] - m["adversaries"]["wrong_generations_returned"] > 0
    assert m["dht"]["lookups"] > 0 and m["dht"]["success_ratio"] == 1.0
    assert m["tokens_served"]["by_honest_providers"] > 0
    pay = m["payments"]
    assert pay["conserved"] and pay["per_channel_conserved"] and pay["contract_balance_wei"] == 0
    assert pay["paid_on_chain_wei"] == pay["earned_off_chain_wei"] > 0


def test_the_free_rider_is_cut_off_within_its_credit_and_the_liar_is_caught(smoke: Path) -> None:
    m = json.loads((smoke / "metrics.json").read_text())
    pay, adv = m["payments"], m["adversaries"]
    assert pay["free_rider_channels"] >= 1
    assert pay["free_riders_cut_off_within_credit"]
    assert 0 < pay["free_rider_max_unpaid_wei"] <= pay["free_rider_credit_bound_wei"]
    assert adv["free_rider_generations_completed"] == 0 and adv["payment_refusals"] >= 1
    # Spot checks catch the liar (and ban it), but steps it answered unchecked before that stay wrong.
    assert adv["liar_nodes"] == 1 and adv["liars_caught_by_spot_checks"] >= 1


def test_two_runs_with_one_seed_write_the_same_metrics_and_another_seed_differs(tmp_path: Path) -> None:
    sc = parse_scenario(tiny())
    first = run_scenario(sc, 3, workdir=tmp_path / "a")
    second = run_scenario(sc, 3, workdir=tmp_path / "b")
    assert metrics_bytes(first.metrics) == metrics_bytes(second.metrics)
    assert first.metrics["generations"]["honest"]["completed"] > 0
    other = run_scenario(sc, 4, workdir=tmp_path / "c")
    assert metrics_bytes(other.metrics) != metrics_bytes(first.metrics)


def test_the_real_tinygrad_backend_serves_the_reference_chain_token_for_token(tmp_path: Path) -> None:
    raw = tiny(duration_s=25)
    raw["model"] = {"backend": "tinygrad", "layers": 2, "hidden": 32, "vocab": 300}
    result = run_scenario(parse_scenario(raw), 2, workdir=tmp_path)
    honest = result.metrics["generations"]["honest"]
    assert honest["started"] >= 2 and honest["completed"] == honest["started"]
    # The oracle is the same real shards run inline as one honest chain, not the cost model's hash.
    assert honest["correct"] == honest["completed"]
    assert result.metrics["tokens_served"]["by_honest_providers"] >= 4 * honest["completed"]


def test_forged_replayed_and_garbage_adverts_are_rejected_and_counted(tmp_path: Path) -> None:
    raw = tiny(
        duration_s=35,
        adversaries={
            "forgers": 1,
            "forge_per_s": 2,
            "flooders": 1,
            "flood_per_s": 5,
            "replayers": 1,
            "replay_per_s": 2,
            "eclipse_attackers": 2,
        },
    )
    raw["nodes"]["relays"] = 3
    raw["workload"]["generations_per_s"] = 0.0
    m = run_scenario(parse_scenario(raw), 5, workdir=tmp_path).metrics
    adv, rejected = m["adversaries"], m["honest_rejections"]
    assert adv["forged_adverts_sent"] > 5 and adv["forged_adverts_accepted"] == 0
    assert adv["replayed_adverts_sent"] > 5 and adv["replayed_adverts_accepted"] == 0
    assert adv["garbage_messages_sent"] > 20
    assert rejected.get("invalid", 0) >= 1 and rejected.get("malformed", 0) >= 1
    assert adv.get("bans_of_flooder", 0) >= 1  # scored down below the ban threshold by someone
    assert m["advert_propagation"]["delivery_ratio"] >= 0.99
    # Two sybils that relay nothing do not cut the target gateway off from honest adverts.
    assert adv["eclipse_nodes"] == 2
    assert adv["eclipse_target_adverts_received"] >= 0.9 * adv["eclipse_target_adverts_expected"] > 0


def test_a_partition_and_churn_run_to_the_end_and_are_recorded(tmp_path: Path) -> None:
    raw = tiny(
        duration_s=40,
        churn={"per_minute": 0.5, "restart_after_s": 5, "join_per_minute": 0.6},
        partitions=[{"at_s": 15, "duration_s": 5, "fraction": 0.3}],
    )
    raw["nodes"]["relays"] = 4
    m = run_scenario(parse_scenario(raw), 2, workdir=tmp_path).metrics
    churn = m["churn"]
    assert churn.get("partition") == 1 and churn.get("heal") == 1
    assert churn.get("crash", 0) + churn.get("leave", 0) >= 1 and churn.get("join", 0) >= 1
    assert m["payments"]["conserved"]


def _metrics_in_another_process(
    raw: dict, out: Path, *, seed: int = 6, hash_seed: str, ballast: int = 0
) -> bytes:
    """metrics.json of scenario ``raw`` run in a fresh interpreter. ``ballast`` objects are allocated
    first, which moves every later object to another address."""
    code = (
        "import sys, json; from sim.scenario import parse_scenario; from sim.runner import run_scenario; "
        "from sim.report import metrics_bytes; "
        "ballast = [[None] * (i % 11) for i in range(int(sys.argv[3]))]; "
        "scenario = parse_scenario(json.loads(sys.argv[1])); "
        "open(sys.argv[2], 'wb').write(metrics_bytes(run_scenario(scenario, int(sys.argv[4])).metrics))"
    )
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(raw), str(out), str(ballast), str(seed)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        check=True,
        timeout=300,
    )
    return out.read_bytes()


def test_a_run_repeats_in_another_process_with_another_hash_seed(tmp_path: Path) -> None:
    # Set and dict orders of str/bytes keys change with PYTHONHASHSEED; metrics.json must not. With a dozen
    # relays, sets of peer IDs (hashed with the salted ``hash``) made gossip and DHT choices differ within
    # seconds: 200-node runs of one seed did not repeat.
    raw = tiny(duration_s=20)
    raw["warmup_s"] = 8
    raw["nodes"] |= {"relays": 12, "target_peers": 6}
    outputs = {_metrics_in_another_process(raw, tmp_path / f"{h}.json", hash_seed=h) for h in ("1", "2")}
    assert len(outputs) == 1
    metrics = json.loads(outputs.pop())
    assert metrics["generations"]["honest"]["started"] > 0
    assert metrics["network"]["trace_digest"]


def test_a_run_repeats_with_its_objects_at_other_addresses(tmp_path: Path) -> None:
    # The swarm broke ties between two connections to one peer by ``id(conn)``, a memory address: which
    # connection carried a stream, and every arrival after it, depended on where objects happened to be.
    # The smoke scenario met such a tie in 2 of 4 layouts tried; the metrics include the trace's hash.
    raw = tomllib.loads(SMOKE.read_text())
    outputs = {
        _metrics_in_another_process(raw, tmp_path / f"{ballast}.json", seed=1, hash_seed="1", ballast=ballast)
        for ballast in (0, 77, 4321)
    }
    assert len(outputs) == 1


def test_liars_that_lie_alike_cannot_vouch_for_each_other(tmp_path: Path) -> None:
    """Two of five providers of a span return the same wrong activations. A first check by one checker
    passed whenever it drew the other liar; with two checkers and the majority deciding, no generation
    returns wrong text and no honest provider is banned."""
    raw = tiny(duration_s=60)
    raw["nodes"]["providers"] = [
        {"count": 3, "layers": "0:1"},
        {"count": 2, "layers": "0:1", "lie": True},
        {"count": 1, "layers": "1:2"},
    ]
    raw["nodes"]["gateways"] = [{"count": 3}]
    raw["workload"]["spot_check_p"] = 0.05
    m = run_scenario(parse_scenario(raw), 1, workdir=tmp_path).metrics
    honest, adv = m["generations"]["honest"], m["adversaries"]
    assert honest["completed"] >= 5 and adv["liar_tokens_served"] > 0
    assert adv["liars_caught_by_spot_checks"] >= 2
    assert adv["honest_providers_accused"] == 0
    assert adv["wrong_generations_returned"] == 0 and honest["correct"] == honest["completed"]
