"""``hashbench status``: ok, failed (with the reason), stale, damaged, running, interrupted and
pending cells of a grid."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from hashbench.cli.run import build_settings, grid_options, plugin_specs, spec_from_settings
from hashbench.run.status import STATES, CellStatus, counts, directory_status, grid_status
from hashbench.storage.records import Status

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


# The trainer's checkpoint in a run folder (hashbench.toolkit.training.CHECKPOINT_NAME; not imported
# from there, as that module loads torch).
CHECKPOINT_NAME = "checkpoint.pt"
# A run key (hashbench.storage.records.CellIdentity.prefix, then the digest):
# METHOD-DATASET-PROTOCOL-splitN-BITSb-seedN-DIGEST
_KEY = re.compile(r"(?P<head>.+)-split(?P<split>\d+)-(?P<bits>\d+)b-seed(?P<seed>\d+)-(?P<digest>[0-9a-f]+)")


def _longest_prefix(text: str, names: list[str]) -> str | None:
    matches = [name for name in names if text.startswith(f"{name}-") and len(text) > len(name) + 1]
    return max(matches, key=len) if matches else None


def parse_key(key: str) -> dict | None:
    """Method, dataset, protocol, split seed, bits and seed of a run folder's name; None when
    it is not a run key. Names may hold hyphens, so the method is the longest registered
    method name the key starts with, and the protocol the longest protocol name of a
    registered dataset that ends what is left (else the last hyphenated part)."""
    from hashbench import registry
    from hashbench.errors import UserError

    match = _KEY.fullmatch(key)
    if match is None:
        return None
    head = match["head"]
    try:
        methods = registry.methods.names()
        datasets = registry.datasets.names()
        protocols = {name for dataset in datasets for name in getattr(registry.get_dataset(dataset), "protocols", {})}
    except UserError:
        methods, protocols = [], set()
    method = _longest_prefix(head, methods) or head.split("-", 1)[0]
    rest = head[len(method) + 1 :]
    ends = [name for name in protocols if rest.endswith(f"-{name}") and len(rest) > len(name) + 1]
    protocol = max(ends, key=len) if ends else rest.rsplit("-", 1)[-1]
    dataset = rest[: len(rest) - len(protocol) - 1]
    if not method or not dataset or not protocol:
        return None
    return {
        "method": method, "dataset": dataset, "protocol": protocol,
        "split_seed": int(match["split"]), "bits": int(match["bits"]), "seed": int(match["seed"]),
    }  # fmt: skip


def status_table(statuses: list[CellStatus], title: str, results: Path | None = None) -> Table:
    table = Table(title=title)
    for column in ("method", "dataset", "protocol", "bits", "seed", "state", "detail"):
        table.add_column(column, justify="right" if column in ("bits", "seed") else "left", overflow="fold")
    for status in statuses:
        detail = status.reason or ""
        record = status.record
        if status.method is None:  # a run folder without a usable record: what its name says
            parsed = parse_key(status.key)
            if parsed is not None:
                status = dataclasses.replace(status, **{name: parsed[name] for name in ("method", "dataset", "protocol", "bits", "seed")})
        if status.state is Status.INTERRUPTED and results is not None:
            if (results / "runs" / status.key / CHECKPOINT_NAME).is_file():
                detail += "; `hashbench run` resumes it from its checkpoint"
        if status.state is Status.OK and record is not None:
            value = record.metric("map")
            detail = "" if value is None else f"mAP@{record.map_k} {value:.4f}"
            if record.finished:
                detail += f" · {record.finished}"
        table.add_row(
            status.label or status.method or status.key,
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
    console.print(status_table(shown, title, results))
    total = counts(statuses)
    click.echo(" · ".join(f"{state} {total[state]}" for state in STATES if total[state] or state in _ALWAYS) + f"  (of {len(statuses)})")
