"""``hashbench report``: tables, timings, plots and an HTML page from every run record."""

from __future__ import annotations

from pathlib import Path

import click

from hashbench.cli.options import RESULTS_OPTION, results_dir

BUILTIN = "builtin"


@click.command("report")
@RESULTS_OPTION
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
    "(method,dataset,protocol,metric,bits,value,source[,checked][,kind]; kind secondary marks a number "
    "read in a source that quotes the paper).",
)
@click.option("--plots/--no-plots", default=True, show_default=True, help="Draw precision-recall, precision@k and metric-vs-bits plots.")
@click.option(
    "--include-stale",
    is_flag=True,
    help="Keep runs made under an older method or protocol version (left out by default; their rows say the version).",
)
@click.option(
    "--compare",
    metavar="A,B",
    help="Print the paired difference A − B of the metric per column, with its 95% interval and p-value (rows as in the table).",
)
def report_command(
    results: Path | None, out: Path, metric: str, published: str | None, plots: bool, include_stale: bool, compare: str | None
) -> None:
    """Write the table (Markdown, LaTeX, CSV, HTML), timings, plots (PNG, PDF) and report.html;
    print the table."""
    from hashbench.report.tables import write_report

    results = results_dir(results)
    if not results.is_dir():
        raise click.UsageError(f"results directory {results} does not exist; run `hashbench run` first or pass --results")
    pair = None
    if compare is not None:
        pair = [name.strip() for name in compare.split(",")]
        if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
            raise click.UsageError(f"--compare {compare!r}: give two different rows of the table, e.g. --compare cibhash,itq")
    source = None if published is None else (True if published == BUILTIN else Path(published))
    table, paths, warnings = write_report(results, out, metric, plots=plots, published=source, include_stale=include_stale)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(paths["markdown"].read_text())
    if "published_markdown" in paths:
        click.echo(paths["published_markdown"].read_text())
    if pair is not None:
        _print_comparison(table, *pair)
    plot_files = [path for key, path in paths.items() if key.startswith("plot_")]
    listed = [str(path) for key, path in paths.items() if not key.startswith("plot_")]
    if plot_files:
        listed.append(f"{len(plot_files)} plot files in {plot_files[0].parent}")
    click.echo("written: " + ", ".join(listed), err=True)


def _print_comparison(table, first: str, second: str) -> None:
    rows = list(table.mean.index)
    for name in (first, second):
        if name not in rows:
            raise click.UsageError(f"--compare: {name!r} is not a row of the table; rows: {', '.join(rows)}")
    comparisons = table.compare(first, second)
    if not comparisons:
        click.echo(f"{first} and {second} share no column with per-query values on one split; nothing to compare")
        return
    label = table.info.label
    click.echo(f"{label}: {first} − {second} (paired over queries; 95% bootstrap interval; sign-flip p-value)")
    for (dataset, bits), result in comparisons:
        seeds = f"{result.seeds} matched seeds" if result.seeds else "no common seed: each method's own seeds"
        click.echo(
            f"  {dataset} {bits} bits: {result.difference:+.4f} [{result.interval.low:+.4f}, {result.interval.high:+.4f}], "
            f"p = {result.p_value:.4f} ({result.queries} queries, {seeds})"
        )
