"""``hashbench check-method``: the conformance suite every method must pass."""

from __future__ import annotations

import sys

import click

from hashbench.cli.options import NAMES


@click.command("check-method")
@click.argument("names", type=NAMES)
@click.option("--set", "assignments", multiple=True, metavar="METHOD.PARAM=VALUE", help="Override a hyperparameter. Repeatable.")
def check_method_command(names: list[str], assignments: tuple[str, ...]) -> None:
    """Check that methods NAMES (comma-separated) follow the method API: declaration, params
    round-trip, refusal of impossible bit counts, encode before fit, codes, determinism.

    Each method trains for real on a small slice of digits (a few epochs). Exit status 1
    when a check fails.
    """
    from hashbench import registry
    from hashbench.conformance import check_method
    from hashbench.params import parse_assignments

    overrides = parse_assignments(assignments)
    for owner in overrides:
        if owner not in names:
            raise click.UsageError(f"--set names {owner!r}, which is not among the methods checked")
    failures = 0
    for name in names:
        registry.get_method(name)  # an unknown name is a one-line error before any work
        click.echo(f"{name}:")
        for result in check_method(name, overrides.get(name)):
            failures += not result.passed
            mark = "ok  " if result.passed else "FAIL"
            click.echo(f"  {mark} {result.name}: {result.detail}")
    if failures:
        click.echo(f"{failures} check(s) failed", err=True)
        sys.exit(1)
