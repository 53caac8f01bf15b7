"""How progress is shown: a live bar in a terminal, plain lines in a log, or nothing.

``hashbench run`` chooses the mode from its options and whether stderr is a terminal, and
puts it in the environment (``HASHBENCH_PROGRESS``), so worker processes and cluster jobs
report the same way. A log (nohup, CI, a Slurm output file) gets one plain line per cell
and, while a method trains, a line at most every ``HASHBENCH_PROGRESS_SECONDS`` (default 30)
with the step, the latest loss, the elapsed time and an estimate of what is left.

While cells run, a log also gets a heartbeat: when nothing was printed for
``HASHBENCH_HEARTBEAT_SECONDS`` (default 300), a line says which cells are running and for
how long, so a silent method (one stuck in ``encode``) is visible as such.

Modes: ``bar`` (rich's live bar), ``lines`` (plain lines, rate-limited), ``verbose`` (plain
lines at most every 2 s), ``quiet`` (nothing but the final summary and errors).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

MODES = ("bar", "lines", "verbose", "quiet")
ENVIRONMENT = "HASHBENCH_PROGRESS"
INTERVAL_ENVIRONMENT = "HASHBENCH_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
VERBOSE_INTERVAL = 2.0
HEARTBEAT_ENVIRONMENT = "HASHBENCH_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT = 300.0

_last_line = time.monotonic()  # when this process last printed a progress line


def mode() -> str:
    """The mode in force: as set in the environment, else a bar in a terminal, lines otherwise."""
    chosen = os.environ.get(ENVIRONMENT, "")
    if chosen in MODES:
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"


def choose(quiet: bool, verbose: bool) -> str:
    """The mode for ``--quiet`` / ``--verbose``, written to the environment for workers."""
    chosen = "quiet" if quiet else "verbose" if verbose else ("bar" if sys.stderr.isatty() else "lines")
    os.environ[ENVIRONMENT] = chosen
    return chosen


def _seconds(variable: str, default: float) -> float:
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return max(0.0, value) if value == value else default  # NaN: the default


def _interval() -> float:
    return _seconds(INTERVAL_ENVIRONMENT, DEFAULT_INTERVAL)


def line(text: str) -> None:
    """One plain progress line on stderr, time-stamped, flushed at once (logs are read live)."""
    global _last_line
    _last_line = time.monotonic()
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def heartbeat(running: Callable[[], str], seconds: float | None = None) -> Iterator[None]:
    """While the block runs: whenever no line was printed for ``seconds`` (default
    ``HASHBENCH_HEARTBEAT_SECONDS``), a line ``still running: <running()>``; none when
    ``running()`` is empty."""
    period = _seconds(HEARTBEAT_ENVIRONMENT, DEFAULT_HEARTBEAT) if seconds is None else seconds
    if period <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(min(period, 1.0)):
            silent = time.monotonic() - _last_line
            if silent >= period:
                what = running()
                if what:
                    line(f"still running: {what} · nothing reported for {duration(silent)}")

    thread = threading.Thread(target=beat, name="hashbench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def duration(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextlib.contextmanager
def steps(description: str, total: int, completed: int = 0) -> Iterator[Callable[[str], None]]:
    """Progress over ``total`` steps (``completed`` already done); yields ``advance(text)``."""
    current = mode()
    if current == "quiet":
        yield lambda text: None
        return
    if current == "bar":
        with _bar(description, total, completed) as advance:
            yield advance
        return
    interval = VERBOSE_INTERVAL if current == "verbose" else _interval()
    start = last = time.monotonic()
    done = completed

    def advance(text: str) -> None:
        nonlocal done, last
        done += 1
        now = time.monotonic()
        if now - last < interval and done < total:
            return
        last = now
        elapsed = now - start
        rate = (done - completed) / elapsed if elapsed > 0 else 0.0
        left = f", about {duration((total - done) / rate)} left" if rate > 0 and done < total else ""
        line(f"{text} · step {done}/{total} · {duration(elapsed)} elapsed{left}")

    yield advance


@contextlib.contextmanager
def _bar(description: str, total: int, completed: int) -> Iterator[Callable[[str], None]]:
    """A transient rich progress bar."""
    from rich.console import Console
    from rich.errors import LiveError
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    try:
        progress.start()
    except LiveError:  # another live display that cannot nest (older rich): no bar
        yield lambda text: None
        return
    task = progress.add_task(description, total=total, completed=completed)
    try:
        yield lambda text: progress.update(task, advance=1, description=text)
    finally:
        progress.stop()
