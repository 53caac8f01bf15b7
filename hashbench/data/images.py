"""The image store of list-file datasets: JPEG/PNG files decoded on demand, or from a cache.

An :class:`ImageStore` stands for the ``N`` images of a dataset (paths relative to its folder)
as a ``uint8 (N, size, size, 3)`` array: ``store[indices]`` decodes those files with Pillow and
resizes them to ``size × size`` (224 by default, the evaluation input of CIBHash's code).

With a cache folder, the first access decodes every image once (a DataLoader with worker
processes) into a uint8 ``.npy`` file that is then memory-mapped, so training epochs and
evaluation never decode JPEGs again. The cache covers the whole dataset rather than one
split: the database is nearly all of it anyway, and every protocol and split seed then share
one file. Its key is the list of relative paths with each file's size and modification time,
the size and the decoder version: a changed image list or image file makes it stale, and it is
rebuilt (see :mod:`hashbench.data.cache` for the atomic write and the checks on open).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hashbench.data.cache import CacheEntry
from hashbench.errors import UserError

IMAGE_SIZE = 224
# Bump when decoding changes (resampling, colour conversion): old caches become stale.
DECODER_VERSION = 1


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode an image file to RGB ``uint8 (size, size, 3)`` (aspect ratio not kept, as in CIBHash).

    Raises OSError (or a Pillow error derived from it / ValueError) for a missing or corrupt file.
    """
    from PIL import Image

    with Image.open(path) as image:
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image is much larger
        # than the target (never below it), which makes large photos several times cheaper.
        image.draft("RGB", (size, size))
        rgb = image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(rgb, dtype=np.uint8)  # a writable copy (torch.from_numpy wants one)


def try_decode(path: Path, size: int = IMAGE_SIZE) -> tuple[np.ndarray | None, str | None]:
    """(image, None) or (None, why it could not be decoded)."""
    try:
        return decode_image(path, size), None
    except Exception as error:  # Pillow raises many types for corrupt files
        return None, f"{type(error).__name__}: {error}"


def loader_options(device: str, workers: int | None = None) -> dict[str, Any]:
    """DataLoader options: worker processes on every core, pinned memory when feeding a GPU."""
    workers = available_cpus() if workers is None else workers
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": str(device).startswith("cuda")}
    if workers > 0:
        options["persistent_workers"] = False
        options["prefetch_factor"] = 4
    return options


class _DecodeInto:
    """torch Dataset whose item b decodes the b-th batch of files straight into the cache file.

    Each worker maps the (temporary) cache file itself and writes its rows there, so pixels
    never travel between processes; an item returns only the rows that failed to decode, so
    the main process can name every bad file in one clear message.
    """

    def __init__(self, folder: Path, paths: Sequence[str], size: int, target: np.memmap, batch_size: int) -> None:
        self.folder = folder
        self.paths = paths
        self.size = size
        self.filename, self.offset, self.shape = target.filename, target.offset, target.shape
        self.batch_size = batch_size
        self._out: np.memmap | None = None

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_out": None}

    def __getitem__(self, batch: int) -> list[int]:
        if self._out is None:
            self._out = np.memmap(self.filename, dtype=np.uint8, mode="r+", offset=self.offset, shape=self.shape)
        failed = []
        for row in range(batch * self.batch_size, min((batch + 1) * self.batch_size, len(self.paths))):
            image, _ = try_decode(self.folder / self.paths[row], self.size)
            if image is None:
                failed.append(row)
            else:
                self._out[row] = image
        return failed


