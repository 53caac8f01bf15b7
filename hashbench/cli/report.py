"""``hashbench report``: tables, timings, plots and an HTML page from every run record."""

from __future__ import annotations

import os
from pathlib import Path

import click

BUILTIN = "builtin"


@click.command("report")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory. Default: $HASHBENCH_RESULTS or ./results.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default="reports", show_default=True, help="Where to write the report."
)
@click.option(
    "--metric",
    default="map",
    show_default=True,
    help="Metric to tabulate, e.g. map, map_all, map_tie_aware, precision_radius2, precision_at_k.100, timings.fit.",
)
@click.option(
    "--published",
    is_flag=False,
    flag_value=BUILTIN,
    default=None,
    metavar="[FILE]",
    help="Show published numbers beside the reproduced means: the package's list, or a CSV FILE "
    "(method,dataset,protocol,metric,bits,value,source).",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw precision-recall, precision@k and metric-vs-bits plots.")
@click.option(
    "--include-stale",
    is_flag=True,
    help="Keep runs made under an older method or protocol version (left out by default; their rows say the version).",
)
def report_command(results: Path | None, out: Path, metric: str, published: str | None, plots: bool, include_stale: bool) -> None:
    """Write the table (Markdown, LaTeX, CSV, HTML), timings, plots (PNG, PDF) and report.html;
    print the table."""
    from hashbench.report import write_report

    results = results or Path(os.environ.get("HASHBENCH_RESULTS") or "results")
    if not results.is_dir():
        raise click.UsageError(f"results directory {results} does not exist; run `hashbench run` first or pass --results")
    source = None if published is None else (True if published == BUILTIN else Path(published))
    table, paths, warnings = write_report(results, out, metric, plots=plots, published=source, include_stale=include_stale)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(paths["markdown"].read_text())
    if "published_markdown" in paths:
        click.echo(paths["published_markdown"].read_text())
    plot_files = [path for key, path in paths.items() if key.startswith("plot_")]
    listed = [str(path) for key, path in paths.items() if not key.startswith("plot_")]
    if plot_files:
        listed.append(f"{len(plot_files)} plot files in {plot_files[0].parent}")
    click.echo("written: " + ", ".join(listed), err=True)
