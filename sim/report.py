"""Writing a run's results: `metrics.json` (byte-for-byte repeatable), `report.md` and PNG plots.

`metrics.json` holds only what the simulation measured in virtual time (sorted keys, rounded floats), so
two runs of one scenario and seed give the same bytes. Wall time and the virtual/wall ratio are facts about
the machine, not the network: they go to `report.md` and the console only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .backend import LABEL, TINYGRAD_LABEL
from .runner import RunResult

#: The issue's targets, printed beside the measured values (a scenario's own ``[targets]`` add to them).
PLOTS = ("propagation_cdf.png", "generations_over_time.png", "dht_hops.png")


def metrics_bytes(metrics: dict) -> bytes:
    return (json.dumps(metrics, sort_keys=True, indent=2, allow_nan=False) + "\n").encode()


def lookup(metrics: dict, dotted: str) -> Any:
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check(value: Any, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` ("<= 1.5", ">= 0.99", "== 0"); None when it was not measured."""
    op, bound = target.split()
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int | float):
        return None
    b = float(bound)
    return {"<=": value <= b, ">=": value >= b, "==": value == b}[op]


def write_report(result: RunResult, out: Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the plots into ``out`` (created). Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "report": out / "report.md"}
    paths["metrics"].write_bytes(metrics_bytes(result.metrics))
    paths.update(_plots(result, out))
    paths["report"].write_text(
        render_markdown(result, [p.name for k, p in paths.items() if k.startswith("plot")])
    )
    return paths


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(result: RunResult, plots: list[str]) -> str:
    m, sc = result.metrics, result.scenario
    lines = [
        f"# Simulation report: {sc.name}",
        "",
        sc.description,
        "",
        f"- seed {result.seed}, {m['scenario']['nodes']} nodes in total, {result.virtual_s:g} virtual s",
        f"- wall time {result.wall_s:.1f} s, virtual/wall ratio **{result.ratio:.2f}**; CPU time "
        f"{result.cpu_s:.1f} s, virtual/CPU {result.virtual_s / max(result.cpu_s, 1e-9):.2f} (machine-dependent; "
        "not in metrics.json)",
        f"- inference backend: **{TINYGRAD_LABEL if sc.model.backend == 'tinygrad' else LABEL}**: "
        f"{sc.model.per_token_layer_ms:g} ms per token per layer + {sc.model.base_ms:g} ms per forward, "
        f"{sc.model.layers} layers. Generation latencies and tokens/s are those of the cost model, not of a "
        "real model.",
        f"- links: {sc.network.latency_ms:g} ± {sc.network.jitter_ms:g} ms, loss {sc.network.loss:g}, "
        f"drop {sc.network.drop:g}; real libp2p Noise, Yamux, GossipSub and Kad-DHT over the simulated network",
        "",
        "## Targets",
        "",
        "| metric | target | measured | met |",
        "|---|---|---|---|",
    ]
    for key, target in sorted(sc.targets.items()):
        value = lookup(m, key)
        ok = check(value, target)
        lines.append(
            f"| `{key}` | {target} | {_fmt(value)} | {'yes' if ok else ('—' if ok is None else '**no**')} |"
        )
    prop, dup, dht = m["advert_propagation"], m["duplicate_amplification"], m["dht"]
    gh = m["generations"]["honest"]
    lines += [
        "",
        "## Advert propagation",
        "",
        f"- adverts measured (signed after the warm-up): {prop['adverts_measured']}, reaching 99% of honest nodes within "
        f"{prop['window_s']:g} s: {prop['adverts_reaching_99pct']}",
        f"- time to reach 99% of nodes: p50 {_fmt(prop['time_to_99pct_p50_s'])} s, "
        f"p99 {_fmt(prop['time_to_99pct_p99_s'])} s",
        f"- delivery ratio (honest node × advert pairs delivered): {_fmt(prop['delivery_ratio'])}",
        f"- duplicate amplification: {_fmt(dup['copies_per_delivered_advert'])} copies received per advert "
        f"delivered ({dup['copies_received']} copies, {dup['first_deliveries']} first deliveries)",
        "",
        "## DHT",
        "",
        f"- provider lookups: {dht['lookups']}, success ratio {_fmt(dht['success_ratio'])} (success = at least one "
        "provider found that is up)",
        f"- failed lookups by cause: {dht.get('failures') or 'none'} (timeout: no live provider within 10 s; none: "
        "an answer without providers; gone: only providers that have left); not counted: "
        f"{dht.get('not_counted_asker_gone', 0)} whose asker crashed, left or restarted before the answer; "
        "successful lookups took "
        f"{_lookup_times(dht.get('successful_s'))}",
        f"- peers queried per lookup (mean {_fmt(dht['peers_queried_mean'])}): "
        f"{dht['peers_queried_histogram']}. py-libp2p hides the lookup path, so *peers queried* in the "
        "provider phase stands in for hops; 0 means the node answered from its own provider store.",
        "",
        "## Generations",
        "",
        f"- honest: {gh['completed']}/{gh['started']} completed (ratio {_fmt(gh['success_ratio'])}), "
        f"{gh['correct']} token-for-token equal to the backend's reference, {gh['failovers']} failovers, "
        f"{gh['spot_checks']} spot checks; failures {gh['failures']}",
        *[f"  - failed at {f['t_s']} s: {f['reason']}: {f['detail']}" for f in gh.get("failed", [])],
        f"- latency p50 {_fmt(gh['latency_p50_s'])} s, p99 {_fmt(gh['latency_p99_s'])} s (cost model)",
        f"- tokens served: {m.get('tokens_served', {})}",
        f"- churn events: {m['churn']}",
        "",
        "## Payments",
        "",
    ]
    pay = m.get("payments") or {}
    if pay:
        lines += [f"- {k}: {_fmt(v)}" for k, v in sorted(pay.items())]
    else:
        lines.append("- payments off in this scenario")
    lines += ["", "## Adversaries", ""]
    adv = m.get("adversaries") or {}
    lines += [f"- {k}: {_fmt(v)}" for k, v in sorted(adv.items())] or ["- none"]
    lines += ["", f"- rejected by honest validators: {m.get('honest_rejections', {})}", "", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(result: RunResult, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result.extra
    written: dict[str, Path] = {}
    reach, lat = curves.get("reach_99", []), curves.get("latencies", [])

    fig, ax = plt.subplots(figsize=(6, 4))
    for values, label in (
        (lat, "each node's delivery"),
        ([x for x in reach if math.isfinite(x)], "99% of nodes"),
    ):
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", label=label)
    ax.set_xlabel("virtual seconds after publication")
    ax.set_ylabel("fraction")
    ax.set_title("Advert propagation CDF")
    ax.legend()
    written["plot_propagation"] = _save(fig, out / PLOTS[0], plt)

    rows = result.metrics["generations"]["over_time"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ts = [row["t_s"] for row in rows]
    ax.bar(ts, [row["started"] for row in rows], width=8, label="started", color="#bbb")
    ax.bar(ts, [row["completed"] for row in rows], width=8, label="completed", color="#3a7")
    ax2 = ax.twinx()
    ax2.plot(ts, [row["churn"] for row in rows], color="#c33", marker="o", label="churn events")
    ax.set_xlabel("virtual seconds (10 s buckets)")
    ax.set_ylabel("generations")
    ax2.set_ylabel("churn events")
    ax.set_title("Generations over time against churn")
    ax.legend(loc="upper left")
    written["plot_generations"] = _save(fig, out / PLOTS[1], plt)

    hist = result.metrics["dht"]["peers_queried_histogram"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([int(k) for k in hist], list(hist.values()))
    ax.set_xlabel("peers queried per provider lookup (hops stand-in)")
    ax.set_ylabel("lookups")
    ax.set_title("DHT lookups")
    written["plot_dht"] = _save(fig, out / PLOTS[2], plt)
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    # No timestamps in the PNG, so plots of one seed are repeatable too.
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def _lookup_times(q: dict | None) -> str:
    return "-" if not q else f"p50 {_fmt(q['p50'])} s, p99 {_fmt(q['p99'])} s"