class ImageStore:
    """``uint8 (N, size, size, 3)`` view of image files under ``folder``; decoded lazily or cached."""

    dtype = np.dtype(np.uint8)
    returns_copies = True  # indexing decodes or gathers new arrays (see hashbench.data.DataSplit.images)

    def __init__(
        self,
        folder: Path,
        paths: Sequence[str],
        *,
        size: int = IMAGE_SIZE,
        cache_dir: Path | None = None,
        cache_name: str = "images",
        workers: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.paths = list(paths)
        self.size = int(size)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache_name = cache_name
        self.workers = workers
        self._array: np.ndarray | None = None
        # Set once the cache entry is verified: copies sent to worker processes open it
        # directly instead of re-stating every image file to recompute the key.
        self._verified_path: Path | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- the array interface ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([int(key)])][0]
        indices = np.arange(len(self.paths))[key] if isinstance(key, slice) else np.asarray(key)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64, copy=False)
        if indices.size and (indices.min() < -len(self.paths) or indices.max() >= len(self.paths)):
            raise IndexError(f"image index out of range for {len(self.paths)} images")
        if self.cache_dir is not None:
            return np.asarray(self.cached()[indices])
        return self._decode(indices)

    def __array__(self, dtype=None, copy=None):
        values = self[np.arange(len(self.paths))]
        return values if dtype is None else values.astype(dtype)

    # pickling (DataLoader workers): never ship the memory map or thread pool, reopen instead.
    def __getstate__(self) -> dict[str, Any]:
        if self.cache_dir is not None:
            # Build the cache here, in the parent, so that workers only open the memory map
            # (a worker process cannot start the decoding workers of a build itself).
            self.cached()
        state = dict(self.__dict__)
        state["_array"] = None
        state["_pool"] = None
        return state

    # -- decoding ---------------------------------------------------------------------------
    def _decode(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((indices.size, self.size, self.size, 3), dtype=np.uint8)
        if indices.size == 0:
            return out
        if indices.size > 1 and self._pool is None:
            # Pillow releases the GIL while decoding, so threads use every core.
            self._pool = ThreadPoolExecutor(max_workers=self.workers or available_cpus())
        paths = [self.folder / self.paths[index] for index in indices]
        results = self._pool.map(try_decode, paths, [self.size] * len(paths)) if indices.size > 1 else [try_decode(paths[0], self.size)]
        for position, (image, error) in enumerate(results):
            if image is None:
                raise UserError(
                    f"cannot read image {paths[position]} ({error}); run `hashbench data check` on this "
                    "dataset to list every bad file, then fix them or run with --drop-bad-rows"
                )
            out[position] = image
        return out

    # -- the cache --------------------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        """What the cached array depends on: every path with its file's size and mtime."""
        import hashlib

        digest = hashlib.sha256()
        for relative in self.paths:
            try:
                status = (self.folder / relative).stat()
                stamp = f"{status.st_size}:{status.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            digest.update(f"{relative}\0{stamp}\n".encode())
        return {
            "kind": "decoded-images",
            "decoder_version": DECODER_VERSION,
            "size": self.size,
            "count": len(self.paths),
            "files": digest.hexdigest(),
        }

    def cache_entry(self) -> CacheEntry:
        if self.cache_dir is None:
            raise ValueError("this image store has no cache folder")
        return CacheEntry(self.cache_dir / f"{self.cache_name}-{self.size}px.npy", self.cache_key())

    def cached(self) -> np.ndarray:
        """The memory-mapped cache of every image, built on first use."""
        if self._array is None and self._verified_path is not None:
            self._array = np.load(self._verified_path, mmap_mode="r", allow_pickle=False)
        if self._array is None:
            entry = self.cache_entry()
            self._array = entry.get_or_build(self.shape, np.uint8, self._fill, what=f"image cache {entry.path}")
            self._verified_path = entry.path
        return self._array

    def _fill(self, array: np.ndarray) -> None:
        import torch

        dataset = _DecodeInto(self.folder, self.paths, self.size, array, batch_size=64)
        workers = self.workers if self.workers is not None else available_cpus()
        if multiprocessing.current_process().daemon:
            workers = 0  # inside a DataLoader worker: no processes of our own
        # The workers write to the file themselves: nothing goes to a GPU, no pinned memory.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, collate_fn=list, **loader_options("cpu", workers)
        )
        # Minutes for a full dataset: say so (rich progress bars show it above themselves).
        print(f"decoding {len(self.paths)} images of {self.folder} into the cache {self.cache_dir} (once)", file=sys.stderr)
        start = time.perf_counter()
        failed = [self.paths[row] for rows in loader for row in rows]
        if failed:
            shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
            raise UserError(
                f"{len(failed)} image(s) under {self.folder} cannot be decoded ({shown}); "
                "run `hashbench data check` on this dataset to list them, then fix them or run with --drop-bad-rows"
            )
        print(f"image cache built: {len(self.paths)} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)
