"""Any embedding set as a benchmark dataset: ``--datasets features:PATH`` or a
``[datasets.NAME]`` table in an experiment file.

Files (the format from the suffix, or ``format = ...``):

- ``.npy``: the vectors, (N, d).
- ``.npz``: ``features`` (N, d), with ``labels`` optional; or a declared split ``train`` and
  ``test`` (with ``train_labels`` and ``test_labels`` optional, and ``neighbors`` as below).
- Parquet (``.parquet``; needs pyarrow): one list column holds the vectors (``column =
  ...`` when there are several); ``labels = "COLUMN"`` names an integer column of class ids or
  a list column of multi-hot rows.
- HDF5 (``.hdf5``, ``.h5``; needs h5py) in ann-benchmarks' layout: ``train`` (the database),
  ``test`` (the queries), ``neighbors`` (the test rows' nearest train rows, nearest first) and
  ``distances``; its ``distance`` attribute (``euclidean`` or ``angular``) sets the metric.

Canonical order: the vectors as stored (a declared split: ``train`` rows, then ``test`` rows).
Vectors are read as float32, as methods see them.

Relevance: shared labels when the file has labels (class ids or multi-hot), else (or with
``relevance = "neighbours"``) the K = ``neighbours`` (default 100) true nearest neighbours of
each query in the database, Euclidean or cosine (``metric``), exact, ties to the lower
database position (:mod:`hashbench.data.neighbours`), cached by content hash; under the declared
split of an HDF5 / npz file that holds ``neighbors`` with at least K columns, its first K
(``ground_truth = "exact"`` computes them instead; `hashbench data check` compares a sample).
Those K columns are checked on every test row before anything runs: a row of ids outside
``train`` (ann-benchmarks' padding -1 included, an all -1 row most of all) or naming one train
row twice is not a ground truth, and loading refuses the file (`data check` lists the rows).

Protocols (``split = ...`` picks the default; ``--protocol`` wins):

- ``declared`` (the default when the file declares a split): query = ``test``, database =
  ``train``, train = the whole database, as ann-benchmarks builds its indexes on all of
  ``train``; ``train_size = N`` draws N of it instead.
- ``standard`` (the default otherwise): ``query_size`` (default 1,000) random queries from all
  items, the rest is the database, train = the whole database (or ``train_size`` of it).
- ``standard-val``: ``standard`` plus ``val_size`` (default 1,000) validation items from the
  database, disjoint from train; only with labels (methods that select a model score the
  validation split by labels).

mAP is at ``topk`` (default 1,000). Every setting that changes what a run computes (the
file's SHA-256, sizes, relevance, metric, K, cut-off) is part of the protocols' ``version``,
so runs of two different files, or of one file with other settings, are never shared, and
runs of a file that changed since are stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashbench.data import DatasetArrays, HashingDataset
from hashbench.data.cache import CacheEntry
from hashbench.data.checks import Finding, Inspection, RowFaults, refuse_or_drop
from hashbench.data.labels import LabelError, class_id_problem
from hashbench.data.neighbours import NEIGHBOURS_VERSION, ProgressLine, exact_neighbours
from hashbench.data.splits import SplitProtocol, sample_count
from hashbench.errors import UserError
from hashbench.storage import atomic

FORMATS = {".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet", ".hdf5": "hdf5", ".h5": "hdf5"}
RELEVANCE = ("labels", "neighbours")
METRICS = ("euclidean", "cosine")
# ann-benchmarks' names of the distances hashbench supports
FILE_METRICS = {"euclidean": "euclidean", "angular": "cosine", "cosine": "cosine"}
_BLOCK = 65536  # rows scanned at a time
NAME_LENGTH = 64  # longest dataset name taken from a file's stem (see Features.default_name)


@dataclass(frozen=True)
class FeatureSettings:
    """The settings of one embedding file (a ``[datasets.NAME]`` table)."""

    path: str
    format: str | None = None  # None: from the suffix
    metric: str | None = None  # None: the file's (HDF5 ``distance``), else euclidean
    split: str | None = None  # the default protocol; None: declared when the file has one
    labels: str | bool | None = None  # array / column of labels; False ignores them
    relevance: str | None = None  # None: labels when there are labels, else neighbours
    neighbours: int = 100
    topk: int = 1000
    query_size: int = 1000
    train_size: int | None = None  # None: the whole database
    val_size: int = 1000
    column: str | None = None  # Parquet: the vector column
    ground_truth: str | None = None  # "file" (its `neighbors`, the default when it has them) or "exact"

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str) -> FeatureSettings:
        from pydantic import ValidationError

        model = _table_schema()
        try:
            values = model.model_validate(dict(table)).model_dump(exclude_unset=True)
        except ValidationError as error:
            raise UserError(_table_message(error.errors()[0], where, model)) from None
        values["path"] = str(Path(values["path"]).expanduser().resolve())
        return cls(**values)

    @property
    def file_format(self) -> str:
        if self.format is not None:
            return self.format
        suffix = Path(self.path).suffix.lower()
        if suffix not in FORMATS:
            raise UserError(
                f"{self.path}: cannot tell the format from the suffix {suffix!r}; name files .npy, .npz, "
                ".parquet or .hdf5, or set format = \"npy\" | \"npz\" | \"parquet\" | \"hdf5\""
            )
        return FORMATS[suffix]


# The settings that take one of a few values, and the positive integers.
_CHOICES = {
    "format": tuple(sorted(set(FORMATS.values()))), "metric": METRICS, "relevance": RELEVANCE,
    "split": ("declared", "standard", "standard-val"), "ground_truth": ("file", "exact"),
}
_COUNTS = ("neighbours", "topk", "query_size", "train_size", "val_size")


@cache
def _table_schema() -> type:
    """FeatureSettings as a strict pydantic model, its fields those of the dataclass (built on
    first use: listing the datasets imports no pydantic)."""
    import typing
    from typing import Annotated, Literal

    from pydantic import AfterValidator, ConfigDict, Field, create_model
    from pydantic_core import PydanticCustomError

    def not_true(value: Any) -> Any:
        if value is True:
            raise PydanticCustomError("labels_true", "true names no array")
        return value

    hints = typing.get_type_hints(FeatureSettings)
    overrides: dict[str, Any] = {key: Literal[allowed] | None for key, allowed in _CHOICES.items()}
    overrides.update({key: Annotated[int, Field(ge=1)] | None for key in _COUNTS})
    overrides["labels"] = Annotated[str | bool, AfterValidator(not_true)] | None
    definitions = {
        item.name: (overrides.get(item.name, hints[item.name]), ... if item.default is MISSING else item.default)
        for item in fields(FeatureSettings)
    }
    return create_model("FeatureTable", __config__=ConfigDict(strict=True, extra="forbid"), **definitions)


def _table_message(error: Mapping[str, Any], where: str, model: type) -> str:
    """One line for a pydantic error of a [datasets.NAME] table: the table, the setting, what
    is wrong and what to give instead."""
    key, kind, value = str(error["loc"][0]), error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"{where}: unknown setting {key!r}; known settings: {', '.join(sorted(model.model_fields))}"
    if kind == "missing":
        return f"{where}: needs path = \"FILE\" (.npy, .npz, .parquet, .hdf5)"
    if key == "labels":
        return f"{where}: labels must name an array or column, or be false, got {value!r}"
    if kind == "literal_error":
        return f"{where}: {key} {value!r}: expected one of {', '.join(_CHOICES[key])}"
    if key in _COUNTS:
        return f"{where}: {key} must be a positive integer, got {value!r}"
    return f"{where}: {key} must be a string, got {value!r}"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """SHA-256 of the file's bytes (remembered per path, size and modification time)."""
    try:
        status = os.stat(path)
    except OSError as error:
        raise UserError(f"features file {path}: {error.strerror or error}") from error
    key = (path, status.st_size, status.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = atomic.file_sha256(Path(path))
    return _DIGESTS[key]


def _optional(module: str, what: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"reading {what} needs the {module} package, which is not installed: "
            f"pip install {module} (or pip install 'hashbench[{extra}]')"
        ) from None


# --------------------------------------------------------------------------------------------
# reading the files


@dataclass
class RawFile:
    """What a file holds, before any check: vectors in canonical order and what came with them."""

    vectors: Any  # (N, d) numeric array or read-only memory map
    labels: np.ndarray | None = None  # class ids (N,) or multi-hot (N, C), as stored
    train_rows: int | None = None  # a declared split: the first train_rows rows are `train`
    neighbours: np.ndarray | None = None  # the file's `neighbors` of the test rows (train positions)
    metric: str | None = None  # the file's distance
    problems: list[str] = field(default_factory=list)  # label arrays that do not fit, and so on


def _container(path: str, file_format: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A file's named arrays (read lazily where the format allows) and its attributes."""
    try:
        if file_format == "npy":
            return {"features": np.load(path, mmap_mode="r", allow_pickle=False)}, {}
        if file_format == "npz":
            archive = np.load(path, allow_pickle=False)
            return {name: archive[name] for name in archive.files}, {}
        h5py = _optional("h5py", "HDF5 files", "features")
        with h5py.File(path, "r") as handle:
            arrays = {name: handle[name][...] for name in handle if isinstance(handle[name], h5py.Dataset)}
            attributes = {key: handle.attrs[key] for key in handle.attrs}
        return arrays, attributes
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise UserError(f"features file {path}: cannot read it as {file_format} ({error})") from error


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def file_metric(attributes: Mapping[str, Any], settings: FeatureSettings) -> str | None:
    """The metric an HDF5 file declares (``distance``), refused when hashbench has no such one."""
    declared = _text(attributes.get("distance", "")).lower()
    if declared and declared not in FILE_METRICS and settings.metric is None:
        raise UserError(
            f"features file {settings.path} declares distance {declared!r}; hashbench computes Euclidean and "
            "cosine (angular) neighbours: set metric = \"euclidean\" or \"cosine\" to use one of them anyway"
        )
    return FILE_METRICS.get(declared)


def _labels_of(arrays: dict[str, Any], name: str, rows: int, what: str, problems: list[str]) -> np.ndarray | None:
    labels = np.asarray(arrays[name])
    if labels.ndim == 0 or labels.shape[0] != rows:
        problems.append(f"{what}: {labels.shape[0] if labels.ndim else 0} label rows for {rows} vectors")
        return None
    return labels


def read_arrays(settings: FeatureSettings, file_format: str) -> RawFile:
    """.npy, .npz and HDF5 files."""
    arrays, attributes = _container(settings.path, file_format)
    label_name = settings.labels if isinstance(settings.labels, str) else "labels"
    metric = file_metric(attributes, settings)
    if "features" in arrays:
        vectors = arrays["features"]
        raw = RawFile(vectors, metric=metric)
        if settings.labels is not False and label_name in arrays:
            raw.labels = _labels_of(arrays, label_name, len(vectors), f"array {label_name!r}", raw.problems)
        elif isinstance(settings.labels, str):
            raw.problems.append(f"labels = {settings.labels!r}: the file has no such array")
        return raw
    if "train" in arrays and "test" in arrays:
        train, test = np.asarray(arrays["train"]), np.asarray(arrays["test"])
        if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
            raise UserError(
                f"features file {settings.path}: train {train.shape} and test {test.shape} must be "
                "matrices of vectors of one dimension"
            )
        raw = RawFile(np.concatenate([train, test]), train_rows=len(train), metric=metric)
        names = (f"train_{label_name}", f"test_{label_name}")
        if settings.labels is not False and all(name in arrays for name in names):
            parts = [_labels_of(arrays, name, len(part), f"array {name!r}", raw.problems) for name, part in zip(names, (train, test), strict=True)]
            if all(part is not None for part in parts):
                if parts[0].ndim != parts[1].ndim or parts[0].shape[1:] != parts[1].shape[1:]:
                    raw.problems.append(f"{names[0]} {parts[0].shape} and {names[1]} {parts[1].shape} differ in width")
                else:
                    raw.labels = np.concatenate(parts)
        elif isinstance(settings.labels, str):
            raw.problems.append(f"labels = {settings.labels!r}: the file has no arrays {names[0]!r} and {names[1]!r}")
        if "neighbors" in arrays:
            neighbours = np.asarray(arrays["neighbors"])
            if neighbours.ndim == 2 and neighbours.shape[0] == len(test) and neighbours.dtype.kind in "iu":
                raw.neighbours = neighbours.astype(np.int64)
            else:
                raw.problems.append(f"neighbors {neighbours.shape} {neighbours.dtype} is not one integer row per test vector")
        return raw
    names = ", ".join(sorted(arrays)) or "none"
    raise UserError(
        f"features file {settings.path}: holds the arrays {names}; expected features (and labels), "
        "or train and test (ann-benchmarks' layout)"
    )


def read_parquet(settings: FeatureSettings) -> RawFile:
    """A Parquet table: one list column of vectors, optionally a label column."""
    pa = _optional("pyarrow", "Parquet files", "features")
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(settings.path)
    except (OSError, pa.ArrowException) as error:
        raise UserError(f"features file {settings.path}: cannot read it as Parquet ({error})") from error
    label_column = settings.labels if isinstance(settings.labels, str) else None
    candidates = [name for name in table.column_names if _is_list(table.schema.field(name).type) and name != label_column]
    if settings.column is not None:
        if settings.column not in table.column_names:
            raise UserError(f"features file {settings.path}: no column {settings.column!r}; columns: {', '.join(table.column_names)}")
        name = settings.column
    elif len(candidates) == 1:
        name = candidates[0]
    else:
        raise UserError(
            f"features file {settings.path}: {'no' if not candidates else 'several'} list columns of vectors "
            f"({', '.join(candidates) or 'columns: ' + ', '.join(table.column_names)}); set column = \"NAME\""
        )
    vectors = _list_column(table.column(name).combine_chunks(), f"column {name!r}")
    raw = RawFile(vectors)
    if label_column is not None:
        if label_column not in table.column_names:
            raw.problems.append(f"labels = {label_column!r}: the table has no such column")
        else:
            column = table.column(label_column).combine_chunks()
            if pa.types.is_integer(column.type):
                ids = column.to_numpy(zero_copy_only=False)
                if column.null_count:
                    raw.problems.append(f"column {label_column!r} has {column.null_count} rows without a class id")
                else:
                    raw.labels = ids.astype(np.int64)
            elif _is_list(column.type):
                raw.labels = _list_column(column, f"column {label_column!r}")
            else:
                raw.problems.append(f"column {label_column!r} is {column.type}: expected integer class ids or lists of multi-hot labels")
    return raw


def _is_list(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _list_column(column: Any, what: str) -> np.ndarray:
    """A list column of equal-length rows as a float32 matrix; a missing row is a row of NaN."""
    import pyarrow as pa

    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
        starts = np.arange(len(column), dtype=np.int64) * width + column.offset * width
        lengths = np.full(len(column), width)
    else:
        offsets = np.asarray(column.offsets, dtype=np.int64)
        starts, lengths = offsets[:-1], np.diff(offsets)
        widths = np.unique(lengths[valid])
        if widths.size > 1:
            raise UserError(f"{what}: rows of {widths.size} different lengths ({', '.join(map(str, widths[:5]))}, ...); vectors need one dimension")
        width = int(widths[0]) if widths.size else 0
    values = column.values.to_numpy(zero_copy_only=False)  # offsets index into the whole child array
    if values.dtype.kind not in "fiub":
        raise UserError(f"{what}: values of type {column.type.value_type} are not numbers")
    out = np.full((len(column), width), np.nan, dtype=np.float32)
    rows = np.flatnonzero(valid)
    out[rows] = values[starts[rows, None] + np.arange(width)]
    return out


# --------------------------------------------------------------------------------------------
# checks


def _non_finite_rows(vectors: Any) -> np.ndarray:
    """Rows with NaN or an infinite value as methods see them: in float32, so a float64 value
    beyond float32's range (about 3.4e38) counts as infinite."""
    bad = np.zeros(len(vectors), dtype=bool)
    if np.asarray(vectors[:0]).dtype.kind != "f":
        return bad
    for start in range(0, len(vectors), _BLOCK):
        with np.errstate(over="ignore"):
            block = np.asarray(vectors[start : start + _BLOCK]).astype(np.float32, copy=False)
        bad[start : start + _BLOCK] = ~np.isfinite(block).all(axis=1)
    return bad


def neighbour_list_faults(neighbours: np.ndarray, train_rows: int) -> list[Finding]:
    """What is wrong with a file's ``neighbors`` (the columns a run uses), one error per kind,
    listing the test rows: all -1 (no ground truth at all), ids outside ``train`` (0 ..
    ``train_rows`` − 1; -1 padding included), and one train row named twice."""
    ids = np.asarray(neighbours, dtype=np.int64)
    if ids.size == 0:
        return []
    outside = (ids < 0) | (ids >= train_rows)
    empty = (ids == -1).all(axis=1)
    out_of_range = outside.any(axis=1) & ~empty
    # repeats among the ids inside train: each outside entry gets a distinct negative stand-in
    stand_in = -1 - np.arange(ids.shape[1], dtype=np.int64)
    ordered = np.sort(np.where(outside, stand_in[None, :], ids), axis=1)
    twice = ordered[:, 1:] == ordered[:, :-1]
    repeated = twice.any(axis=1)
    where = f"outside train (0..{train_rows - 1})"
    found = []
    for mask, what, detail in (
        (empty, "test rows whose neighbors are all -1 (no ground truth)", None),
        (out_of_range, f"test rows whose neighbors name ids {where}", lambda row: ids[row][outside[row]][0]),
        (repeated, "test rows whose neighbors name one train row twice", lambda row: ordered[row, 1:][twice[row]][0]),
    ):
        rows = np.flatnonzero(mask)
        if rows.size:
            examples = [f"test row {row}" + (f": id {int(detail(row))}" if detail else "") for row in rows]
            found.append(Finding("error", "neighbours", f"{rows.size} {what}", int(rows.size), examples))
    return found


def _zero_rows(vectors: Any) -> np.ndarray:
    zero = np.zeros(len(vectors), dtype=bool)
    for start in range(0, len(vectors), _BLOCK):
        zero[start : start + _BLOCK] = ~np.asarray(vectors[start : start + _BLOCK]).any(axis=1)
    return zero


def _as_items(vectors: Any) -> np.ndarray:
    """Each row as one opaque item (its bytes), so rows compare and sort as wholes."""
    array = np.ascontiguousarray(vectors)
    return array.view(np.dtype((np.void, array.dtype.itemsize * array.shape[1]))).ravel()


def duplicate_rows(vectors: Any) -> np.ndarray:
    """True for every row that repeats an earlier row's vector exactly (same bytes)."""
    _, first = np.unique(_as_items(vectors), return_index=True)
    duplicate = np.ones(len(vectors), dtype=bool)
    duplicate[first] = False
    return duplicate


def _rows_in(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """True for each row of ``rows`` equal (same bytes) to some row of ``others``."""
    return np.isin(_as_items(rows), _as_items(others))


@dataclass
class Checked:
    """A file read and checked: the arrays to run on (bad rows dropped when asked) and the faults."""

    vectors: Any
    labels: np.ndarray  # bool (N, C); C = 0 without labels
    has_labels: bool
    groups: dict[str, np.ndarray]
    neighbours: np.ndarray | None  # the file's, still valid for the kept rows
    metric: str
    relevance: str  # "labels" or "neighbours"
    faults: RowFaults | None
    keep: np.ndarray | None  # rows kept, when some were dropped
    origins: list[str]


def _origins(raw: RawFile, rows: int) -> list[str]:
    if raw.train_rows is None:
        return [f"row {row}" for row in range(rows)]
    return [f"train row {row}" for row in range(raw.train_rows)] + [f"test row {row}" for row in range(rows - raw.train_rows)]


# --------------------------------------------------------------------------------------------
# protocols


@dataclass(frozen=True)
class FeatureProtocol(SplitProtocol):
    """The declared split of a file, or queries drawn at random; train = the whole database
    unless ``train_size`` is given."""

    name: str
    description: str
    topk: int
    version: str
    declared: bool = False
    query_size: int = 1000
    train_size: int | None = None
    val_size: int | None = None

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.declared:
            if "test" not in arrays.groups:
                raise UserError("protocol declared: the file declares no split (it needs train and test arrays)")
            query, database = arrays.groups["test"], arrays.groups["train"]
        else:
            everything = np.arange(len(arrays))
            if self.query_size >= everything.size:
                raise UserError(
                    f"protocol {self.name}: {self.query_size} random queries need more than the {everything.size} "
                    "vectors of the file; set query_size = N (fewer queries) in the dataset's [datasets.NAME] table"
                )
            query = sample_count(everything, self.query_size, rng, "query")
            database = np.setdiff1d(everything, query)
        splits = {"query": query, "database": database}
        if self.train_size is not None:
            splits["train"] = sample_count(database, self.train_size, rng, "train")
            if self.val_size is not None:
                splits["val"] = sample_count(np.setdiff1d(database, splits["train"]), self.val_size, rng, "val")
        elif self.val_size is not None:
            splits["val"] = sample_count(database, self.val_size, rng, "val")
            splits["train"] = np.setdiff1d(database, splits["val"])
        else:
            splits["train"] = database
        return splits

    def summary(self) -> str:
        return self.description


# --------------------------------------------------------------------------------------------
# the dataset


@dataclass
class FeatureArrays(DatasetArrays):
    """A loaded embedding set; relevance by true nearest neighbours when it has no labels."""

    settings: FeatureSettings | None = None
    sha256: str = ""
    relevance: str = "labels"
    metric: str = "euclidean"
    file_neighbours: np.ndarray | None = None  # the file's, for the declared split
    cache_dir: Path | None = None

    def neighbour_relevance(self, manifest: Any) -> np.ndarray | None:
        """Each query's K true nearest neighbours (database positions) under ``manifest``;
        None when relevance is shared labels."""
        if self.relevance != "neighbours":
            return None
        k = self.settings.neighbours
        query, database = manifest.splits["query"], manifest.splits["database"]
        declared = "test" in self.groups and np.array_equal(query, self.groups["test"]) and np.array_equal(database, self.groups["train"])
        if declared and self.file_neighbours is not None and self.file_neighbours.shape[1] >= min(k, database.size):
            return self.file_neighbours[:, :k]  # only kept when usable (see _check)
        key = {
            "kind": "neighbours",
            "version": NEIGHBOURS_VERSION,
            "data": self.sha256,
            "manifest": manifest.hash,
            "metric": self.metric,
            "k": k,
            "dropped": self.provenance.get("dropped_rows", 0),
        }
        shape = (int(query.size), min(k, int(database.size)))

        def fill(out: np.ndarray) -> None:
            what = f"exact {self.metric} {shape[1]}-NN of {query.size} queries in {database.size} items"
            print(f"computing the {what} (cached for later runs)", file=sys.stderr)
            try:
                exact_neighbours(
                    self.features[query], self.features[database], k, metric=self.metric, out=out, progress=ProgressLine(what)
                )
            except UserError as error:  # raised inside a cache build: nothing is written
                raise UserError(f"features file {self.settings.path}: {error}") from None

        if self.cache_dir is None:
            out = np.empty(shape, dtype=np.int64)
            fill(out)
            return out
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        entry = CacheEntry(Path(self.cache_dir) / "neighbours" / f"{self.dataset or 'features'}-{digest}.npy", key)
        return np.asarray(entry.get_or_build(shape, np.int64, fill, what=f"neighbour cache {entry.path}"))


def _placeholder_protocols() -> dict[str, FeatureProtocol]:
    """What `hashbench list` shows for the bare plugin (a configured file has its own)."""
    return {
        "standard": FeatureProtocol("standard", "1,000 random queries, database = rest, train = database", 1000, "1"),
        "standard-val": FeatureProtocol("standard-val", "standard plus 1,000 validation items", 1000, "1", val_size=1000),
        "declared": FeatureProtocol("declared", "query = test, database = train, train = database", 1000, "1", declared=True),
    }


class Features(HashingDataset):
    """An embedding file named on the command line (``features:PATH``) or in a table."""

    name = "features"
    description = "any embedding set: .npy, .npz, Parquet or ann-benchmarks HDF5 (--datasets features:PATH)"
    classes = ()
    multi_label = True
    protocols = _placeholder_protocols()
    default_protocol = "standard"
    layout_help = (
        "name the file with --datasets features:PATH, or in an experiment file's [datasets.NAME] table "
        "(path = \"FILE\"); it need not be under the data root"
    )
    # What `features:ARGUMENT` sets, and the configured file (None for the bare plugin).
    argument_setting: ClassVar[str] = "path"
    settings: ClassVar[FeatureSettings | None] = None

    # ---- configuration --------------------------------------------------------------------

    @classmethod
    def default_name(cls, argument: str) -> str:
        """The dataset name of ``features:ARGUMENT``: the file's stem, safe in file names.

        A stem longer than ``NAME_LENGTH`` is cut, and ends in 8 hex digits of its SHA-256
        (``long-stem…-1a2b3c4d``): the name goes into split manifests' and caches' file names,
        which a file system limits to 255 bytes; the digest keeps files whose long names share
        a beginning apart, and the run records name the file itself."""
        original = Path(argument).stem
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", original).strip("-.") or "features"
        if len(stem) > NAME_LENGTH:
            digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:8]
            stem = f"{stem[: NAME_LENGTH - 9].rstrip('-.')}-{digest}"
        return stem

    @classmethod
    def configured(cls, name: str, table: Mapping[str, Any], where: str) -> type[Features]:
        """A dataset class named ``name`` reading the file of ``table``'s settings."""
        settings = FeatureSettings.from_table(table, where)
        settings.file_format  # noqa: B018 (refuses an unknown suffix now, not at load)
        description = f"embedding file {settings.path}"
        return type(f"Features[{name}]", (cls,), {"name": name, "settings": settings, "description": description})

    def _settings(self) -> FeatureSettings:
        if self.settings is None:
            raise UserError(
                "dataset features needs a file: --datasets features:PATH, or a [datasets.NAME] table with "
                "path = \"FILE\" in the experiment file"
            )
        if not Path(self.settings.path).is_file():
            raise UserError(f"dataset {self.name}: features file {self.settings.path} not found")
        return self.settings

    # ---- protocols ------------------------------------------------------------------------

    def protocol(self, name: str | None):
        if self.settings is None:
            return super().protocol(name)
        if "protocols" not in self.__dict__:
            self.protocols, self.default_protocol = self._protocols()
        return super().protocol(name)

    def _peek(self, settings: FeatureSettings) -> tuple[bool, bool, str | None]:
        """Whether the file declares a split, whether it holds labels, and its metric, from its
        array names and attributes only."""
        file_format = settings.file_format
        names: set[str] = set()
        metric = None
        if file_format == "npz":
            try:
                with zipfile.ZipFile(settings.path) as archive:
                    names = {Path(member).stem for member in archive.namelist()}
            except (OSError, zipfile.BadZipFile) as error:
                raise UserError(f"features file {settings.path}: cannot read it as npz ({error})") from error
        elif file_format == "hdf5":
            h5py = _optional("h5py", "HDF5 files", "features")
            try:
                with h5py.File(settings.path, "r") as handle:
                    names = set(handle)
                    metric = file_metric(handle.attrs, settings)
            except OSError as error:
                raise UserError(f"features file {settings.path}: cannot read it as HDF5 ({error})") from error
        elif file_format == "parquet":
            return False, isinstance(settings.labels, str), None
        declared = "features" not in names and {"train", "test"} <= names
        label = settings.labels if isinstance(settings.labels, str) else "labels"
        wanted = {f"train_{label}", f"test_{label}"} if declared else {label}
        return declared, settings.labels is not False and wanted <= names, metric

    def _protocols(self) -> tuple[dict[str, FeatureProtocol], str]:
        settings = self._settings()
        declared, has_labels, file_metric = self._peek(settings)
        digest = file_sha256(settings.path)
        # everything that changes a run's numbers: not the path (moving the file keeps its runs)
        # nor the default protocol
        identity: dict[str, Any] = {**asdict(settings), "path": None, "split": None, "sha256": digest}
        labelled = (settings.relevance or ("labels" if has_labels else "neighbours")) == "labels"
        if not labelled:  # how the ground truth is computed: a fix to it makes the runs stale
            identity["neighbours_version"] = NEIGHBOURS_VERSION
        version = "1+" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        if labelled:
            relevance = "relevant = shares a label"
        else:
            metric = settings.metric or file_metric or "euclidean"
            relevance = f"relevant = the {settings.neighbours} nearest neighbours ({metric})"
        train = "train = database" if settings.train_size is None else f"train {settings.train_size} from database"
        tail = f"{relevance}; mAP@{settings.topk}; file sha256 {digest[:12]}"
        protocols = {
            "standard": FeatureProtocol(
                "standard", f"query {settings.query_size} at random, database = rest, {train}; {tail}", settings.topk, version,
                query_size=settings.query_size, train_size=settings.train_size,
            ),
        }
        if labelled:  # methods score the validation split by labels (mAP against train)
            protocols["standard-val"] = replace(
                protocols["standard"], name="standard-val", val_size=settings.val_size,
                description=f"query {settings.query_size} at random, database = rest, val {settings.val_size} from "
                f"database, {train if settings.train_size is not None else 'train = the rest of the database'}; {tail}",
            )
        if declared:
            protocols["declared"] = FeatureProtocol(
                "declared", f"the file's split: query = test, database = train, {train}; {tail}", settings.topk, version,
                declared=True, train_size=settings.train_size,
            )
        default = settings.split or ("declared" if declared else "standard")
        if default == "declared" and not declared:
            raise UserError(f"dataset {self.name}: split = {default!r}, but {settings.path} declares no split (no train and test arrays)")
        if default not in protocols:
            raise UserError(f"dataset {self.name}: split = {default!r} needs labels (methods validate by labels); this file has none")
        return protocols, default

    # ---- loading --------------------------------------------------------------------------

    def _read(self) -> tuple[FeatureSettings, RawFile]:
        settings = self._settings()
        file_format = settings.file_format
        raw = read_parquet(settings) if file_format == "parquet" else read_arrays(settings, file_format)
        vectors = raw.vectors
        if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
            raise UserError(f"features file {settings.path}: vectors must be a non-empty matrix (N, d); got shape {vectors.shape}")
        if vectors.dtype.kind not in "fiub":
            raise UserError(f"features file {settings.path}: vectors of dtype {vectors.dtype} are not numbers")
        return settings, raw

    def _check(self, settings: FeatureSettings, raw: RawFile, drop_bad_rows: bool) -> Checked:
        """Row faults (non-finite vectors, zero vectors under cosine, bad labels) and the
        arrays without them when asked; any other problem with the file is an error."""
        if raw.problems:
            raise UserError(f"features file {settings.path}: {'; '.join(raw.problems)}")
        rows = len(raw.vectors)
        metric = settings.metric or raw.metric or "euclidean"
        masks: dict[str, np.ndarray] = {"non_finite": _non_finite_rows(raw.vectors)}
        if metric == "cosine":
            masks["zero_vector"] = _zero_rows(raw.vectors)
        labels, has_labels = np.zeros((rows, 0), dtype=bool), raw.labels is not None
        if raw.labels is not None:
            labels, label_masks = _checked_labels(raw.labels, settings.path, _label_source(settings, raw))
            masks.update(label_masks)
        relevance = settings.relevance or ("labels" if has_labels else "neighbours")
        if relevance == "labels" and not has_labels:
            raise UserError(f"dataset {self.name}: relevance = \"labels\", but {settings.path} holds no labels")
        if relevance == "labels":
            masks["zero_labels"] = ~labels.any(axis=1)
        bad = np.zeros(rows, dtype=bool)
        for mask in masks.values():
            bad |= mask
        faults, keep, origins = None, None, []
        if bad.any():
            origins = _origins(raw, rows)
            faults = RowFaults(origins)
            for kind, mask in masks.items():
                faults.add(kind, mask)
            keep = refuse_or_drop(self.name, faults, drop_bad_rows)
        groups: dict[str, np.ndarray] = {}
        if raw.train_rows is not None:
            train = np.zeros(rows, dtype=bool)
            train[: raw.train_rows] = True
            kept = train if keep is None else train[keep]
            groups = {"train": np.flatnonzero(kept), "test": np.flatnonzero(~kept)}
        vectors = raw.vectors if keep is None else np.asarray(raw.vectors)[keep]
        # the file's neighbours name train rows: valid only while no row is dropped
        usable = keep is None and settings.ground_truth != "exact"
        neighbours = raw.neighbours if usable else None
        return Checked(
            vectors, labels if keep is None else labels[keep], has_labels, groups, neighbours, metric, relevance, faults, keep, origins
        )

    def _arrays(self, settings: FeatureSettings, raw: RawFile, checked: Checked, cache_dir: Path | None) -> FeatureArrays:
        vectors = checked.vectors
        if not (isinstance(vectors, np.ndarray) and vectors.dtype == np.float32):
            vectors = np.asarray(vectors, dtype=np.float32)  # a float32 memory map stays on disk
        relevance = checked.relevance
        provenance: dict[str, Any] = {
            "source": settings.path,
            "format": settings.file_format,
            "sha256": file_sha256(settings.path),
            "vectors": int(vectors.shape[0]),
            "dimension": int(vectors.shape[1]),
            "metric": checked.metric,
            "relevance": relevance,
        }
        if checked.has_labels:
            provenance["classes"] = int(checked.labels.shape[1])
        if relevance == "neighbours":
            k = settings.neighbours
            from_file = checked.neighbours is not None and checked.neighbours.shape[1] >= k
            provenance["neighbours"] = k
            provenance["ground_truth"] = (
                f"the file's neighbors (first {k}) under the declared split; computed exactly otherwise"
                if from_file
                else f"exact {checked.metric} nearest neighbours, computed (ties to the lower database position)"
            )
        if checked.keep is not None:
            provenance["dropped_rows"] = int((~checked.keep).sum())
        if raw.train_rows is not None:
            provenance["declared_split"] = {part: int(indices.size) for part, indices in checked.groups.items()}
        return FeatureArrays(
            labels=checked.labels,
            features=vectors,
            groups=checked.groups,
            provenance=provenance,
            settings=settings,
            sha256=provenance["sha256"],
            relevance=relevance,
            metric=checked.metric,
            file_neighbours=checked.neighbours,
            cache_dir=cache_dir,
        )

    def _file_ground_truth_faults(self, settings: FeatureSettings, raw: RawFile, relevance: str) -> list[Finding]:
        """Faults of the file's neighbours when the declared split's runs would use them as the
        ground truth (neighbour relevance, ground_truth not "exact", enough columns)."""
        if raw.neighbours is None or raw.train_rows is None or relevance != "neighbours" or settings.ground_truth == "exact":
            return []
        k = settings.neighbours
        if raw.neighbours.shape[1] < min(k, raw.train_rows):
            return []  # too few columns: computed instead
        return neighbour_list_faults(raw.neighbours[:, :k], raw.train_rows)

    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> FeatureArrays:
        settings, raw = self._read()
        checked = self._check(settings, raw, drop_bad_rows)
        if checked.neighbours is not None:
            faults = self._file_ground_truth_faults(settings, raw, checked.relevance)
            if faults:
                raise UserError(
                    f"features file {settings.path}: its neighbors (the ground truth of the declared split, first "
                    f"{settings.neighbours} columns) are wrong: {'; '.join(f.message for f in faults)}; fix the file, or set "
                    f"ground_truth = \"exact\" in a [datasets.NAME] table to compute them (`hashbench data check` lists the rows)"
                )
        arrays = self._arrays(settings, raw, checked, cache_dir)
        if drop_bad_rows and checked.faults is not None:
            arrays.provenance["dropped_by_reason"] = checked.faults.counts()
        return arrays

    def inspect(self, root: Path, *, decode: bool = True) -> Inspection:
        """Every check of `hashbench data check`, and the arrays without the bad rows."""
        settings, raw = self._read()
        findings = [Finding("error", "file", problem) for problem in raw.problems]
        raw.problems = []  # reported: check the rest
        checked = self._check(settings, raw, drop_bad_rows=True)
        arrays = self._arrays(settings, raw, checked, cache_dir=None)
        counts = {"vectors": len(raw.vectors), "dimension": int(raw.vectors.shape[1])}
        if raw.train_rows is not None:
            counts.update({"train vectors": raw.train_rows, "test vectors": len(raw.vectors) - raw.train_rows})
        if checked.has_labels:
            counts["classes"] = int(checked.labels.shape[1])
        if checked.faults is not None:
            findings += checked.faults.findings([""] * len(checked.origins))
        findings.append(Finding("info", "source", _describe(settings, arrays)))
        # repeats are reported by their rows in the file (before any row is dropped)
        vectors = np.asarray(raw.vectors)
        duplicate = duplicate_rows(vectors)
        origins = checked.origins or _origins(raw, len(vectors))
        if duplicate.any():
            examples = [origins[row] for row in np.flatnonzero(duplicate)]
            findings.append(
                Finding(
                    "warning", "duplicate", f"{len(examples)} vectors repeat an earlier vector exactly "
                    "(equal distances: the ground truth breaks such ties by position)", len(examples), examples,
                )
            )
        if raw.train_rows is not None and duplicate.any():
            leaked = np.flatnonzero(_rows_in(vectors[raw.train_rows :], vectors[: raw.train_rows]))
            if leaked.size:
                findings.append(
                    Finding(
                        "warning", "leak", f"{leaked.size} test vectors are also train vectors (each finds itself "
                        "at distance 0)", int(leaked.size), [origins[raw.train_rows + row] for row in leaked],
                    )
                )
        ground_truth_faults = self._file_ground_truth_faults(settings, raw, checked.relevance)
        findings += ground_truth_faults or _neighbour_findings(arrays, settings)
        return Inspection(counts=counts, findings=findings, arrays=arrays)


def _label_source(settings: FeatureSettings, raw: RawFile) -> str:
    """Where the labels came from in the file, for messages: "array 'labels'", "column 'y'"."""
    label = settings.labels if isinstance(settings.labels, str) else "labels"
    if settings.file_format == "parquet":
        return f"column {label!r}"
    if raw.train_rows is not None:
        return f"arrays 'train_{label}' and 'test_{label}'"
    return f"array {label!r}"


def _checked_labels(labels: np.ndarray, path: str, source: str = "labels") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class ids (N,) or multi-hot (N, C >= 2) as a bool matrix, and the rows at fault."""
    rows = labels.shape[0]
    if labels.ndim == 1:
        if labels.dtype.kind not in "iu":
            raise UserError(f"features file {path}: class ids must be integers; got dtype {labels.dtype}")
        negative = labels < 0
        problem = class_id_problem(
            labels[~negative], f"features file {path}, {source}", "mark unlabelled rows with -1 (a signed dtype; "
            "such rows are refused, or left out with --drop-bad-rows)",
        )
        if problem is not None:  # before the (rows, max id + 1) matrix is allocated
            raise LabelError(problem)
        ids = np.where(negative, 0, labels).astype(np.int64)
        multi_hot = np.zeros((rows, int(ids.max()) + 1 if rows else 0), dtype=bool)
        multi_hot[np.arange(rows), ids] = ~negative
        return multi_hot, {"class_id": negative}
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise UserError(
            f"features file {path}: labels of shape {labels.shape}: give class ids (N,) or multi-hot (N, C) with C >= 2 "
            "(one column is ambiguous: class ids or a one-class multi-hot matrix)"
        )
    values = np.asarray(labels)
    bad = ~((values == 0) | (values == 1)).all(axis=1)
    return (values == 1), {"label_values": bad}


def _describe(settings: FeatureSettings, arrays: FeatureArrays) -> str:
    what = f"{settings.file_format} file {settings.path}, sha256 {arrays.sha256[:12]}; {arrays.metric} distance; relevance: "
    if arrays.relevance == "labels":
        return what + "shared labels"
    return what + arrays.provenance["ground_truth"]


def _neighbour_findings(arrays: FeatureArrays, settings: FeatureSettings, sample: int = 20) -> list[Finding]:
    """The file's neighbours against exact ones on a few queries (up to ties)."""
    if arrays.relevance != "neighbours" or arrays.file_neighbours is None:
        return []
    train, test = arrays.groups["train"], arrays.groups["test"]
    chosen = np.unique(np.linspace(0, test.size - 1, num=min(sample, test.size)).astype(np.int64))
    k = min(settings.neighbours, arrays.file_neighbours.shape[1], train.size)
    database = arrays.features[train]
    exact = exact_neighbours(arrays.features[test[chosen]], database, k, metric=arrays.metric)
    stored = arrays.file_neighbours[chosen, :k]
    if stored.min() < 0 or stored.max() >= train.size:  # only where runs compute them instead (too few columns)
        return [
            Finding(
                "warning", "neighbours", f"the file's neighbors name rows outside train (0..{train.size - 1}); "
                f"unused: they have fewer than {settings.neighbours} columns, so runs compute the neighbours",
            )
        ]

    def distances(ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
        vectors = np.asarray(database, dtype=np.float64)[ids]
        query = np.asarray(arrays.features[test[queries]], dtype=np.float64)[:, None, :]
        if arrays.metric == "cosine":
            vectors = vectors / np.linalg.norm(vectors, axis=2, keepdims=True)
            query = query / np.linalg.norm(query, axis=2, keepdims=True)
        return np.sort(((vectors - query) ** 2).sum(2), axis=1)

    # the same distances, in order, means the same neighbours up to the order of ties
    agree = np.isclose(distances(stored, chosen), distances(exact, chosen), rtol=1e-5, atol=1e-9).all(axis=1)
    if agree.all():
        return [Finding("info", "neighbours", f"the file's neighbors agree with exact ones on {chosen.size} sampled test queries")]
    return [
        Finding(
            "warning", "neighbours",
            f"the file's neighbors differ from the exact {arrays.metric} ones (beyond ties) for {int((~agree).sum())} of "
            f"{chosen.size} sampled test queries; ground_truth = \"exact\" in the dataset's table computes them instead",
        )
    ]
