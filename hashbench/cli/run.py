"""``hashbench run``: train and evaluate a grid, resumably."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hashbench.cli.options import NAMES, NON_NEGATIVE_INTS, POSITIVE_INTS
from hashbench.config import load_config
from hashbench.params import parse_assignments
from hashbench.runner import CellOutcome, GridSpec, run_grid

DEFAULTS = {
    "datasets": ["digits"],
    "bits": [16, 32, 64],
    "seeds": [0],
    "split_seed": 0,
    "protocol": None,
    "device": "auto",
}


def build_spec(options: dict, config_path: Path | None) -> GridSpec:
    """Built-in defaults < environment < config file < command-line options."""
    settings = dict(DEFAULTS)
    settings["results"] = os.environ.get("HASHBENCH_RESULTS") or "results"
    settings["data_root"] = os.environ.get("HASHBENCH_DATA") or "data"
    if config_path is not None:
        settings.update(load_config(config_path))
    params = {owner: dict(values) for owner, values in settings.pop("params", {}).items()}
    for owner, values in parse_assignments(options.pop("assignments")).items():
        params.setdefault(owner, {}).update(values)
    for key, value in options.items():
        if value is not None and value is not False:
            settings[key] = value
    if "methods" not in settings:
        raise click.UsageError("no methods given: pass --methods (see `hashbench list`) or a --config file")
    return GridSpec(
        methods=settings["methods"],
        datasets=settings["datasets"],
        bits=settings["bits"],
        seeds=settings["seeds"],
        split_seed=settings["split_seed"],
        protocol=settings["protocol"],
        params=params,
        data_root=Path(settings["data_root"]),
        results=Path(settings["results"]),
        device=settings["device"],
        force=bool(settings.get("force", False)),
        cache_dir=Path(settings["cache"]) if settings.get("cache") else None,
        drop_bad_rows=bool(settings.get("drop_bad_rows", False)),
    )


def summary_table(outcomes: list[CellOutcome]) -> Table:
    table = Table(title="hashbench run", show_lines=False)
    for column in ("method", "dataset", "bits", "seed", "status", "mAP@k", "mAP@all", "P@r≤2", "time (s)"):
        table.add_column(column, justify="right" if column not in ("method", "dataset", "status") else "left")
    for outcome in outcomes:
        record = outcome.record or {}
        metrics = record.get("metrics", {})
        status = {"skipped": "done before", "busy": "running elsewhere"}.get(outcome.status, outcome.status)
        if outcome.status == "failed":
            status = f"[red]failed[/red]: {outcome.error}"

        def number(key: str) -> str:
            value = metrics.get(key)
            return f"{value:.4f}" if isinstance(value, float) else ""

        map_label = f"{number('map')} @{metrics['map_k']}" if "map_k" in metrics else ""
        seconds = record.get("timings", {}).get("total")
        table.add_row(
            outcome.cell.method,
            outcome.cell.dataset,
            str(outcome.cell.bits),
            str(outcome.cell.seed),
            status,
            map_label,
            number("map_all"),
            number("precision_radius2"),
            f"{seconds:.2f}" if seconds is not None else "",
        )
    return table


@click.command("run")
@click.option("--methods", type=NAMES, help="Comma-separated method names (see `hashbench list`).")
@click.option("--datasets", type=NAMES, help="Comma-separated dataset names. Default: digits.")
@click.option("--bits", type=POSITIVE_INTS, help="Code lengths, any positive integers. Default: 16,32,64.")
@click.option("--seeds", type=NON_NEGATIVE_INTS, help="Run seeds (training randomness). Default: 0.")
@click.option("--split-seed", type=click.IntRange(min=0), help="Seed of the split draw. Default: 0.")
@click.option("--protocol", help="Split protocol name. Default: each dataset's default protocol.")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory. Default: $HASHBENCH_RESULTS or ./results.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where datasets live. Default: $HASHBENCH_DATA or ./data.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache of decoded images and backbone features. Default: <data root>/.hashbench-cache.",
)
@click.option(
    "--drop-bad-rows",
    is_flag=True,
    help="Run without the rows `hashbench data check` flags (missing images, all-zero labels, ...) instead of refusing; the run record says how many.",
)
@click.option("--set", "assignments", multiple=True, metavar="METHOD.PARAM=VALUE", help="Override a hyperparameter. Repeatable.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML file with the same settings.")
@click.option("--force", is_flag=True, help="Redo runs that already have an ok record.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
def run_command(config_path: Path | None, **options) -> None:
    """Train and evaluate METHODS × DATASETS × BITS × SEEDS; finished runs are skipped."""
    spec = build_spec(options, config_path)
    console = Console(stderr=True)
    outcomes: list[CellOutcome] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("preparing", total=None)

        def on_start(cell, index, total):
            progress.update(task, total=total, description=f"{cell.method} {cell.dataset} {cell.bits}b seed {cell.seed}")

        def on_done(outcome):
            outcomes.append(outcome)
            progress.advance(task)

        run_grid(spec, on_start=on_start, on_done=on_done)
    Console().print(summary_table(outcomes))
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    if failed:
        click.echo(f"{len(failed)} of {len(outcomes)} runs failed; see log.txt in their run folders.", err=True)
        sys.exit(1)
