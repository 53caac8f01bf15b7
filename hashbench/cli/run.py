"""``hashbench run``: train and evaluate a grid, resumably, here or on a cluster."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hashbench.cli.options import (
    DATA_ROOT_OPTION,
    NAMES,
    NON_NEGATIVE_INTS,
    POSITIVE_INTS,
    RESULTS_OPTION,
    FolderPath,
)
from hashbench.errors import UserError
from hashbench.params import parse_assignments
from hashbench.run.config import EXECUTORS, MAX_CELL_TIMEOUT, load_config
from hashbench.run.runner import CellOutcome, GridInterrupted, GridSpec, run_grid
from hashbench.storage.records import Status

# The exit status of a run stopped by Ctrl-C: 128 + SIGINT, as shells report it.
INTERRUPTED_EXIT = 130
DEFAULTS = {
    "datasets": ["digits"],
    "bits": [16, 32, 64],
    "seeds": [0],
    "split_seed": 0,
    "protocol": None,
    "device": "auto",
    "executor": "local",
    "jobs": 1,
}
# Command-line option → key of the config's [slurm] table.
SLURM_OPTIONS = {
    "partition": "partition",
    "gpus_per_run": "gpus_per_run",
    "time_limit": "time_limit",
    "mem_gb": "mem_gb",
    "cpus_per_run": "cpus_per_run",
    "array_parallelism": "array_parallelism",
}


def parse_protocol_option(value: str) -> tuple[str | None, dict[str, str]]:
    """``standard`` (every dataset) or ``cifar10=cibhash-code,coco=standard`` (per dataset)."""
    if "=" not in value:
        return value.strip(), {}
    protocols = {}
    for item in value.split(","):
        dataset, sep, protocol = item.partition("=")
        if not sep or not dataset.strip() or not protocol.strip():
            raise UserError(f"--protocol {value!r}: expected NAME or DATASET=NAME,DATASET=NAME")
        protocols[dataset.strip()] = protocol.strip()
    return None, protocols


def parse_sweeps(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, list[str]]]:
    """``["cibhash.tau=0.1,0.3", "cibhash.beta=0.001,0.01"]`` → ``{"cibhash": {"tau": ["0.1", "0.3"],
    "beta": [...]}}``: the values as text, typed and range-checked when the grid is planned."""
    sweeps: dict[str, dict[str, list[str]]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        owner, dot, name = key.strip().partition(".")
        values = [part.strip() for part in value.split(",")]
        if not sep or not dot or not owner.strip() or not name.strip() or not value.strip():
            raise UserError(f"--sweep {item!r}: expected METHOD.PARAM=VALUE,VALUE,..., e.g. --sweep itq.iterations=10,50")
        if any(not part for part in values):
            raise UserError(f"--sweep {item!r}: an empty value; separate the values by single commas")
        owner, name = owner.strip(), name.strip()
        if name in sweeps.get(owner, {}):
            raise UserError(f"--sweep {owner}.{name} is given twice; list all its values in one --sweep {owner}.{name}=A,B,...")
        sweeps.setdefault(owner, {})[name] = values
    return sweeps


def build_settings(options: dict, config_path: Path | None, plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    """Built-in defaults < environment < config file < command-line options, as one dict.

    The config's plugins (and ``plugins`` from --plugin) are loaded here, so the grid can
    name their methods and datasets.
    """
    from hashbench.registry import load_plugins

    options = dict(options)
    plugins = (*plugins, *options.pop("local_plugins", ()))
    settings: dict[str, Any] = dict(DEFAULTS)
    settings["results"] = os.environ.get("HASHBENCH_RESULTS") or "results"
    settings["data_root"] = os.environ.get("HASHBENCH_DATA") or "data"
    settings["protocols"] = {}
    settings["method_protocols"] = {}
    settings["slurm"] = {}
    if config_path is not None:
        settings.update(load_config(config_path))
    settings["plugins"] = [*plugins, *settings.get("plugins", [])]
    load_plugins(settings["plugins"])
    params = {owner: dict(values) for owner, values in settings.pop("params", {}).items()}
    # [sweep.METHOD] (one table) or [[sweep.METHOD]] (several), as a list of tables per method
    sweep = {owner: [dict(t) for t in (tables if isinstance(tables, list) else [tables])] for owner, tables in settings.pop("sweep", {}).items()}
    if options.get("methods") and config_path is not None:
        # --methods picks some of the file's methods: its tables for the others do not apply
        chosen = set(options["methods"])
        params = {owner: values for owner, values in params.items() if owner in chosen}
        sweep = {owner: tables for owner, tables in sweep.items() if owner in chosen}
        settings["method_protocols"] = {
            owner: table for owner, table in settings["method_protocols"].items() if owner in chosen
        }
    assigned = parse_assignments(options.pop("assignments", ()))
    swept = parse_sweeps(options.pop("sweeps", None) or ())
    # The command line wins over the file: --set of a parameter the file sweeps sets it instead,
    # --sweep of a parameter the file sets sweeps it instead (a parameter both set and swept at
    # the same level is refused when the grid is planned).
    for owner, values in assigned.items():
        if owner in sweep:
            tables = [{name: v for name, v in table.items() if name not in values} for table in sweep[owner]]
            sweep[owner] = [table for table in tables if table]
        params.setdefault(owner, {}).update(values)
    for owner, table in swept.items():
        if owner in params:
            kept = assigned.get(owner, {})
            params[owner] = {name: v for name, v in params[owner].items() if name not in table or name in kept}
        sweep[owner] = [table]  # one table per method on the command line: the product of its parameters
    settings["params"] = params
    settings["sweep"] = {owner: tables for owner, tables in sweep.items() if tables}
    protocol_option = options.pop("protocol", None)
    if protocol_option:
        default, per_dataset = parse_protocol_option(protocol_option)
        # The command line wins: one protocol for all clears the file's per-dataset and
        # per-method choices; DATASET=NAME replaces them for that dataset.
        if default is not None:
            settings["protocol"], settings["protocols"], settings["method_protocols"] = default, {}, {}
        settings["protocols"] = {**settings["protocols"], **per_dataset}
        settings["method_protocols"] = {
            method: {dataset: name for dataset, name in table.items() if dataset not in per_dataset}
            for method, table in settings["method_protocols"].items()
        }
    slurm_given = [name for name in SLURM_OPTIONS if options.get(name) is not None]
    if options.get("no_wait"):
        slurm_given.append("no_wait")
    slurm = dict(settings["slurm"])
    for name in SLURM_OPTIONS:
        value = options.pop(name, None)
        if value is not None:
            slurm[SLURM_OPTIONS[name]] = value
    settings["slurm"] = slurm
    settings["wait"] = not options.pop("no_wait", False)
    jobs_given = options.get("jobs") is not None
    for key, value in options.items():
        if value is not None and value is not False:
            settings[key] = value
    if settings["executor"] not in EXECUTORS:
        raise UserError(f"executor {settings['executor']!r}: expected one of {', '.join(EXECUTORS)}")
    if settings["executor"] != "slurm" and slurm_given:
        flags = ", ".join("--" + name.replace("_", "-") for name in slurm_given)
        raise UserError(f"{flags} apply to --executor slurm only; add --executor slurm or drop them")
    if settings["executor"] == "slurm" and jobs_given:
        raise UserError("--jobs applies to --executor local; with --executor slurm every cell is its own job")
    return settings


def spec_from_settings(settings: dict[str, Any]) -> GridSpec:
    if "methods" not in settings:
        raise click.UsageError("no methods given: pass --methods (see `hashbench list`) or a --config file")
    return GridSpec(
        methods=settings["methods"],
        datasets=settings["datasets"],
        bits=settings["bits"],
        seeds=settings["seeds"],
        split_seed=settings["split_seed"],
        protocol=settings["protocol"],
        protocols=dict(settings["protocols"]),
        method_protocols={method: dict(table) for method, table in settings["method_protocols"].items()},
        params=settings["params"],
        data_root=Path(settings["data_root"]),
        results=Path(settings["results"]),
        device=settings["device"],
        force=bool(settings.get("force", False)),
        cache_dir=Path(settings["cache"]) if settings.get("cache") else None,
        drop_bad_rows=bool(settings.get("drop_bad_rows", False)),
        plugins=list(settings["plugins"]),
        dataset_options=dict(settings.get("dataset_options", {})),
        sweep={method: [dict(table) for table in tables] for method, tables in settings.get("sweep", {}).items()},
    )


def build_spec(options: dict, config_path: Path | None, plugins: tuple[str, ...] = ()) -> GridSpec:
    """Built-in defaults < environment < config file < command-line options."""
    return spec_from_settings(build_settings(options, config_path, plugins))


def build_executor(settings: dict[str, Any]):
    """None (in this process), local worker processes, or Slurm jobs."""
    from hashbench.run.executors import LocalPoolExecutor, SlurmExecutor

    timeout = settings.get("cell_timeout")
    if settings["executor"] == "local":
        # Only a worker process can be stopped from outside: a time limit needs one, even for one job.
        if settings["jobs"] == 1 and timeout is None:
            return None
        return LocalPoolExecutor(settings["jobs"], cell_timeout=timeout)
    slurm = dict(settings["slurm"])
    folder = Path(slurm.pop("folder", None) or Path(settings["results"]) / "slurm")
    return SlurmExecutor(folder=folder, wait=settings["wait"], cluster=SUBMITIT_CLUSTER, cell_timeout=timeout, **slurm)


# submitit's cluster for --executor slurm; "local" runs the same jobs as local processes
# (what the tests use to exercise this path without a cluster).
SUBMITIT_CLUSTER = "slurm"


def plugin_specs() -> tuple[str, ...]:
    """The --plugin values given to the command group (loaded already; passed on to workers)."""
    context = click.get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    return tuple(root.params.get("plugins", ())) if root is not None else ()


def outcome_text(outcome: CellOutcome) -> str:
    """The state of one cell after `run`, in words."""
    if outcome.status is Status.OK:
        return "done before" if outcome.reused else "ok"
    if outcome.status is Status.RUNNING:
        return "running elsewhere"
    if outcome.status is Status.PENDING:
        return f"submitted as job {outcome.job_id}" if outcome.job_id else "pending"
    return "[red]failed[/red]"


def _cell_name(cell) -> str:
    return f"{cell.label or cell.method} {cell.dataset} {cell.bits}b seed {cell.seed}"


def summary_table(outcomes: list[CellOutcome]) -> Table | Group:
    """One row per cell, narrow enough for 80 columns (failure reasons follow the table); notes
    below it, left-aligned, one phrase a line."""
    from rich import box
    from rich.text import Text

    cutoffs = sorted({o.record.map_k for o in outcomes if o.record is not None and o.record.map_k is not None})
    map_header = f"mAP@{cutoffs[0]}" if len(cutoffs) == 1 else "mAP@k"
    profiles = sorted({o.record.profile for o in outcomes if o.record is not None and o.record.profile})
    notes = []
    if "tiny" in profiles:
        notes += ["tiny profile: CPU settings for small images, not the papers';",
                  "compare with published numbers only under profile paper."]
    table = Table(title="hashbench run", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    # mAP@all and the rest are in the records and `hashbench report`.
    for column in ("method", "dataset", "bits", "seed", "status", map_header, "P@r≤2", "seconds"):
        text = column in ("method", "dataset", "status")
        table.add_column(column, justify="left" if text else "right", no_wrap=True)
    for outcome in outcomes:
        record = outcome.record

        def number(name: str, record=record) -> str:
            value = None if record is None else record.metric(name)
            return "" if value is None else f"{value:.4f}"

        seconds = None if record is None else record.timings.get("total")
        table.add_row(
            outcome.cell.label or outcome.cell.method,
            outcome.cell.dataset,
            str(outcome.cell.bits),
            str(outcome.cell.seed),
            outcome_text(outcome),
            number("map") + ("" if len(cutoffs) < 2 or record is None else f" @{record.map_k}"),
            number("precision_radius2"),
            f"{seconds:.2f}" if seconds is not None else "",
        )
    # Not a rich caption: that is centred under the table and wrapped to its width.
    return Group(table, *(Text(note, style="table.caption") for note in notes)) if notes else table


GRID_OPTIONS: list[Callable] = [
    click.option("--methods", type=NAMES, help="Comma-separated method names (see `hashbench list`)."),
    click.option("--datasets", type=NAMES, help="Comma-separated dataset names. Default: digits."),
    click.option("--bits", type=POSITIVE_INTS, help="Code lengths, any positive integers. Default: 16,32,64."),
    click.option("--seeds", type=NON_NEGATIVE_INTS, help="Run seeds (training randomness). Default: 0."),
    click.option("--split-seed", type=click.IntRange(min=0), help="Seed of the split draw. Default: 0."),
    click.option(
        "--protocol",
        metavar="NAME|DATASET=NAME,...",
        help="Split protocol, for every dataset or per dataset. Default: each dataset's default protocol.",
    ),
    RESULTS_OPTION,
    DATA_ROOT_OPTION,
    click.option("--set", "assignments", multiple=True, metavar="METHOD.PARAM=VALUE", help="Override a hyperparameter. Repeatable."),
    click.option(
        "--sweep",
        "sweeps",
        multiple=True,
        metavar="METHOD.PARAM=V1,V2,...",
        help="Run a method with each of these values of a hyperparameter, checked as --set values are. "
        "Repeatable; several parameters of one method give their product.",
    ),
    click.option(
        "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML experiment file (see experiments/)."
    ),
    click.option(
        "--plugin",
        "local_plugins",
        multiple=True,
        metavar="MODULE",
        help="Import a local module (dotted path or .py file) that defines methods or datasets. Repeatable.",
    ),
]


def grid_options(command: Callable) -> Callable:
    """The options that name a grid, shared by ``run`` and ``status``."""
    for option in reversed(GRID_OPTIONS):
        command = option(command)
    return command


@click.command("run")
@grid_options
@click.option(
    "--cache",
    type=FolderPath("data/.hashbench-cache"),
    help="Cache of decoded images and backbone features. Default: <data root>/.hashbench-cache.",
)
@click.option(
    "--drop-bad-rows",
    is_flag=True,
    help="Run without the rows `hashbench data check` flags (missing images, all-zero labels, ...) instead of refusing; the run record says how many.",
)
@click.option("--force", is_flag=True, help="Redo runs that already have an ok record.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    help="local (default): this machine; slurm: one Slurm job per cell, through submitit.",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), help="Local worker processes, each with a fair share of the CPU threads. Default: 1 (in process)."
)
@click.option(
    "--cell-timeout",
    type=click.FloatRange(min=0, min_open=True, max=MAX_CELL_TIMEOUT),
    metavar="SECONDS",
    help="Stop a cell that runs longer and record it as failed (runs cells in worker processes; "
    "with Slurm, the job's time limit). Default: none.",
)
@click.option("--partition", help="Slurm partition.")
@click.option("--gpus-per-run", type=click.IntRange(min=0), help="Slurm: GPUs per cell.")
@click.option("--time-limit", type=click.IntRange(min=1), metavar="MINUTES", help="Slurm: time limit per cell. Default: 1440.")
@click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), help="Slurm: memory per cell in GB.")
@click.option("--cpus-per-run", type=click.IntRange(min=1), help="Slurm: CPUs per cell (also its thread count).")
@click.option("--array-parallelism", type=click.IntRange(min=1), help="Slurm: cells running at once. Default: 64.")
@click.option("--no-wait", is_flag=True, help="Slurm: submit and return; follow with `hashbench status`.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output: only the summary table and errors.")
@click.option(
    "--verbose", "-v", is_flag=True, help="Plain progress lines at most every 2 s while training (default in a log: every 30 s)."
)
def run_command(config_path: Path | None, quiet: bool, verbose: bool, **options) -> None:
    """Train and evaluate METHODS × DATASETS × BITS × SEEDS; finished runs are skipped."""
    from hashbench import progress

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose contradict each other; pass one")
    mode = progress.choose(quiet, verbose)
    settings = build_settings(options, config_path, plugin_specs())
    # Resolved once, before any method runs: one that changes the working directory then
    # moves no record, split, lock or cache of the cells after it.
    for name in ("results", "data_root", "cache"):
        if settings.get(name):
            settings[name] = Path(settings[name]).resolve()
    if settings["slurm"].get("folder"):
        settings["slurm"] = {**settings["slurm"], "folder": Path(settings["slurm"]["folder"]).resolve()}
    spec = spec_from_settings(settings)
    executor = build_executor(settings)
    try:
        if mode == "bar":
            outcomes = _run_with_bar(spec, executor)
        else:
            outcomes = _run_with_lines(spec, executor, mode)
    except GridInterrupted as interrupted:
        click.echo(interrupted_text(interrupted), err=True)
        sys.exit(INTERRUPTED_EXIT)
    except KeyboardInterrupt:
        click.echo("interrupted before any cell ran; run the same command again to start", err=True)
        sys.exit(INTERRUPTED_EXIT)
    output = Console()
    if not output.is_terminal:  # piped or captured: room for the columns
        output.width = max(output.width, 120)
    output.print(summary_table(outcomes))
    failed = [outcome for outcome in outcomes if outcome.status is Status.FAILED]
    for outcome in failed:
        click.echo(f"failed: {_cell_name(outcome.cell)}: {outcome.error}", err=True)
    if failed:
        click.echo(f"{len(failed)} of {len(outcomes)} runs failed; see log.txt in their run folders.", err=True)
        sys.exit(1)


def interrupted_text(interrupted: GridInterrupted) -> str:
    """The one line after Ctrl-C: what finished, what was stopped, how to go on."""
    done = len(interrupted.finished)
    if interrupted.remote:
        return (
            f"interrupted: {done} of {interrupted.total} cells finished; the {interrupted.stopped} submitted jobs "
            "still running go on on the cluster (`hashbench status` follows them; scancel stops them)"
        )
    never = interrupted.total - done - interrupted.stopped
    stopped = f"{interrupted.stopped} stopped midway (resumable)" if interrupted.stopped else "none running"
    return (
        f"interrupted: {done} of {interrupted.total} cells finished, {stopped}, {never} not started; "
        "run the same command again to go on"
    )


def _run_with_bar(spec: GridSpec, executor) -> list[CellOutcome]:
    """A live bar over the cells (a terminal)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("preparing", total=None)

        def on_start(cell, index, total):
            bar.update(task, total=total, description=_cell_name(cell))

        def on_done(outcome):
            bar.advance(task)

        return run_grid(spec, on_start=on_start, on_done=on_done, executor=executor)


