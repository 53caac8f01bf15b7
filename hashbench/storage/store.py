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

Seeing a lock. On a local file system under Linux, ``status`` reads the kernel's table of
locks (``/proc/locks``) and takes none itself, so it never makes a runner's ``try_lock`` fail.
That table lists only the locks of this machine's processes (of this PID namespace), so on a
networked file system (NFS, CIFS, Lustre, GPFS, BeeGFS, Ceph, FUSE, ...) or one not known to
be local, ``status`` probes the lock by taking it and at once releasing it; the runner then
looks twice before it calls a cell busy.

A cell's state. :meth:`ResultsStore.record_state` is the one resolver: a record against the
versions of its method and protocol now (and the digest of its labels now), with one set of
reasons. ``run``, ``status`` (a grid or the whole directory), ``report`` and ``reeval`` all go
through it; the store imports no registry, so its callers pass the versions in.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from filelock import FileLock, Timeout

from hashbench.errors import UserError
from hashbench.storage import atomic
from hashbench.storage.atomic import file_sha256
from hashbench.storage.records import CellIdentity, NewerRecordError, RecordError, RunRecord, Status

RECORD_NAME = "run.json"
CODES_NAME = "codes.npz"
PER_QUERY_NAME = "per_query.npz"
LOG_NAME = "log.txt"
LOCK_NAME = ".lock"

# A protocol version meaning "the data a configured dataset names cannot be read now".
UNREADABLE_DATA = "unreadable"
RUNNING_REASON = "lock held by a runner"
NO_REASON = "no reason recorded; see log.txt in the run folder"
_DAMAGED = CODES_NAME + " is missing or differs from the one recorded ({})"

# Installed (method version, protocol version) of a record's method and protocol; None when its
# method is not installed here (its versions are then not compared).
VersionsOf = Callable[[RunRecord], tuple[str, str] | None]


@dataclass
class RecordFile:
    """One ``run.json``: the record, or why it cannot be used."""

    path: Path
    record: RunRecord | None
    error: str | None = None
    newer: bool = False  # written by a newer hashbench: not this one's to replace

    @property
    def warning(self) -> str:
        """The line naming an unusable record (status, report and reeval skip it)."""
        return f"skipping {self.path}: {self.error}"


