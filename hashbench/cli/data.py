"""``hashbench data``: check user-supplied dataset files, or download the downloadable ones."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hashbench import registry
from hashbench.cli.options import DATA_ROOT_OPTION
from hashbench.cli.options import data_root as resolve_data_root
from hashbench.data.checks import FAULTS, MAX_EXAMPLES, CheckReport, check_dataset
from hashbench.errors import UserError


@click.group("data")
def data_command() -> None:
    """Check or obtain dataset files."""


def failure_hint(report: CheckReport, plugin, root: Path) -> str:
    """What to do about the errors found: each kind of error has its own remedy."""
    kinds = {finding.kind for finding in report.errors}
    hints = []
    if "unreadable-source" in kinds:
        layout = getattr(plugin, "layout_help", "")
        if getattr(plugin, "argument_setting", None) is not None:  # a file named anywhere, not under the root
            hint = layout[:1].upper() + layout[1:] if layout else "Check the path of the file"
        else:
            hint = f"The files go under the data root {root}" + (f": {layout}" if layout else "")
        if getattr(plugin, "download", None) is not None:
            hint += f"; or run `hashbench data get {report.dataset} --data-root {root}`"
        hints.append(hint + ".")
    if kinds & set(FAULTS):
        hints.append("Fix the rows listed above, or run with --drop-bad-rows to leave the bad rows out.")
    if "protocol" in kinds:
        hints.append("Supply files with what the protocol needs, or choose another with --protocol (see `hashbench list`).")
    return " ".join(hints) or "Fix what is listed above."


def source_of(plugin, root: Path) -> str:
    """Where the dataset's files are: its own file for one named by path (``features:PATH``),
    else the data root."""
    path = getattr(getattr(plugin, "settings", None), "path", None)
    return f"from {path}" if path is not None else f"under {root}"


def print_report(
    report: CheckReport, console: Console, *, show_all: bool = False, hint: str = "", where: str | None = None
) -> None:
    title = f"{report.dataset} {where or f'under {report.root}'}"
    counts = Table(title=escape(title), title_justify="left", show_header=False)
    counts.add_column("what")
    counts.add_column("count", justify="right")
    for what, count in report.counts.items():
        counts.add_row(what, f"{count:,}")
    if report.counts:
        console.print(counts)
    style = {"error": "[red]error[/red]", "warning": "[yellow]warning[/yellow]", "info": "info"}
    for finding in report.findings:
        console.print(f"{style[finding.severity]}: {escape(finding.message)}", highlight=False)
        shown = finding.examples if show_all else finding.examples[:MAX_EXAMPLES]
        for example in shown:
            console.print(f"    {example}", highlight=False, markup=False)
        if finding.count > len(shown) and shown:
            more = finding.count - len(shown)
            console.print(f"    ... and {more} more (--all lists every one)", highlight=False)
    if report.ok:
        console.print(f"[green]OK[/green]: {report.dataset} is ready to run.")
    else:
        problems = sum(finding.count or 1 for finding in report.errors)
        console.print(f"[red]FAILED[/red]: {problems} problem(s). {escape(hint or 'Fix what is listed above.')}", highlight=False)


@data_command.command("check")
@click.argument("name")
@DATA_ROOT_OPTION
@click.option("--protocol", help="Split protocol to check that the files support. Default: the dataset's default.")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the trial split draw.")
@click.option("--no-decode", is_flag=True, help="Only check that image files exist; do not decode them (faster).")
@click.option("--all", "show_all", is_flag=True, help=f"List every bad row (default: the first {MAX_EXAMPLES} of each kind).")
def check_command(
    name: str, data_root: Path | None, protocol: str | None, split_seed: int, no_decode: bool, show_all: bool
) -> None:
    """Validate the files of dataset NAME: counts, missing/unreadable images, labels, paths, protocol.

    Exit status 0 when the dataset can be run as it is, 1 when it has problems.
    """
    plugin = registry.get_dataset(name)()
    if protocol is not None:
        plugin.protocol(protocol)  # an unknown protocol is a usage error, not a data problem
    root = resolve_data_root(data_root)
    report = check_dataset(plugin, root, protocol=protocol, decode=not no_decode, split_seed=split_seed)
    hint = "" if report.ok else failure_hint(report, plugin, root)
    print_report(report, Console(soft_wrap=True), show_all=show_all, hint=hint, where=source_of(plugin, root))
    sys.exit(0 if report.ok else 1)


@data_command.command("get")
@click.argument("name")
@DATA_ROOT_OPTION
def get_command(name: str, data_root: Path | None) -> None:
    """Download dataset NAME into the data root (cifar10, mnist, fashion-mnist; needs internet)."""
    plugin = registry.get_dataset(name)()
    root = resolve_data_root(data_root)
    download = getattr(plugin, "download", None)
    if download is None:
        where = getattr(plugin, "layout_help", "") or "see the dataset's documentation"
        raise UserError(f"{name} cannot be downloaded by hashbench; {where}")
    try:
        plugin.load(root)
        click.echo(f"{name} is already present under {root}.")
        return
    except UserError:
        pass
    download(root)
    plugin.load(root)  # prove the download is readable
    click.echo(f"{name} downloaded to {root}; check it with `hashbench data check {name}`.")
