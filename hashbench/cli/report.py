"""``hashbench report``: tables from every run record in the results directory."""

from __future__ import annotations

import os
from pathlib import Path

import click

from hashbench.report import write_report


@click.command("report")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory. Default: $HASHBENCH_RESULTS or ./results.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default="reports", show_default=True, help="Where to write the tables."
)
@click.option("--metric", default="map", show_default=True, help="Metric to tabulate, e.g. map, map_all, precision_radius2, precision_at_k.100.")
def report_command(results: Path | None, out: Path, metric: str) -> None:
    """Write Markdown, LaTeX, CSV and HTML tables (methods × dataset/bits) and print the Markdown one."""
    results = results or Path(os.environ.get("HASHBENCH_RESULTS") or "results")
    if not results.is_dir():
        raise click.UsageError(f"results directory {results} does not exist; run `hashbench run` first or pass --results")
    table, paths, warnings = write_report(results, out, metric)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(paths["markdown"].read_text())
    click.echo("written: " + ", ".join(str(path) for path in paths.values()), err=True)
