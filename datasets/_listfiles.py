"""Shared machinery of the image-folder datasets (NUS-WIDE, MS-COCO).

Such a dataset lives in one folder under the data root (``<root>/nuswide``, ``<root>/coco``)
and is read from either

- the community list files ``database.txt``, ``test.txt`` and ``train.txt`` (DeepHash-pytorch,
  HashNet): one image per line, a path relative to the dataset folder, then the multi-hot
  labels, whitespace-separated; or
- the raw annotations, from which the dataset plugin derives the label matrix.

When the three list files are present they are used; otherwise the raw annotations.

Canonical order with list files: the distinct paths in order of first appearance when
reading ``database.txt``, then ``test.txt``, then ``train.txt``; an image listed in two files
(train images are usually also database images) is one item, with the labels of its first
listing (different labels elsewhere are a fault). The `lists` protocol returns those files'
rows as query (test), database and train, whatever the split seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashbench.data import DatasetArrays, HashingDataset
from hashbench.data.cache import default_cache_dir
from hashbench.data.checks import (
    Finding,
    Inspection,
    RowFaults,
    check_files,
    duplicates_after_first,
    refuse_or_drop,
    require_inside,
)
from hashbench.data.images import IMAGE_SIZE, ImageStore
from hashbench.data.splits import SplitProtocol
from hashbench.errors import UserError

# Split name → list file, in the order that defines the canonical order.
LIST_FILES = {"database": "database.txt", "query": "test.txt", "train": "train.txt"}


@dataclass
class ImageTable:
    """Rows read from list files or raw annotations, before any row is dropped."""

    paths: list[str]  # relative to the dataset folder, as written
    labels: np.ndarray  # bool (rows, classes)
    faults: RowFaults
    parts: np.ndarray | None = None  # list files: index into LIST_FILES of each row's file
    classes: tuple[str, ...] | None = None  # raw annotations: the classes derived from them
    counts: dict[str, int] | None = None  # raw annotations: what was read and dropped by design
    notes: list[Finding] | None = None


def read_list_file(path: Path, num_classes: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Parse one list file: (paths, labels, origins, wrong-width mask, bad-value mask)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read list file {path} ({error})") from error
    paths: list[str] = []
    origins: list[str] = []
    rows: list[np.ndarray] = []
    wrong_width: list[bool] = []
    bad_values: list[bool] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        values = fields[1:]
        paths.append(fields[0])
        origins.append(f"{path.name}:{number}")
        row = np.zeros(num_classes, dtype=bool)
        wrong_width.append(len(values) != num_classes)
        valid = all(value in ("0", "1") for value in values)
        bad_values.append(not valid)
        if valid and len(values) == num_classes:
            row[:] = [value == "1" for value in values]
        rows.append(row)
    labels = np.stack(rows) if rows else np.zeros((0, num_classes), dtype=bool)
    return paths, labels, origins, np.array(wrong_width, dtype=bool), np.array(bad_values, dtype=bool)


def list_files_present(folder: Path) -> bool:
    return all((folder / name).is_file() for name in LIST_FILES.values())


def read_list_files(folder: Path, num_classes: int) -> ImageTable:
    """Read database.txt, test.txt and train.txt and flag their row-level faults."""
    paths: list[str] = []
    origins: list[str] = []
    labels: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    wrong_width: list[np.ndarray] = []
    bad_values: list[np.ndarray] = []
    for part_index, file_name in enumerate(LIST_FILES.values()):
        require_inside(folder, folder / file_name)
        file_paths, file_labels, file_origins, file_width, file_values = read_list_file(folder / file_name, num_classes)
        paths += file_paths
        origins += file_origins
        labels.append(file_labels)
        parts.append(np.full(len(file_paths), part_index, dtype=np.int64))
        wrong_width.append(file_width)
        bad_values.append(file_values)
    all_labels = np.concatenate(labels)
    all_parts = np.concatenate(parts)
    faults = RowFaults(origins)
    faults.add("label_width", np.concatenate(wrong_width))
    faults.add("label_values", np.concatenate(bad_values))
    well_formed = ~faults.bad
    # A malformed row is reported as malformed only, not also as unlabelled.
    faults.add("zero_labels", well_formed & ~all_labels.any(axis=1))
    faults.add("duplicate", duplicates_after_first(list(zip(all_parts.tolist(), paths, strict=True))))
    query_part = list(LIST_FILES).index("query")
    queries = {path for path, part in zip(paths, all_parts, strict=True) if part == query_part}
    faults.add("leak", np.array([part != query_part and path in queries for path, part in zip(paths, all_parts, strict=True)], dtype=bool))
    first_labels: dict[str, np.ndarray] = {}
    conflict = np.zeros(len(paths), dtype=bool)
    for row, path in enumerate(paths):
        if not well_formed[row]:
            continue
        first = first_labels.setdefault(path, all_labels[row])
        conflict[row] = not np.array_equal(first, all_labels[row])
    faults.add("conflict", conflict)
    return ImageTable(paths, all_labels, faults, parts=all_parts)


@dataclass(frozen=True)
class ListProtocol(SplitProtocol):
    """The split written in the user's list files: test → query, database, train."""

    name: str = "lists"
    description: str = "the split of the supplied list files (test.txt → query, database.txt, train.txt)"
    topk: int = 5000

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if "list_query" not in arrays.groups:
            raise UserError(
                "protocol lists needs the list files database.txt, test.txt and train.txt in the dataset "
                "folder; these files were loaded from raw annotations, so use the standard protocol"
            )
        splits = {split_name: arrays.groups[f"list_{split_name}"] for split_name in ("query", "database", "train")}
        empty = [file_name for split_name, file_name in LIST_FILES.items() if splits[split_name].size == 0]
        if empty:
            raise UserError(
                f"protocol lists: {' and '.join(empty)} {'lists' if len(empty) == 1 else 'list'} no usable images, "
                "and a run needs query (test.txt), database and train images; fill them in, or use the standard protocol"
            )
        return splits

    def summary(self) -> str:
        return f"{self.description}; the split seed does not change it; mAP@{self.topk}"


