"""``hashbench status``: ok, failed (with the reason), stale, damaged, running, interrupted and
pending cells of a grid."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hashbench.cli.run import build_settings, grid_options, plugin_specs, spec_from_settings
from hashbench.records import Status
from hashbench.status import STATES, CellStatus, counts, directory_status, grid_status

# Counted even at zero, so a glance says how much is done and what is left.
_ALWAYS = (Status.OK, Status.FAILED, Status.RUNNING, Status.PENDING)
_STYLE = {
    Status.OK: "green",
    Status.FAILED: "red",
    Status.STALE: "magenta",
    Status.DAMAGED: "red",
    Status.RUNNING: "cyan",
    Status.INTERRUPTED: "yellow",
    Status.PENDING: "yellow",
}


def status_table(statuses: list[CellStatus], title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "dataset", "protocol", "bits", "seed", "state", "detail"):
        table.add_column(column, justify="right" if column in ("bits", "seed") else "left", overflow="fold")
    for status in statuses:
        detail = status.reason or ""
        record = status.record
        if status.state is Status.OK and record is not None:
            value = record.metric("map")
            detail = "" if value is None else f"mAP@{record.map_k} {value:.4f}"
            if record.finished:
                detail += f" · {record.finished}"
        table.add_row(
            status.method or status.key,
            status.dataset or "",
            status.protocol or "",
            "" if status.bits is None else str(status.bits),
            "" if status.seed is None else str(status.seed),
            f"[{_STYLE[status.state]}]{status.state.value}[/{_STYLE[status.state]}]",
            detail,
        )
    return table


@click.command("status")
@grid_options
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice([state.value for state in STATES]),
    help="List only cells in this state (repeatable); the counts cover the whole grid.",
)
def status_command(config_path: Path | None, only: tuple[str, ...], **options) -> None:
    """Show each cell of a grid as ok, failed (with the reason), stale (an older method or
    protocol version), damaged (codes missing or changed), running, interrupted or pending.

    Name the grid as for `hashbench run` (--config FILE or --methods ...). Without a grid,
    every run recorded in the results directory is listed.
    """
    settings = build_settings(options, config_path, plugin_specs())
    results = Path(settings["results"])
    if "methods" in settings:
        statuses = grid_status(spec_from_settings(settings))
        warnings: list[str] = []
        title = f"grid of {len(statuses)} cells in {results}"
    else:
        if not results.is_dir():
            raise click.UsageError(f"results directory {results} does not exist; pass --results or a grid")
        statuses, warnings = directory_status(results)
        title = f"runs recorded in {results}"
    shown = [status for status in statuses if not only or status.state.value in only]
    console = Console()
    if not console.is_terminal:  # piped or captured: do not fold the reasons into 80 columns
        console.width = max(console.width, 160)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    console.print(status_table(shown, title))
    total = counts(statuses)
    click.echo(" · ".join(f"{state} {total[state]}" for state in STATES if total[state] or state in _ALWAYS) + f"  (of {len(statuses)})")
