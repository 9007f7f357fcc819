"""Scenario files: every shipped one parses; mistakes are refused with the key that is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "sim" / "scenarios"


def minimal(**over) -> dict:
    raw = {
        "name": "t",
        "duration_s": 30,
        "warmup_s": 5,
        "model": {"layers": 4},
        "nodes": {
            "bootstrap": 1,
            "providers": [{"count": 1, "layers": "0:2"}, {"count": 1, "layers": "2:4"}],
            "gateways": [{"count": 1}],
        },
        "workload": {"generations_per_s": 0.5},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return raw


@pytest.mark.parametrize("name", ["smoke", "churn-200", "adversarial-200", "scale-500"])
def test_every_shipped_scenario_parses(name: str) -> None:
    sc = load_scenario(SCENARIOS / f"{name}.toml")
    assert sc.name == name
    assert sc.targets


def test_the_smoke_scenario_has_ten_nodes() -> None:
    sc = load_scenario(SCENARIOS / "smoke.toml")
    n = sc.nodes
    assert n.relays + sum(g.count for g in n.providers) + sum(g.count for g in n.gateways) == 10


def test_a_minimal_scenario_fills_in_defaults() -> None:
    sc = parse_scenario(minimal())
    assert sc.network.latency_ms == 50.0
    assert sc.nodes.providers[1].span() == (2, 4)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (minimal(churn__per_minut=0.2), "churn.per_minut: unknown key"),
        (minimal(churn__per_minute=-1), "churn.per_minute: must be a number >= 0"),
        (minimal(network__loss=1.5), "network.loss: must be a number >= 0 and <= 1"),
        (minimal(network__latency_ms="fast"), "network.latency_ms: must be a number"),
        (minimal(model__layers=2.5), "model.layers: must be an integer"),
        (minimal(payments__enabled="yes"), "payments.enabled: must be true or false"),
        (minimal(duration_s=10, warmup_s=20), "warmup_s: must be shorter than duration_s"),
        (minimal(targets={"x": "about 3"}), "targets.x: must look like"),
        (minimal(partitions=[{"at_s": 1, "mode": "cut"}]), "partitions[0].mode"),
        ({"duration_s": 30}, "name: is required"),
        (minimal(nodes__republish_s=120), "nodes.republish_s: must be shorter than nodes.advert_ttl_s"),
        (minimal(nodes__relay_republish_s=200), "nodes.relay_republish_s: must be shorter than"),
        (minimal(nodes__relay_advert_ttl_s=900), "nodes.relay_advert_ttl_s: must be <= 600"),
        (minimal(model__backend="torch"), "model.backend: must be 'cost' or 'tinygrad'"),
    ],
)
def test_a_bad_value_is_refused_with_its_key(raw: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(raw)


def test_provider_layers_must_lie_inside_the_model() -> None:
    raw = minimal()
    raw["nodes"]["providers"][1]["layers"] = "2:9"
    with pytest.raises(ScenarioError, match=r"nodes.providers\[1\].layers: '2:9' is outside"):
        parse_scenario(raw)


def test_a_workload_needs_honest_providers_for_every_layer() -> None:
    raw = minimal()
    raw["nodes"]["providers"][1]["lie"] = True
    with pytest.raises(ScenarioError, match="must cover layers 0:4"):
        parse_scenario(raw)


def test_overlapping_provider_spans_are_refused() -> None:
    raw = minimal()
    raw["nodes"]["providers"].append({"count": 1, "layers": "1:3"})
    with pytest.raises(ScenarioError, match="without overlapping"):
        parse_scenario(raw)


def test_an_unreadable_or_broken_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)