@dataclass
class StoredState:
    """What a results directory says about one cell: its files, and (from
    :meth:`ResultsStore.cell_state` and :meth:`ResultsStore.run_state`) its lock."""

    status: Status  # OK, FAILED, STALE, DAMAGED, INTERRUPTED or PENDING; RUNNING where locks count
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
        return self.codes_damage(record) is None

    def codes_damage(self, record: RunRecord) -> str | None:
        """Why the run's ``codes.npz`` is not what the record was written with; None when whole."""
        path = self.run_dir(record.key) / CODES_NAME
        if not path.is_file():
            return _DAMAGED.format("not there")
        if record.codes_sha256 is not None:
            if file_sha256(path) != record.codes_sha256:
                return _DAMAGED.format("its SHA-256 is not the recorded one: truncated or replaced")
            return None
        # A schema-1 record has no hash: the file must at least load with both code arrays.
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as codes:
                if all(codes[name].ndim == 2 for name in ("query_codes", "database_codes")):
                    return None
        except (OSError, ValueError, KeyError, EOFError):
            pass
        return _DAMAGED.format("it does not load as query and database codes")

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

    # -- a cell's state: the one resolver ---------------------------------------------------

    def record_state(
        self,
        record: RunRecord,
        method_version: str | None,
        protocol_version: str | None,
        labels_sha256: str | None = None,
    ) -> StoredState:
        """The state of ``record`` against the versions of its method and protocol now (None:
        not compared) and, given it, the digest of its dataset's labels now: stale (versions),
        failed, damaged, stale (labels) or ok, in that order."""
        if protocol_version == UNREADABLE_DATA:
            path = ((record.data or {}).get("configured") or {}).get("path")
            return StoredState(Status.STALE, record, f"its data file {path} cannot be read now: the data it was run on cannot be checked")
        if method_version is not None and protocol_version is not None and not record.is_current(method_version, protocol_version):
            return StoredState(
                Status.STALE,
                record,
                f"recorded under {record.method} version {record.method_version}, protocol version "
                f"{record.protocol_version}; now {method_version} / {protocol_version}"
                + ("" if protocol_version == record.protocol_version else " (the data or the protocol changed)"),
            )
        if not record.ok:
            return StoredState(Status.FAILED, record, record.error or NO_REASON)
        damage = self.codes_damage(record)
        if damage is not None:
            return StoredState(Status.DAMAGED, record, damage)
        recorded_labels = (record.data or {}).get("labels_sha256")
        if labels_sha256 is not None and recorded_labels is not None and recorded_labels != labels_sha256:
            return StoredState(
                Status.STALE, record,
                f"the dataset's labels changed since the run (digest {str(recorded_labels)[:12]}, now {labels_sha256[:12]})",
            )
        return StoredState(Status.OK, record)

    def recorded_state(self, record: RunRecord, versions_of: VersionsOf) -> StoredState:
        """The state of one record on its own, against the installed versions ``versions_of``
        gives for it (``report`` and ``status`` without a grid)."""
        versions = versions_of(record)
        return self.record_state(record, *(versions if versions is not None else (None, None)))

    def stored_state(
        self, identity: CellIdentity, method_version: str, protocol_version: str, labels_sha256: str | None = None
    ) -> StoredState:
        """A planned cell's state from its files, locks aside (``run`` asks holding the lock):
        the record under its key, else one of the same cell under another key, else
        interrupted or pending."""
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
            # part of the key), else an ok one of an older version (stale).
            others = [item.record for item in self.cell_records(identity) if item.record.key != key]
            current = [r for r in others if r.is_current(method_version, protocol_version)]
            record = next((r for r in current if r.ok), current[0] if current else None)
            if record is None:
                record = next((r for r in others if r.ok), None)
            if record is None:
                return self._unrecorded(key) or StoredState(Status.PENDING)
        return self.record_state(record, method_version, protocol_version, labels_sha256)

    def cell_state(
        self, identity: CellIdentity, method_version: str, protocol_version: str, labels_sha256: str | None = None
    ) -> StoredState:
        """A planned cell's state as ``status`` shows it: running, else :meth:`stored_state`."""
        key = identity.key(method_version, protocol_version)
        return self._running(key) or self.stored_state(identity, method_version, protocol_version, labels_sha256)

    def run_state(self, key: str, versions_of: VersionsOf) -> tuple[StoredState | None, str | None]:
        """Run folder ``key``'s state without a grid: running, interrupted or its record's
        :meth:`recorded_state`, and a warning instead when its record cannot be used; (None,
        None) for a folder holding only a lock file (a runner killed before it began)."""
        running = self._running(key)
        if running is not None:
            return running, None
        path = self.run_dir(key) / RECORD_NAME
        if not path.exists():
            return self._unrecorded(key), None
        item = read_record_file(path)
        if item.record is None:
            return None, item.warning
        return self.recorded_state(item.record, versions_of), None

    def _running(self, key: str) -> StoredState | None:
        """The one place a cell is seen running: some process holds its lock."""
        if not self.is_running(key):
            return None
        return StoredState(Status.RUNNING, self.read_record(key), RUNNING_REASON)

    def _unrecorded(self, key: str) -> StoredState | None:
        """Interrupted when run ``key`` has a folder with something in it but no record."""
        if self.started(key):
            return StoredState(Status.INTERRUPTED, None, "a run folder without a record")
        return None

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

    @cached_property
    def mount(self) -> Mount | None:
        """The mount the results directory is on (None: not known)."""
        return mount_of(self.root.resolve(), system_mounts())

    @cached_property
    def locks_listed(self) -> bool:
        """Whether this machine's lock table shows every holder of this directory's locks (a
        local file system under Linux); elsewhere a lock is seen only by taking it."""
        return lock_table_shows(self.mount)

    def is_running(self, key: str) -> bool:
        """Whether some process holds run ``key``'s lock; creates nothing and, on a local file
        system, takes no lock either (see the module's docstring)."""
        folder = self.run_dir(key)
        if not folder.is_dir():
            return False
        if self.locks_listed:
            held = held_locks()
            if held is not None:
                device = None if self.mount is None else self.mount.device
                return any(ident in held for path in (folder, folder / LOCK_NAME) for ident in _lock_ids(path, device))
        return self._probe_lock(key)

    def _probe_lock(self, key: str) -> bool:
        """Whether run ``key``'s lock is held, seen by taking it and at once releasing it (a
        runner trying it at that instant fails, and looks again)."""
        folder = self.run_dir(key)
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


