"""Validation of user-supplied dataset files: the checks behind ``hashbench data check``.

Community list files and raw annotations are not trusted: published NUS-WIDE and COCO lists
disagree with each other, some carry all-zero label rows, and images go missing. Each row of
a dataset's image table is checked for

- a path that escapes the dataset folder (absolute, with ``..``, or through a symbolic link
  that leads out of it: paths are judged by where they really lead),
- a missing image file, or (when decoding) an image that cannot be decoded,
- duplicate paths, labels of the wrong width or with values other than 0/1,
- all-zero label rows, and, for list files, query images that also appear in the database or
  the training list, or one image listed with different labels in two files.

Loading runs the same checks (without decoding every image unless bad rows are to be
dropped) and refuses a dataset with faults, unless ``--drop-bad-rows`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np

from hashbench.errors import UserError

# Fault kinds, in the order they are reported, with what a count of them means.
FAULTS: dict[str, str] = {
    "escaping": "rows whose path escapes the dataset folder (absolute, with .., or through a symbolic link)",
    "missing": "rows whose image file is missing",
    "unreadable": "rows whose image cannot be decoded",
    "duplicate": "rows repeating a path already listed in the same file",
    "label_width": "rows with the wrong number of labels",
    "label_values": "rows with labels other than 0/1",
    "zero_labels": "rows with all-zero labels",
    "leak": "rows of database.txt or train.txt whose image is also a query (in test.txt)",
    "conflict": "rows listing an image with other labels than its first listing",
    # embedding files (datasets/features.py)
    "non_finite": "rows whose vector holds NaN or an infinite value, or is missing (values beyond float32, which methods read, count as infinite)",
    "zero_vector": "rows whose vector is all zeros (cosine distance is undefined)",
    "class_id": "rows with a negative class id",
}
MAX_EXAMPLES = 20  # bad rows `data check` prints of each kind, unless asked for all
# What every run needs from a split: something to train on, to search, and to search for.
REQUIRED_SPLITS = ("query", "database", "train")


@dataclass
class Finding:
    """One thing `data check` found: an error fails the check, a warning does not."""

    severity: Literal["error", "warning", "info"]
    kind: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)  # every bad row, for row faults


@dataclass
class Inspection:
    """What a dataset plugin reports about the files under the data root."""

    counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    arrays: Any = None  # DatasetArrays with bad rows dropped, when the files could be read at all


@dataclass
class CheckReport:
    dataset: str
    root: Path
    counts: dict[str, int]
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not any(finding.severity == "error" for finding in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "error"]


def escapes_folder(relative: str) -> bool:
    """True for an absolute path (POSIX or Windows) or one that climbs out with ``..``."""
    if not relative:
        return True
    posix = PurePosixPath(relative)
    windows = PureWindowsPath(relative)
    return posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or ".." in posix.parts or ".." in windows.parts


def is_inside(real: str, real_folder: str) -> bool:
    """Whether the resolved path ``real`` lies in the resolved folder ``real_folder``."""
    prefix = real_folder if real_folder.endswith(os.sep) else real_folder + os.sep
    return real == real_folder or real.startswith(prefix)


def require_inside(folder: Path, path: Path) -> None:
    """Refuse a dataset file (list file, annotations) that a symbolic link takes out of ``folder``."""
    real = os.path.realpath(path)
    if not is_inside(real, os.path.realpath(folder)):
        raise UserError(
            f"{path} is a symbolic link leading out of the dataset folder {folder} (to {real}); "
            "hashbench reads only files inside it: copy the file there"
        )


class _Resolver:
    """Where each path under a folder really leads, resolving each directory only once."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.real_folder = os.path.realpath(folder)
        self._directories: dict[str, str] = {}

    def __call__(self, relative: str) -> str:
        parent, name = os.path.split(relative)
        if parent not in self._directories:
            self._directories[parent] = os.path.realpath(os.path.join(self.folder, parent))
        path = os.path.join(self._directories[parent], name)
        return os.path.realpath(path) if os.path.islink(path) else path