def _run_with_lines(spec: GridSpec, executor, mode: str) -> list[CellOutcome]:
    """One plain line as each cell starts and ends (a log), or nothing with --quiet."""
    from hashbench import progress

    if mode == "quiet":
        return run_grid(spec, executor=executor)
    finished = 0
    total = 0
    # A cluster takes cells when it has room: a cell submitted there is queued, not started.
    remote = executor is not None and executor.remote
    verb = "queued" if remote else "start"
    running: dict[str, tuple[Any, float]] = {}  # run key → (cell, when it started)

    def on_start(cell, index, count):
        nonlocal total
        total = count
        if not remote:
            running[cell.key] = (cell, time.monotonic())
        progress.line(f"{verb} {index + 1}/{count}: {_cell_name(cell)}")

    def still_running() -> str:
        now = time.monotonic()
        return ", ".join(f"{_cell_name(cell)} for {progress.duration(now - start)}" for cell, start in list(running.values()))

    def on_done(outcome):
        nonlocal finished
        finished += 1
        running.pop(outcome.cell.key, None)
        text = "already done" if outcome.reused else outcome_text(outcome).replace("[red]", "").replace("[/red]", "")
        record = outcome.record
        if outcome.status is Status.FAILED:
            text += f": {outcome.error}"
        elif record is not None and record.metric("map") is not None and not outcome.reused:
            text += f": mAP@{record.map_k} {record.metric('map'):.4f}, {record.timings.get('total', 0.0):.1f} s"
        progress.line(f"{text} ({finished}/{total or '?'}): {_cell_name(outcome.cell)}")

    with progress.heartbeat(still_running):
        return run_grid(spec, on_start=on_start, on_done=on_done, executor=executor)