# --------------------------------------------------------------------------------------------
# Seeing a lock without taking it: Linux's /proc/locks on a local file system.

PROC_LOCKS = Path("/proc/locks")
MOUNTINFO = Path("/proc/self/mountinfo")
MOUNTS = Path("/proc/mounts")
# File systems whose locks all show in /proc/locks under the device mountinfo names and the
# inode stat gives. Any other type (overlay, whose inode numbers may not be stat's; FUSE;
# anything unknown) counts as networked: its locks are probed.
LOCAL_FILE_SYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs", "tmpfs", "ramfs", "vfat", "exfat", "ntfs3", "hfsplus"}
)


def parse_proc_locks(text: str) -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file an ``flock`` is held on, from /proc/locks text such
    as ``1: FLOCK  ADVISORY  WRITE 1234 fe:01:260072 0 EOF`` (major and minor in hex; blocked
    requests, ``1: -> FLOCK ...``, hold nothing)."""
    held = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            held.add((int(major, 16), int(minor, 16), int(inode)))
        except ValueError:  # "<none>:0": a lock on no inode
            continue
    return held


def held_locks() -> set[tuple[int, int, int]] | None:
    """The files this machine's processes hold an ``flock`` on; None when it cannot be read."""
    try:
        return parse_proc_locks(PROC_LOCKS.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), field)


@dataclass(frozen=True)
class Mount:
    point: str
    fstype: str
    device: tuple[int, int] | None = None  # the superblock's major:minor (mountinfo only)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of /proc/self/mountinfo text (``36 35 98:0 / /mnt rw - ext4 /dev/sda1 rw``)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append(Mount(_unescape(fields[4]), fields[separator + 1], (int(major), int(minor))))
        except (ValueError, IndexError):
            continue
    return mounts


def parse_mounts(text: str) -> list[Mount]:
    """The mounts of /proc/mounts text (``/dev/sda1 /mnt ext4 rw 0 0``)."""
    return [Mount(_unescape(fields[1]), fields[2]) for fields in map(str.split, text.splitlines()) if len(fields) >= 3]


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount ``path`` (absolute, symlinks resolved) is on: the longest mount point it is
    under, the last mounted where several share it."""
    text = str(path)
    best = None
    for mount in mounts:
        point = mount.point.rstrip("/")
        if (text == mount.point or text.startswith(point + "/")) and (best is None or len(point) >= len(best.point.rstrip("/"))):
            best = mount
    return best


def system_mounts() -> list[Mount]:
    for path, parse in ((MOUNTINFO, parse_mountinfo), (MOUNTS, parse_mounts)):
        try:
            return parse(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return []


def lock_table_shows(mount: Mount | None) -> bool:
    """Whether /proc/locks shows every lock held on ``mount``: it is readable and the mount is
    of a local file system."""
    return mount is not None and is_local(mount.fstype) and PROC_LOCKS.is_file()


def is_local(fstype: str) -> bool:
    """Whether a file system type is local, its locks all in this machine's /proc/locks."""
    return fstype in LOCAL_FILE_SYSTEMS  # networked ones (nfs, cifs, lustre, fuse.*, ...) are not


def _lock_ids(path: Path, device: tuple[int, int] | None) -> list[tuple[int, int, int]]:
    """How /proc/locks names a lock on ``path``: its inode on the device stat gives and on
    the mount's ``device`` (they differ on a btrfs subvolume); [] when it is not there."""
    try:
        status = os.stat(path)
    except OSError:
        return []
    ids = [(os.major(status.st_dev), os.minor(status.st_dev), status.st_ino)]
    if device is not None and device != ids[0][:2]:
        ids.append((*device, status.st_ino))
    return ids
