"""Keyed on-disk array caches: one ``.npy`` file per entry, written atomically, verified on open.

An entry is a uint8/float array stored as a ``.npy`` file (opened as a read-only memory map)
plus a JSON sidecar holding the key it was built for, its shape and dtype, its byte size and
checksums of a few evenly spaced rows. On open, an entry whose sidecar is missing, whose key
differs (stale), whose file is shorter or longer than its header says (truncated), or whose
sampled rows no longer match their checksums is rebuilt, never trusted.

Building writes a temporary file in the same folder, flushes it to disk and renames it over
the target; the sidecar is removed before and written after, so a killed build leaves no
entry that claims to be complete. A file lock keeps two processes from building the same
entry at once (the second waits and then opens what the first built).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from hashbench.errors import UserError
from hashbench.storage import atomic

CACHE_FOLDER_NAME = ".hashbench-cache"
_CHECKSUM_ROWS = 16


def default_cache_dir(data_root: Path) -> Path:
    """The cache lives beside the data unless ``--cache`` says otherwise."""
    return Path(data_root) / CACHE_FOLDER_NAME


def _row_checksums(array: np.ndarray) -> dict[str, str]:
    if array.shape[0] == 0:
        return {}
    rows = np.unique(np.linspace(0, array.shape[0] - 1, num=min(_CHECKSUM_ROWS, array.shape[0])).astype(np.int64))
    return {str(int(row)): hashlib.sha256(np.ascontiguousarray(array[row]).tobytes()).hexdigest() for row in rows}


class CacheEntry:
    """One cached array at ``path`` (``.npy``), valid only for ``key``."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = key
        self.meta_path = self.path.with_suffix(".json")
        self.lock_path = self.path.with_suffix(".lock")

    def _read_meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def why_invalid(self) -> str | None:
        """None when the entry can be trusted, else the reason it cannot."""
        meta = self._read_meta()
        if meta is None:
            return "no complete entry"
        if meta.get("key") != json.loads(json.dumps(self.key, default=str)):
            return "stale (built for another key)"
        try:
            size = self.path.stat().st_size
        except OSError:
            return "array file missing"
        if size != meta.get("bytes"):
            return f"truncated or overwritten ({size} bytes, expected {meta.get('bytes')})"
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            return f"unreadable ({error})"
        if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
            return "header does not match its record"
        if _row_checksums(array) != meta.get("checksums"):
            return "content does not match its checksums"
        return None

    def open(self) -> np.ndarray | None:
        """The cached array as a read-only memory map, or None when it must be (re)built."""
        if self.why_invalid() is not None:
            return None
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def get_or_build(
        self, shape: tuple[int, ...], dtype: Any, fill: Callable[[np.ndarray], None], what: str = "cache entry"
    ) -> np.ndarray:
        """Open the entry, building it with ``fill(writable_array)`` first when needed."""
        array = self.open()
        if array is not None:
            return array
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.lock_path)):
                array = self.open()  # another process may have built it while we waited
                if array is not None:
                    return array
                self._build(tuple(shape), np.dtype(dtype), fill, what)
        except OSError as error:  # unwritable folder, disk full
            raise UserError(
                f"{what}: cannot write in {self.path.parent} ({error}); point --cache at a writable folder with room"
            ) from error
        array = self.open()
        if array is None:  # pragma: no cover - only on a disk that lies
            raise UserError(f"{what}: the freshly written cache file {self.path} does not verify; check the disk")
        return array

    def _build(self, shape: tuple[int, ...], dtype: np.dtype, fill: Callable[[np.ndarray], None], what: str) -> None:
        needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        free = shutil.disk_usage(self.path.parent).free
        if needed > free:
            raise UserError(
                f"{what} needs {needed / 1e9:.1f} GB in {self.path.parent} but only {free / 1e9:.1f} GB are free; "
                "point --cache at a larger disk"
            )
        self.meta_path.unlink(missing_ok=True)  # no sidecar may vouch for a half-replaced file
        with atomic.replacing(self.path) as temporary:
            array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
            fill(array)
            array.flush()
            checksums = _row_checksums(array)
            del array
        atomic.write_json(
            self.meta_path,
            {
                "key": self.key,
                "shape": list(shape),
                "dtype": str(dtype),
                "bytes": self.path.stat().st_size,
                "checksums": checksums,
            },
        )
