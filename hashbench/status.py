"""Where a grid stands: each cell ok, failed (and why), stale, damaged, running, interrupted or
pending (the states of :class:`hashbench.records.Status`).

Read-only: nothing is created in the results directory. A cell is *running* when a
process holds its run lock, which is probed by taking and at once releasing it; the runner
looks twice before calling a cell busy, so a probe never makes it skip one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hashbench import registry
from hashbench.errors import UserError
from hashbench.records import RunRecord, Status
from hashbench.store import RECORD_NAME, ResultsStore, StoredState, read_record_file

# The order states are counted and listed in.
STATES = tuple(Status)


@dataclass
class CellStatus:
    key: str
    state: Status
    method: str | None = None
    dataset: str | None = None
    protocol: str | None = None
    bits: int | None = None
    seed: int | None = None
    reason: str | None = None  # why it failed, is stale or damaged
    record: RunRecord | None = None

    @property
    def sort_key(self) -> tuple:
        return (self.method or self.key, self.dataset or "", self.protocol or "", self.bits or 0, self.seed or 0, self.key)


def is_running(store: ResultsStore, key: str) -> bool:
    """Whether some process (on any node sharing the directory) holds the run's lock."""
    return store.is_locked(key)


def _status(key: str, stored: StoredState, cell=None) -> CellStatus:
    record = stored.record
    source = cell if cell is not None else record
    return CellStatus(
        key,
        stored.status,
        getattr(source, "method", None),
        getattr(source, "dataset", None),
        getattr(source, "protocol", None),
        getattr(source, "bits", None),
        getattr(source, "seed", None),
        stored.reason,
        record,
    )


def grid_status(spec) -> list[CellStatus]:
    """The state of every cell of ``spec`` (a :class:`hashbench.runner.GridSpec`), in grid order."""
    from hashbench.runner import plan_grid

    store = ResultsStore(spec.results)
    statuses = []
    for cell in plan_grid(spec):
        if is_running(store, cell.key):
            stored = StoredState(Status.RUNNING, store.read_record(cell.key), "lock held by a runner")
        else:
            stored = store.stored_state(cell.identity, cell.method_version, cell.protocol_version)
        statuses.append(_status(cell.key, stored, cell))
    return statuses


def current_versions(record: RunRecord) -> tuple[str, str] | None:
    """The versions the installed method and protocol of ``record`` declare (None: not installed).

    A dataset made from an embedding file is rebuilt from the configuration its record holds,
    so its protocol version says what that file is now (its hash is part of the version)."""
    try:
        method_version = str(registry.get_method(record.method).version)
    except UserError:
        return None
    return method_version, current_protocol_version(record)


_CONFIGURED_VERSIONS: dict[str, str] = {}  # a recorded configuration → its protocol version now


def current_protocol_version(record: RunRecord) -> str:
    """The version of the record's protocol on its data as it is now; ``"unreadable"`` when the
    data a configured dataset names cannot be read any more (the run then counts as stale)."""
    configured = (record.data or {}).get("configured")
    if configured is None:
        try:
            return str(getattr(registry.get_dataset(record.dataset)().protocol(record.protocol), "version", "1"))
        except UserError:
            return record.protocol_version  # not installed here: nothing to compare with
    # Remembered per configuration and file state (the file's hash is remembered the same way).
    memo = json.dumps([record.dataset, record.protocol, configured, _file_state(configured)], sort_keys=True, default=str)
    if memo not in _CONFIGURED_VERSIONS:
        try:
            dataset = registry.configured_dataset(record.dataset, configured)
            _CONFIGURED_VERSIONS[memo] = str(getattr(dataset().protocol(record.protocol), "version", "1"))
        except UserError:
            return UNREADABLE_DATA
    return _CONFIGURED_VERSIONS[memo]


UNREADABLE_DATA = "unreadable"


def _file_state(configured: Any) -> list[int] | None:
    path = configured.get("path") if isinstance(configured, dict) else None
    try:
        status = os.stat(path) if isinstance(path, str) else None
    except OSError:
        return None
    return None if status is None else [status.st_size, status.st_mtime_ns]


def recorded_state(store: ResultsStore, record: RunRecord) -> StoredState:
    """The state of one record on its own: stale against the installed versions, damaged
    when ok but its codes are not whole."""
    versions = current_versions(record)
    if versions is not None and versions[1] == UNREADABLE_DATA:
        path = ((record.data or {}).get("configured") or {}).get("path")
        return StoredState(Status.STALE, record, f"its data file {path} cannot be read now: the data it was run on cannot be checked")
    if versions is not None and not record.is_current(*versions):
        return StoredState(
            Status.STALE,
            record,
            f"recorded under {record.method} version {record.method_version}, protocol version "
            f"{record.protocol_version}; installed: {versions[0]} / {versions[1]}"
            + ("" if versions[1] == record.protocol_version or "configured" not in (record.data or {}) else " (the data file changed since)"),
        )
    if not record.ok:
        return StoredState(Status.FAILED, record, record.error or "no reason recorded; see log.txt in the run folder")
    if not store.codes_whole(record):
        return StoredState(Status.DAMAGED, record, "codes.npz is missing or differs from the one recorded")
    return StoredState(Status.OK, record)


def directory_status(results: Path) -> tuple[list[CellStatus], list[str]]:
    """Every run the results directory knows of, without a grid, and a warning for each run
    folder whose record cannot be used."""
    store = ResultsStore(results)
    entries = list(store.runs_dir.iterdir()) if store.runs_dir.is_dir() else []
    keys = {path.name for path in entries if path.is_dir()}
    warnings = [f"skipping {path}: a file where hashbench keeps run folders" for path in entries if not path.is_dir()]
    statuses = []
    for key in sorted(keys):
        if is_running(store, key):
            statuses.append(_status(key, StoredState(Status.RUNNING, store.read_record(key), "lock held by a runner")))
            continue
        path = store.run_dir(key) / RECORD_NAME
        if not path.exists():
            if store.started(key):
                statuses.append(_status(key, StoredState(Status.INTERRUPTED, None, "a run folder without a record")))
            continue  # else only the lock file of a runner killed before it began
        item = read_record_file(path)
        if item.record is None:
            warnings.append(f"skipping {path}: {item.error}")
            continue
        record = item.record
        statuses.append(_status(key, recorded_state(store, record)))
    statuses.sort(key=lambda status: status.sort_key)
    return statuses, warnings


def counts(statuses: list[CellStatus]) -> dict[Status, int]:
    counter = Counter(status.state for status in statuses)
    return {state: counter[state] for state in STATES}
