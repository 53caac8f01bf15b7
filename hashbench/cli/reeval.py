"""``hashbench reeval``: recompute the metrics of every run from its stored codes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hashbench.cli.options import DATA_ROOT_OPTION, RESULTS_OPTION, results_dir
from hashbench.cli.options import data_root as resolve_data_root


@click.command("reeval")
@RESULTS_OPTION
@DATA_ROOT_OPTION
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache folder, as for `hashbench run`.")
def reeval_command(results: Path | None, data_root: Path | None, cache: Path | None) -> None:
    """Recompute every ok run's metrics from its codes.npz and split manifest, without
    training; refuse runs whose files no longer match their recorded hashes (exit 1)."""
    from hashbench.reproducibility import TOLERANCE_TEXT
    from hashbench.run.reeval import reevaluate

    results = results_dir(results)
    data_root = resolve_data_root(data_root)
    if not results.is_dir():
        raise click.UsageError(f"results directory {results} does not exist; pass --results")

    def show(outcome) -> None:
        line = f"{outcome.state}: {outcome.key}" + (f" ({outcome.detail})" if outcome.detail else "")
        click.echo(line, err=outcome.state == "refused")

    outcomes, warnings = reevaluate(results, data_root, cache, on_outcome=show)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    tally = {state: sum(o.state == state for o in outcomes) for state in ("unchanged", "updated", "refused", "busy")}
    click.echo(
        ", ".join(f"{count} {state}" for state, count in tally.items())
        + f" (of {len(outcomes)} ok runs; unchanged: integers equal, floats within {TOLERANCE_TEXT})"
    )
    if tally["refused"]:
        sys.exit(1)
