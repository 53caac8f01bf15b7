"""The results store: one folder per run under the results directory.

Layout (a public format, documented in the README)::

    <results>/
      splits/<dataset>-<protocol>-split<seed>-<hash12>.json   split manifests
      runs/<run key>/run.json                                 the run record
      runs/<run key>/codes.npz                                packed query/database codes
      runs/<run key>/log.txt                                  the failure's traceback, if any
      runs/<run key>/.lock                                    the run's lock file

Writes are atomic; ``run.json`` is written last and holds the SHA-256 of ``codes.npz``, so a
cell counts as done only when its record is ok, made under the current method and protocol
versions, and its codes are whole.

The lock. Whoever works on a run (a runner training and writing it, ``reeval`` rewriting it)
holds an ``flock`` on ``.lock`` inside the run's folder for as long as it works there, so two
runners sharing a directory never do the same run at once, and ``status`` sees the run as
running. The lock lives with what it protects: the file stays after the run (deleting a lock
file that others may wait on would let two of them in), and clearing it away while a run
goes on cannot let a second runner in without deleting the run's folder itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from hashbench import atomic
from hashbench.errors import UserError
from hashbench.records import CellIdentity, NewerRecordError, RecordError, RunRecord, Status

RECORD_NAME = "run.json"
CODES_NAME = "codes.npz"
PER_QUERY_NAME = "per_query.npz"
LOG_NAME = "log.txt"
LOCK_NAME = ".lock"
_HASH_BLOCK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RecordFile:
    """One ``run.json``: the record, or why it cannot be used."""

    path: Path
    record: RunRecord | None
    error: str | None = None
    newer: bool = False  # written by a newer hashbench: not this one's to replace


@dataclass
class StoredState:
    """What the files of a results directory say about one cell (locks aside)."""

    status: Status  # OK, FAILED, STALE, DAMAGED, INTERRUPTED or PENDING
    record: RunRecord | None = None  # the record behind the state, if any
    reason: str | None = None  # why it failed, is stale or damaged
    # A record this hashbench cannot read because a newer one wrote it: never overwritten.
    protected: bool = False


def read_record_file(path: Path) -> RecordFile:
    """Parse and check one record file; never raises for a bad file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return RecordFile(path, None, f"unreadable ({type(error).__name__}: {error})")
    try:
        value = json.loads(text)
    except ValueError as error:
        return RecordFile(path, None, f"not valid JSON ({error})")
    try:
        return RecordFile(path, RunRecord.from_json(value))
    except NewerRecordError as error:
        return RecordFile(path, None, str(error), newer=True)
    except RecordError as error:
        return RecordFile(path, None, str(error))


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
        for folder in (self.root, self.runs_dir, self.splits_dir):
            if folder.exists() and not folder.is_dir():
                raise UserError(
                    f"{folder} is a file where hashbench keeps a folder; move it away or choose another --results"
                )
        try:
            for folder in (self.runs_dir, self.splits_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"results directory {self.root} cannot be created ({error.strerror}); "
                "choose another with --results"
            ) from error
        if not all(os.access(folder, os.W_OK | os.X_OK) for folder in (self.runs_dir, self.splits_dir)):
            raise UserError(f"results directory {self.root} is not writable; choose another with --results")

    def run_dir(self, key: str) -> Path:
        return self.runs_dir / key

    def read_record(self, key: str) -> RunRecord | None:
        """The record of run ``key``, or None when absent or unusable (it is then redone)."""
        path = self.run_dir(key) / RECORD_NAME
        return read_record_file(path).record if path.is_file() else None

    def write_record(self, record: RunRecord) -> None:
        atomic.write_json(self.run_dir(record.key) / RECORD_NAME, record.to_json())

    def codes_whole(self, record: RunRecord) -> bool:
        """Whether the run's ``codes.npz`` is there and is what the record was written with."""
        path = self.run_dir(record.key) / CODES_NAME
        if not path.is_file():
            return False
        if record.codes_sha256 is not None:
            return file_sha256(path) == record.codes_sha256
        # A schema-1 record has no hash: the file must at least load with both code arrays.
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as codes:
                return all(codes[name].ndim == 2 for name in ("query_codes", "database_codes"))
        except (OSError, ValueError, KeyError, EOFError):
            return False

    def write_per_query(self, key: str, result) -> str:
        """Each query's values of ``result`` (a RetrievalResult) as float32 beside the codes;
        returns the file's SHA-256 for the record."""
        import numpy as np

        path = self.run_dir(key) / PER_QUERY_NAME
        arrays = {name: np.asarray(values, dtype=np.float32) for name, values in result.per_query.items()}
        atomic.save_npz(path, ks=np.asarray(list(result.precision_at_k), dtype=np.int64), **arrays)
        return file_sha256(path)

    def read_per_query(self, record: RunRecord) -> dict | None:
        """The per-query values of a run, when stored and matching their hash in the record."""
        import numpy as np

        path = self.run_dir(record.key) / PER_QUERY_NAME
        if record.per_query_sha256 is None or not path.is_file() or file_sha256(path) != record.per_query_sha256:
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError):
            return None

    def cell_records(self, identity: CellIdentity) -> list[RecordFile]:
        """Every record of this cell, under any method or protocol version."""
        if not self.runs_dir.is_dir():
            return []
        found = []
        for path in sorted(self.runs_dir.glob(f"{_glob_escape(identity.prefix)}*/{RECORD_NAME}")):
            item = read_record_file(path)
            if item.record is not None and item.record.cell_id == identity.cell_id:
                found.append(item)
        return found

    def stored_state(
        self, identity: CellIdentity, method_version: str, protocol_version: str, labels_sha256: str | None = None
    ) -> StoredState:
        """The cell's state from its files: ok only when current and whole, and, given the
        digest of the dataset's labels now, only when the run recorded the same one."""
        key = identity.key(method_version, protocol_version)
        path = self.run_dir(key) / RECORD_NAME
        item = read_record_file(path) if path.is_file() else None
        if item is not None and item.newer:
            return StoredState(
                Status.FAILED, None,
                f"{path} was written by a newer hashbench ({item.error}); it is left as it is: upgrade hashbench, "
                "or move the run folder away to redo the cell",
                protected=True,
            )
        record = None if item is None else item.record
        if record is None:
            # A record of the current versions under another key (made before versions were
            # part of the key), else one of an older version.
            others = [item.record for item in self.cell_records(identity) if item.record.key != key]
            current = [r for r in others if r.is_current(method_version, protocol_version)]
            record = next((r for r in current if r.ok), current[0] if current else None)
            if record is None:
                older = next((r for r in others if r.ok), None)
                if older is not None:
                    return StoredState(
                        Status.STALE,
                        older,
                        f"recorded under {older.method} version {older.method_version}, protocol version "
                        f"{older.protocol_version}; now {method_version} / {protocol_version}",
                    )
                if self.started(key):
                    return StoredState(Status.INTERRUPTED, None, "a run folder without a record: killed before it finished")
                return StoredState(Status.PENDING)
        if record.status is Status.FAILED:
            return StoredState(Status.FAILED, record, record.error or "no reason recorded; see log.txt in the run folder")
        if not self.codes_whole(record):
            return StoredState(Status.DAMAGED, record, f"{CODES_NAME} is missing or differs from the one recorded")
        recorded_labels = (record.data or {}).get("labels_sha256")
        if labels_sha256 is not None and recorded_labels is not None and recorded_labels != labels_sha256:
            return StoredState(
                Status.STALE, record,
                f"the dataset's labels changed since the run (digest {str(recorded_labels)[:12]}, now {labels_sha256[:12]})",
            )
        return StoredState(Status.OK, record)

    def started(self, key: str) -> bool:
        """Whether run ``key`` has a folder with anything in it besides its lock file."""
        folder = self.run_dir(key)
        return folder.is_dir() and any(path.name != LOCK_NAME for path in folder.iterdir())

    def lock_path(self, key: str) -> Path:
        return self.run_dir(key) / LOCK_NAME

    def try_lock(self, key: str) -> RunLock | None:
        """Take run ``key``'s lock (its folder is made when the run has none yet); None when
        another process holds it. A lock file this user may not open (another user's, in a
        shared results directory) is a :class:`UserError` naming it."""
        try:
            self.run_dir(key).mkdir(parents=True, exist_ok=True)
            lock = RunLock(self.run_dir(key))
            return lock if lock.acquire() else None
        except PermissionError as error:
            path = error.filename or self.lock_path(key)
            raise UserError(
                f"cannot open the lock file {path} ({error.strerror or 'permission denied'}): it belongs to another "
                "user or its folder is read-only; ask its owner to make it writable to you (chmod g+w), or use "
                "another --results"
            ) from None

    def is_locked(self, key: str) -> bool:
        """Whether some process holds run ``key``'s lock; probing creates nothing."""
        folder = self.run_dir(key)
        if not folder.is_dir():
            return False
        lock = RunLock(folder)
        try:
            if not lock.acquire(create=self.lock_path(key).is_file()):
                return True
        except OSError:
            return False  # a read-only results directory: nobody can be running in it either
        lock.release()
        return False

    def iter_records(self) -> Iterator[RecordFile]:
        """Every run record under the results directory; unusable ones carry an error."""
        if not self.runs_dir.is_dir():
            return
        for path in sorted(self.runs_dir.glob(f"*/{RECORD_NAME}")):
            yield read_record_file(path)


class RunLock:
    """The lock of one run: an ``flock`` on the ``.lock`` file in its folder and, where the file
    system allows one on a folder (local disks; not NFS), on the folder itself, so that
    even a deleted lock file leaves the run locked."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.file_lock = FileLock(str(self.folder / LOCK_NAME))
        self._folder_fd: int | None = None

    def acquire(self, create: bool = True) -> bool:
        """Take both locks without waiting; False (holding neither) when another holds one.
        ``create=False`` leaves a missing lock file missing (a probe writes nothing)."""
        if create:
            try:
                self.file_lock.acquire(timeout=0)
            except Timeout:
                return False
        try:
            descriptor = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return True
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            if create:
                self.file_lock.release()
            return False
        except OSError:  # no flock on folders here: the lock file alone
            os.close(descriptor)
            return True
        self._folder_fd = descriptor
        return True

    def release(self) -> None:
        if self._folder_fd is not None:
            fcntl.flock(self._folder_fd, fcntl.LOCK_UN)
            os.close(self._folder_fd)
            self._folder_fd = None
        if self.file_lock.is_locked:
            self.file_lock.release()


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