class RowFaults:
    """Per-row fault masks of an image table, and their summary."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.origins = list(origins)  # where each row came from, e.g. "test.txt:12"
        self.masks: dict[str, np.ndarray] = {}
        self.details: dict[str, dict[int, str]] = {}  # kind → row → extra text (e.g. decoder error)

    def __len__(self) -> int:
        return len(self.origins)

    def add(self, kind: str, mask: np.ndarray, details: dict[int, str] | None = None) -> None:
        if kind not in FAULTS:
            raise ValueError(f"unknown fault kind {kind}")
        mask = np.asarray(mask, dtype=bool)
        self.masks[kind] = self.masks[kind] | mask if kind in self.masks else mask
        if details:
            self.details.setdefault(kind, {}).update(details)

    def mask(self, kind: str) -> np.ndarray:
        return self.masks.get(kind, np.zeros(len(self), dtype=bool))

    @property
    def bad(self) -> np.ndarray:
        bad = np.zeros(len(self), dtype=bool)
        for mask in self.masks.values():
            bad |= mask
        return bad

    def counts(self) -> dict[str, int]:
        return {kind: int(self.masks[kind].sum()) for kind in FAULTS if kind in self.masks and self.masks[kind].any()}

    def summary(self) -> str:
        """'2 rows whose image file is missing, 1 rows with all-zero labels'."""
        return ", ".join(f"{count} {FAULTS[kind]}" for kind, count in self.counts().items())

    def findings(self, paths: Sequence[str]) -> list[Finding]:
        found = []
        for kind, count in self.counts().items():
            rows = np.flatnonzero(self.masks[kind])
            examples = []
            for row in rows:
                extra = self.details.get(kind, {}).get(int(row))
                examples.append(f"{self.origins[row]}: {paths[row]}" + (f" ({extra})" if extra else ""))
            found.append(Finding("error", kind, f"{count} {FAULTS[kind]}", count, examples))
        return found


def check_files(
    folder: Path,
    paths: Sequence[str],
    faults: RowFaults,
    *,
    decode: bool = False,
    size: int = 224,
    workers: int | None = None,
) -> None:
    """Flag escaping, missing and (when ``decode``) undecodable image files.

    A path escapes when it is absolute or climbs out with ``..``, or when a symbolic link on
    the way leads out of the dataset folder: paths are judged by where they really lead.
    """
    from hashbench.data.images import available_cpus, try_decode

    escaping = np.array([escapes_folder(path) for path in paths], dtype=bool)
    resolve = _Resolver(folder)
    missing = np.zeros(len(paths), dtype=bool)
    outside: dict[int, str] = {}
    # Resolving and checking existence touch only directory entries: cheap even for 200k files.
    for row, path in enumerate(paths):
        if escaping[row]:
            continue
        real = resolve(path)
        if not is_inside(real, resolve.real_folder):
            escaping[row] = True
            outside[row] = f"a symbolic link to {real}"
        elif not os.path.isfile(real):
            missing[row] = True
    faults.add("escaping", escaping, outside)
    faults.add("missing", missing)
    if not decode:
        return
    candidates = np.flatnonzero(~escaping & ~missing)
    # Decode exactly as the image store will, so a file that passes here also loads there.
    with ThreadPoolExecutor(max_workers=workers or available_cpus()) as pool:
        results = list(pool.map(lambda row: try_decode(folder / paths[row], size)[1], candidates))
    unreadable = np.zeros(len(paths), dtype=bool)
    details = {}
    for row, error in zip(candidates, results, strict=True):
        if error is not None:
            unreadable[row] = True
            details[int(row)] = error
    faults.add("unreadable", unreadable, details)


def check_labels(labels: np.ndarray, faults: RowFaults) -> None:
    """Flag rows whose (bool) labels are all zero."""
    faults.add("zero_labels", ~np.asarray(labels, dtype=bool).any(axis=1))


def duplicates_after_first(keys: Sequence[Any]) -> np.ndarray:
    """True for every occurrence of a key after its first."""
    seen: set[Any] = set()
    mask = np.zeros(len(keys), dtype=bool)
    for row, key in enumerate(keys):
        if key in seen:
            mask[row] = True
        seen.add(key)
    return mask


def refuse_or_drop(dataset: str, faults: RowFaults, drop_bad_rows: bool) -> np.ndarray:
    """The rows to keep: all of them when clean; refuse (UserError) unless dropping was asked for."""
    bad = faults.bad
    if bad.any() and not drop_bad_rows:
        raise UserError(
            f"dataset {dataset}: the supplied files have problems ({faults.summary()}); run "
            f"`hashbench data check {dataset}` to list them, fix them, or pass --drop-bad-rows to run without those rows"
        )
    return ~bad


def check_dataset(
    plugin: Any, root: Path, *, protocol: str | None = None, decode: bool = True, split_seed: int = 0
) -> CheckReport:
    """Validate what the user supplied for ``plugin`` under the data root ``root``.

    Plugins with an ``inspect(root, decode=...)`` method report their own file-level findings;
    for every plugin the loaded labels are checked and the protocol is drawn once, to prove it
    can be drawn from these files.
    """
    from hashbench.data import check_loaded, load_dataset
    from hashbench.data.labels import LabelError
    from hashbench.data.splits import draw_split

    def refused(error: UserError) -> CheckReport:
        # labels that cannot be used are a problem of the labels, not of missing files
        kind = "labels" if isinstance(error, LabelError) else "unreadable-source"
        return CheckReport(plugin.name, root, {}, [Finding("error", kind, str(error))])

    root = Path(root)
    inspect = getattr(plugin, "inspect", None)
    if inspect is not None:
        try:
            inspection = inspect(root, decode=decode)
            check_loaded(plugin, inspection.arrays)
        except UserError as error:
            return refused(error)
    else:
        try:
            arrays = load_dataset(plugin, root)
        except UserError as error:
            return refused(error)
        inspection = Inspection(counts={"images": len(arrays)}, arrays=arrays)
        faults = RowFaults([f"row {row}" for row in range(len(arrays))])
        check_labels(arrays.labels, faults)
        inspection.findings.extend(faults.findings([""] * len(arrays)))
    counts = dict(inspection.counts)
    findings = list(inspection.findings)
    arrays = inspection.arrays
    if arrays is not None:
        width = arrays.labels.shape[1]
        if plugin.classes and width != len(plugin.classes):
            findings.append(
                Finding("error", "label_width", f"labels have {width} columns, the dataset has {len(plugin.classes)} classes")
            )
        try:
            split_protocol = plugin.protocol(protocol)
            manifest = draw_split(plugin.name, split_protocol, arrays, split_seed)
            sizes = ", ".join(f"{name} {indices.size}" for name, indices in manifest.splits.items())
            dropped = any(f.severity == "error" and f.kind in FAULTS for f in findings)  # row faults, not e.g. a file's neighbors
            suffix = " (after dropping the bad rows)" if dropped else ""
            empty = [name for name in (*REQUIRED_SPLITS, "val") if name in manifest.splits and manifest.splits[name].size == 0]
            empty += [name for name in REQUIRED_SPLITS if name not in manifest.splits]
            if empty:
                findings.append(
                    Finding(
                        "error",
                        "protocol",
                        f"protocol {split_protocol.name} draws{suffix} {sizes}: no {' or '.join(empty)} images, "
                        "and a run needs query, database and train images",
                    )
                )
            else:
                findings.append(Finding("info", "protocol", f"protocol {split_protocol.name} draws{suffix}: {sizes}"))
        except (UserError, ValueError) as error:
            findings.append(Finding("error", "protocol", f"the protocol cannot be drawn from these files: {error}"))
    return CheckReport(plugin.name, root, counts, findings)