class ImageFolderDataset(HashingDataset):
    """Base of datasets stored as image files plus list files or raw annotations."""

    multi_label = True
    folder_name: ClassVar[str]
    image_size: ClassVar[int] = IMAGE_SIZE
    # Published sizes, compared with what was supplied (a difference is a warning only:
    # published lists disagree with each other).
    published_list_sizes: ClassVar[dict[str, int]] = {}
    published_images: ClassVar[int] = 0
    layout_help: ClassVar[str] = ""  # where the files go, for error messages

    # -- to implement ---------------------------------------------------------------------------
    def read_raw(self, folder: Path) -> ImageTable | None:
        """Rows from the raw annotations (with their own row faults), or None when absent."""
        return None

    # -- shared -----------------------------------------------------------------------------------
    def folder(self, root: Path) -> Path:
        return Path(root) / self.folder_name

    def _read(self, root: Path) -> tuple[Path, str, ImageTable]:
        folder = self.folder(root)
        if not folder.is_dir():
            raise UserError(f"dataset {self.name}: folder {folder} not found; {self.layout_help}")
        if list_files_present(folder):
            return folder, "lists", read_list_files(folder, len(self.classes))
        table = self.read_raw(folder)
        if table is None:
            raise UserError(f"dataset {self.name}: neither list files nor raw annotations in {folder}; {self.layout_help}")
        return folder, "raw", table

    def _arrays(self, folder: Path, source: str, table: ImageTable, keep: np.ndarray, cache_dir: Path | None) -> DatasetArrays:
        kept_rows = np.flatnonzero(keep)
        index_of: dict[str, int] = {}
        item_rows: list[int] = []
        for row in kept_rows:
            if table.paths[row] not in index_of:
                index_of[table.paths[row]] = len(item_rows)
                item_rows.append(int(row))
        paths = [table.paths[row] for row in item_rows]
        labels = table.labels[item_rows] if item_rows else np.zeros((0, table.labels.shape[1]), dtype=bool)
        groups: dict[str, np.ndarray] = {}
        if table.parts is not None:
            for part_index, split_name in enumerate(LIST_FILES):
                rows = kept_rows[table.parts[kept_rows] == part_index]
                groups[f"list_{split_name}"] = np.unique([index_of[table.paths[row]] for row in rows]).astype(np.int64)
        images = ImageStore(folder, paths, size=self.image_size, cache_dir=Path(cache_dir) / self.name if cache_dir else None)
        provenance: dict[str, Any] = {
            "folder": str(folder),
            "source": "list files" if source == "lists" else "raw annotations",
            "images": len(paths),
            "dropped_rows": int((~keep).sum()),
        }
        if table.classes is not None and tuple(table.classes) != tuple(self.classes):
            provenance["classes"] = list(table.classes)  # derived from the annotations, differing from the usual
        if table.counts:
            provenance.update(table.counts)
        return DatasetArrays(labels=labels, images=images, groups=groups, provenance=provenance)

    def _count_findings(self, source: str, table: ImageTable, arrays: DatasetArrays) -> tuple[dict[str, int], list[Finding]]:
        counts: dict[str, int] = {"rows read": len(table.paths), "usable images": len(arrays), "classes": arrays.labels.shape[1]}
        findings: list[Finding] = list(table.notes or [])
        if source == "lists":
            for split_name, file_name in LIST_FILES.items():
                size = int(arrays.groups[f"list_{split_name}"].size)
                counts[f"{file_name} images"] = size
                expected = self.published_list_sizes.get(split_name)
                if expected is not None and size != expected:
                    findings.append(
                        Finding("warning", "count", f"{file_name} lists {size} usable images; the published protocol has {expected}")
                    )
        elif self.published_images and len(arrays) != self.published_images:
            findings.append(
                Finding("warning", "count", f"{len(arrays)} labelled images; the published dataset has {self.published_images}")
            )
        if table.counts:
            counts.update(table.counts)
        return counts, findings

    def inspect(self, root: Path, *, decode: bool = True) -> Inspection:
        """Every check of `data check`, plus the arrays with the bad rows dropped."""
        folder, source, table = self._read(root)
        check_files(folder, table.paths, table.faults, decode=decode, size=self.image_size)
        keep = ~table.faults.bad
        arrays = self._arrays(folder, source, table, keep, cache_dir=None)
        counts, findings = self._count_findings(source, table, arrays)
        where = "the list files database.txt, test.txt, train.txt" if source == "lists" else "the raw annotations"
        findings.insert(0, Finding("info", "source", f"read from {where} in {folder}"))
        return Inspection(counts=counts, findings=table.faults.findings(table.paths) + findings, arrays=arrays)

    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> DatasetArrays:
        folder, source, table = self._read(root)
        # Decoding every image is slow (minutes for 200k files): only when bad rows are to be
        # dropped; otherwise an undecodable file is reported when the image cache is built.
        check_files(folder, table.paths, table.faults, decode=drop_bad_rows, size=self.image_size)
        keep = refuse_or_drop(self.name, table.faults, drop_bad_rows)
        arrays = self._arrays(folder, source, table, keep, cache_dir if cache_dir is not None else default_cache_dir(root))
        if drop_bad_rows:
            arrays.provenance["dropped_by_reason"] = table.faults.counts()
        return arrays
