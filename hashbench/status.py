"""Where a grid stands: each cell done, running (its lock is held), failed (and why) or pending.

Read-only: nothing is created in the results directory. A cell is *running* when a
process holds its run lock, which is probed by taking and at once releasing it; the runner
looks twice before calling a cell busy, so a probe never makes it skip one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hashbench.store import ResultsStore

STATES = ("done", "running", "failed", "pending")


@dataclass
class CellStatus:
    key: str
    state: str  # one of STATES
    method: str | None = None
    dataset: str | None = None
    protocol: str | None = None
    bits: int | None = None
    seed: int | None = None
    reason: str | None = None  # why it failed
    record: dict[str, Any] | None = None


def _lock_path(store: ResultsStore, key: str) -> Path:
    # The store keeps one lock file per run key in <results>/locks/.
    return store.root / "locks" / f"{key}.lock"


def is_running(store: ResultsStore, key: str) -> bool:
    """Whether some process (on any node sharing the directory) holds the run's lock."""
    path = _lock_path(store, key)
    if not path.exists():
        return False  # never locked, and probing must not create lock files
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False  # a read-only results directory: nobody can be running in it either
    lock.release()
    return False


def cell_state(store: ResultsStore, key: str) -> tuple[str, str | None, dict[str, Any] | None]:
    record = store.read_record(key)
    if is_running(store, key):
        return "running", None, record
    if record is None:
        return "pending", None, None
    if record.get("status") == "ok":
        return "done", None, record
    return "failed", str(record.get("error") or "no reason recorded; see log.txt in the run folder"), record


def grid_status(spec) -> list[CellStatus]:
    """The state of every cell of ``spec`` (a :class:`hashbench.runner.GridSpec`), in grid order."""
    from hashbench.runner import plan_grid

    store = ResultsStore(spec.results)
    statuses = []
    for cell in plan_grid(spec):
        state, reason, record = cell_state(store, cell.key)
        statuses.append(
            CellStatus(cell.key, state, cell.method, cell.dataset, cell.protocol, cell.bits, cell.seed, reason, record)
        )
    return statuses


def directory_status(results: Path) -> list[CellStatus]:
    """Every run the results directory knows of (records and held locks), without a grid."""
    store = ResultsStore(results)
    keys = {path.parent.name for path in store.runs_dir.glob("*/run.json")} if store.runs_dir.is_dir() else set()
    locks = store.root / "locks"
    if locks.is_dir():
        keys |= {path.stem for path in locks.glob("*.lock")}
    statuses = []
    for key in sorted(keys):
        state, reason, record = cell_state(store, key)
        if state == "pending":
            continue  # a lock file left by a finished or killed run, without a record
        record = record or {}
        statuses.append(
            CellStatus(
                key,
                state,
                record.get("method"),
                record.get("dataset"),
                record.get("protocol"),
                record.get("bits"),
                record.get("seed"),
                reason,
                record or None,
            )
        )
    return statuses


def counts(statuses: list[CellStatus]) -> dict[str, int]:
    counter = Counter(status.state for status in statuses)
    return {state: counter.get(state, 0) for state in STATES}
