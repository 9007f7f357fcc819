"""`steppe sim run SCENARIO [--seed S] --out DIR`: run a scenario and write its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

sim_app = typer.Typer(
    help="Simulate hundreds of real nodes on a virtual network and clock.", no_args_is_help=True
)


@sim_app.command("run")
def run_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML, e.g. sim/scenarios/smoke.toml.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, report.md and plots.")],
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (default: the scenario's).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Log level of the nodes.")] = "error",
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="Virtual seconds to run instead of the scenario's duration_s."),
    ] = None,
) -> None:
    """Run SCENARIO in virtual time; the same scenario and seed write the same metrics.json."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from node.logging import configure_logging

    from .report import write_report
    from .runner import run_scenario
    from .scenario import load_scenario, with_duration

    sc = load_scenario(scenario)  # ScenarioError: printed by the CLI, exit 2
    if duration is not None:
        sc = with_duration(sc, duration)
    configure_logging(level=log_level)
    console = Console(stderr=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(sc.name, total=sc.duration_s)
        step = max(1.0, sc.duration_s / 20)
        shown = [0.0]

        def tick(t: float) -> None:
            progress.update(task, completed=min(t, sc.duration_s))
            # Without a terminal the bar is not redrawn: print a line every 5% of the run instead.
            if not console.is_terminal and t >= shown[0] + step:
                shown[0] = t
                console.print(f"{sc.name}: {t:.0f}/{sc.duration_s:g} virtual s")

        result = run_scenario(sc, seed, progress=tick)
        progress.update(task, completed=sc.duration_s)
    paths = write_report(result, out)
    console.print(
        f"{sc.name}: {result.virtual_s:g} virtual s in {result.wall_s:.1f} wall s "
        f"(virtual/wall {result.ratio:.2f}); wrote {', '.join(sorted(p.name for p in paths.values()))} to {out}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")
