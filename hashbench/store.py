"""The results store: one folder per run under the results directory.

Layout (a public format, documented in the README)::

    <results>/
      splits/<dataset>-<protocol>-split<seed>-<hash12>.json   split manifests
      runs/<run key>/run.json                                 the run record
      runs/<run key>/codes.npz                                packed query/database codes
      runs/<run key>/log.txt                                  the failure's traceback, if any

Writes are atomic; ``run.json`` is written last, so a record with ``status: ok`` means
codes and metrics are complete. A per-run file lock keeps two runners sharing a directory
from doing the same run at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hashbench.errors import UserError

RECORD_NAME = "run.json"
CODES_NAME = "codes.npz"
LOG_NAME = "log.txt"


def run_key(
    method: str,
    params: dict[str, Any],
    dataset: str,
    protocol: str,
    split_seed: int,
    bits: int,
    seed: int,
) -> str:
    """A stable, readable folder name for one run of the grid."""
    identity = json.dumps(
        {
            "method": method,
            "params": params,
            "dataset": dataset,
            "protocol": protocol,
            "split_seed": split_seed,
            "bits": bits,
            "seed": seed,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return f"{method}-{dataset}-{protocol}-split{split_seed}-{bits}b-seed{seed}-{digest}"


@dataclass
class RecordFile:
    path: Path
    record: dict[str, Any] | None
    error: str | None = None


class ResultsStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    def ensure_writable(self) -> None:
        """Fail early, before any work, when the results directory cannot be written."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.splits_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"results directory {self.root} cannot be created ({error.strerror}); "
                "choose another with --results"
            ) from error
        if not os.access(self.runs_dir, os.W_OK | os.X_OK) or not os.access(self.splits_dir, os.W_OK | os.X_OK):
            raise UserError(f"results directory {self.root} is not writable; choose another with --results")

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    def read_record(self, key: str) -> dict[str, Any] | None:
        """The record of run ``key``, or None when absent or unreadable (it is then redone)."""
        path = self.run_dir(key) / RECORD_NAME
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def lock(self, key: str) -> FileLock:
        """A lock file per run key (beside the run folders, so a run folder holds only results)."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"))

    def try_lock(self, key: str) -> FileLock | None:
        lock = self.lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    def iter_records(self) -> Iterator[RecordFile]:
        """Every run record under the results directory; unreadable ones carry an error."""
        if not self.runs_dir.is_dir():
            return
        for path in sorted(self.runs_dir.glob(f"*/{RECORD_NAME}")):
            try:
                record = json.loads(path.read_text())
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as error:
                yield RecordFile(path, None, f"{type(error).__name__}: {error}")
                continue
            yield RecordFile(path, record)
