"""``hashbench reeval``: recompute the metrics of every run from its stored codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command("reeval")
@click.option(
    "--results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results directory. Default: $HASHBENCH_RESULTS or ./results.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where datasets live (for the labels). Default: $HASHBENCH_DATA or ./data.",
)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="Cache folder, as for `hashbench run`.")
def reeval_command(results: Path | None, data_root: Path | None, cache: Path | None) -> None:
    """Recompute every ok run's metrics from its codes.npz and split manifest, without
    training; refuse runs whose files no longer match their recorded hashes (exit 1)."""
    from hashbench.reeval import reevaluate

    results = results or Path(os.environ.get("HASHBENCH_RESULTS") or "results")
    data_root = data_root or Path(os.environ.get("HASHBENCH_DATA") or "data")
    if not results.is_dir():
        raise click.UsageError(f"results directory {results} does not exist; pass --results")

    def show(outcome) -> None:
        line = f"{outcome.state}: {outcome.key}" + (f" ({outcome.detail})" if outcome.detail else "")
        click.echo(line, err=outcome.state == "refused")

    outcomes, warnings = reevaluate(results, data_root, cache, on_outcome=show)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    tally = {state: sum(o.state == state for o in outcomes) for state in ("unchanged", "updated", "refused", "busy")}
    click.echo(", ".join(f"{count} {state}" for state, count in tally.items()) + f" (of {len(outcomes)} ok runs)")
    if tally["refused"]:
        sys.exit(1)
