"""``hashbench status``: done, running, failed (with the reason) and pending cells of a grid."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hashbench.cli.run import build_settings, grid_options, plugin_specs, spec_from_settings
from hashbench.status import STATES, CellStatus, counts, directory_status, grid_status

_STYLE = {"done": "green", "running": "cyan", "failed": "red", "pending": "yellow"}


def status_table(statuses: list[CellStatus], title: str) -> Table:
    table = Table(title=title)
    for column in ("method", "dataset", "protocol", "bits", "seed", "state", "detail"):
        table.add_column(column, justify="right" if column in ("bits", "seed") else "left", overflow="fold")
    for status in statuses:
        detail = ""
        if status.state == "failed":
            detail = status.reason or ""
        elif status.state == "done" and status.record:
            metrics = status.record.get("metrics", {})
            if isinstance(metrics.get("map"), float):
                detail = f"mAP@{metrics.get('map_k')} {metrics['map']:.4f}"
            if status.record.get("finished"):
                detail += f" · {status.record['finished']}"
        elif status.state == "running":
            detail = "lock held by a runner"
        table.add_row(
            status.method or status.key,
            status.dataset or "",
            status.protocol or "",
            "" if status.bits is None else str(status.bits),
            "" if status.seed is None else str(status.seed),
            f"[{_STYLE[status.state]}]{status.state}[/{_STYLE[status.state]}]",
            detail,
        )
    return table


@click.command("status")
@grid_options
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(STATES),
    help="List only cells in this state (repeatable); the counts cover the whole grid.",
)
def status_command(config_path: Path | None, only: tuple[str, ...], **options) -> None:
    """Show each cell of a grid as done, running, failed (with the reason) or pending.

    Name the grid as for `hashbench run` (--config FILE or --methods ...). Without a grid,
    every run recorded in the results directory is listed.
    """
    settings = build_settings(options, config_path, plugin_specs())
    results = Path(settings["results"])
    if "methods" in settings:
        statuses = grid_status(spec_from_settings(settings))
        title = f"grid of {len(statuses)} cells in {results}"
    else:
        if not results.is_dir():
            raise click.UsageError(f"results directory {results} does not exist; pass --results or a grid")
        statuses = directory_status(results)
        title = f"runs recorded in {results}"
    shown = [status for status in statuses if not only or status.state in only]
    console = Console()
    if not console.is_terminal:  # piped or captured: do not fold the reasons into 80 columns
        console.width = max(console.width, 160)
    console.print(status_table(shown, title))
    total = counts(statuses)
    click.echo(" · ".join(f"{state} {total[state]}" for state in STATES) + f"  (of {len(statuses)})")
