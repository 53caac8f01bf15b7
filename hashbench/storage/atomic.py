"""Files: atomic writes (a killed process never leaves a half-written file behind) and the
SHA-256 of a file's content.

Each write goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target (``os.replace`` is atomic on POSIX and Windows). A write that fails (a full,
read-only or forbidden disk) removes its temporary file, leaves the old file as it was and
raises :class:`WriteError`, which names the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hashbench.errors import UserError

# mkstemp creates files readable by their owner only; a results directory is often shared,
# so give written files the permissions a plain open() would (0o666 less the umask).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class WriteError(UserError, OSError):
    """A file could not be written (disk full, read-only, no permission).

    An OSError, so code that survives a failed write (``except OSError``) still does, with
    ``errno``, ``strerror`` and ``filename`` set; and a UserError, so the command line shows
    it as one line: "cannot write PATH: No space left on device".
    """

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        OSError.__init__(self, error.errno, reason, str(path))
        self.path = Path(path)
        self.message = f"cannot write {path}: {reason}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # a worker process sends it back to its parent
        return _rebuild_write_error, (str(self.path), self.errno, self.strerror)


def _rebuild_write_error(path: str, code: int | None, strerror: str) -> WriteError:
    return WriteError(Path(path), OSError(code, strerror))


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Write ``path`` through a temporary file in its folder: the block writes the temporary
    file (by name: a memory map, ``torch.save``); on success it is flushed to disk and
    renamed over ``path``, and the folder entry is flushed too; on failure it is removed and
    ``path`` is left as it was (an OSError becomes a :class:`WriteError` naming ``path``).

    The one atomic writer: :func:`write_bytes`, the feature caches and the training
    checkpoints all go through it."""
    path = Path(path)
    temporary: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        temporary = Path(name)
        os.fchmod(descriptor, _FILE_MODE)
        os.close(descriptor)
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
        _fsync_folder(path.parent)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise WriteError(path, error) from error
        raise


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk, where the system allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as temporary, os.fdopen(os.open(temporary, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        handle.write(data)


def write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=False, default=_json_default, allow_nan=True)
    write_bytes(path, (text + "\n").encode())


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's content, read in blocks of a megabyte."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
