"""The runner: expands methods × datasets × bits × seeds and runs each cell, resumably.

Each cell is fitted, encoded, evaluated and stored under its run key. A cell whose record
says ``ok`` is skipped unless forced; a cell that raises is recorded as failed with its
reason and the grid goes on.
"""

from __future__ import annotations

import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hashbench import atomic, registry
from hashbench.cache import default_cache_dir
from hashbench.codes import pack
from hashbench.data import DatasetArrays, DataSplit, HashingDataset, load_dataset
from hashbench.environment import describe_environment, resolve_device, seed_everything
from hashbench.errors import UserError
from hashbench.method import HashingMethod, RunContext
from hashbench.params import params_to_dict, resolve_params
from hashbench.splits import SplitManifest, draw_split
from hashbench.store import CODES_NAME, LOG_NAME, RECORD_NAME, ResultsStore, run_key

# Candidate cut-offs of P@k / R@k; those above the database size are dropped per dataset.
PRECISION_KS = (1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000)


@dataclass
class GridSpec:
    methods: list[str]
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seed: int = 0
    protocol: str | None = None  # None: each dataset's default protocol
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → overrides
    data_root: Path = Path("data")
    results: Path = Path("results")
    device: str = "auto"
    force: bool = False
    cache_dir: Path | None = None  # decoded images and backbone features; None: beside the data
    drop_bad_rows: bool = False  # run without the rows `hashbench data check` flags, instead of refusing


@dataclass
class Cell:
    method: str
    method_cls: type[HashingMethod]
    params: Any
    dataset: str
    protocol: str
    bits: int
    seed: int
    split_seed: int

    @property
    def key(self) -> str:
        return run_key(
            self.method, params_to_dict(self.params), self.dataset, self.protocol, self.split_seed, self.bits, self.seed
        )


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # ok | failed | skipped (already ok) | busy (another runner holds it)
    record: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class PreparedDataset:
    """A dataset loaded once and split once, shared by every cell that uses it."""

    name: str
    plugin: HashingDataset
    protocol: Any
    arrays: DatasetArrays
    manifest: SplitManifest
    manifest_path: Path | None = None  # set once the manifest is saved in the results store

    def split(self, name: str) -> DataSplit | None:
        indices = self.manifest.splits.get(name)
        return None if indices is None else DataSplit(name, indices, self.arrays)


def _positive_ints(values: list[int], option: str) -> list[int]:
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{option}: expected positive integers, got {value!r}")
    return values


def plan_grid(spec: GridSpec) -> list[Cell]:
    """Validate the grid against the registry and expand it into cells (nothing is written)."""
    if not spec.methods:
        raise UserError("no methods given; pass --methods (see `hashbench list`)")
    if not spec.datasets:
        raise UserError("no datasets given; pass --datasets (see `hashbench list`)")
    _positive_ints(spec.bits, "--bits")
    for seed in [*spec.seeds, spec.split_seed]:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise UserError(f"seeds must be non-negative integers, got {seed!r}")
    for owner in spec.params:
        if owner not in spec.methods:
            raise UserError(
                f"parameters given for {owner!r}, which is not among the methods being run "
                f"({', '.join(spec.methods)})"
            )
    method_classes = {name: registry.get_method(name) for name in spec.methods}
    resolved = {
        name: resolve_params(cls.Params, spec.params.get(name, {}), owner=name) for name, cls in method_classes.items()
    }
    cells = []
    for dataset_name in spec.datasets:
        dataset = registry.get_dataset(dataset_name)()
        protocol = dataset.protocol(spec.protocol).name
        for method in spec.methods:
            for bits in spec.bits:
                for seed in spec.seeds:
                    cells.append(
                        Cell(method, method_classes[method], resolved[method], dataset_name, protocol, bits, seed, spec.split_seed)
                    )
    return cells


def prepare_dataset(name: str, protocol_name: str, spec: GridSpec, device: str = "cpu") -> PreparedDataset:
    from hashbench.features import attach_backbone_features

    plugin = registry.get_dataset(name)()
    protocol = plugin.protocol(protocol_name)
    cache_dir = spec.cache_dir if spec.cache_dir is not None else default_cache_dir(Path(spec.data_root))
    arrays = load_dataset(plugin, Path(spec.data_root), cache_dir=cache_dir, drop_bad_rows=spec.drop_bad_rows)
    arrays.dataset = name
    manifest = draw_split(name, protocol, arrays, spec.split_seed)
    # Natural-image datasets carry no feature vectors: feature-input methods get cached
    # backbone features of the manifest's items, computed only when first asked for.
    attach_backbone_features(arrays, manifest, cache_dir, device)
    return PreparedDataset(name, plugin, protocol, arrays, manifest)


def _feature_dimension(arrays: DatasetArrays) -> int | None:
    features = arrays.features
    return int(features.shape[1]) if isinstance(features, np.ndarray) and features.ndim == 2 else None


def preflight(cells: list[Cell], prepared: dict[tuple[str, str], PreparedDataset]) -> None:
    """Refuse, before any run, configurations a method cannot handle on a dataset."""
    problems = []
    for cell in cells:
        if cell.method_cls.input != "features":
            continue
        dimension = _feature_dimension(prepared[cell.dataset, cell.protocol].arrays)
        if dimension is None:
            continue
        try:
            cell.method_cls(cell.bits, cell.params).check_input(dimension)
        except UserError as error:
            problems.append(f"{cell.dataset}: {error}")
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))


def _peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak so far, not this run's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def precision_ks(database_size: int, topk: int) -> tuple[int, ...]:
    return tuple(sorted({k for k in (*PRECISION_KS, topk) if k <= database_size}))


def run_cell(cell: Cell, data: PreparedDataset, store: ResultsStore, device: str, force: bool) -> CellOutcome:
    """Fit, encode, evaluate and store one cell; never raises for a failing method."""
    from hashbench.metrics import evaluate

    key = cell.key
    lock = store.try_lock(key)
    if lock is None:
        return CellOutcome(cell, "busy")
    try:
        existing = store.read_record(key)
        if existing is not None and existing.get("status") == "ok" and not force:
            return CellOutcome(cell, "skipped", existing)
        run_dir = store.run_dir(key)
        run_dir.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {
            "key": key,
            "method": cell.method,
            "method_description": cell.method_cls.description,
            "params": params_to_dict(cell.params),
            "dataset": cell.dataset,
            "protocol": cell.protocol,
            "protocol_description": data.protocol.summary(),
            "split_seed": cell.split_seed,
            "seed": cell.seed,
            "bits": cell.bits,
            "input": cell.method_cls.input,
            "split": {
                "manifest": str(data.manifest_path.relative_to(store.root)),
                "hash": data.manifest.hash,
                "sizes": {name: int(indices.size) for name, indices in data.manifest.splits.items()},
            },
            "data": data.arrays.provenance,
            "status": "running",
            "started": _now(),
            "environment": describe_environment(device),
        }
        timings: dict[str, float] = {}
        context = RunContext(seed=cell.seed, device=device, work_dir=run_dir)
        try:
            seed_everything(cell.seed)
            method = cell.method_cls(cell.bits, cell.params, context)
            train, query, database = data.split("train"), data.split("query"), data.split("database")
            start = time.perf_counter()
            method.fit(train, data.split("val"))
            timings["fit"] = time.perf_counter() - start
            start = time.perf_counter()
            query_codes = pack(method.encode(query), cell.bits, name=f"{cell.method}'s query codes")
            database_codes = pack(method.encode(database), cell.bits, name=f"{cell.method}'s database codes")
            timings["encode"] = time.perf_counter() - start
            start = time.perf_counter()
            topk = data.manifest.topk
            result = evaluate(
                query_codes,
                database_codes,
                query.labels,
                database.labels,
                bits=cell.bits,
                topk=topk,
                ks=precision_ks(len(database), topk),
            )
            timings["evaluate"] = time.perf_counter() - start
            atomic.save_npz(run_dir / CODES_NAME, query_codes=query_codes, database_codes=database_codes)
            record.update(status="ok", metrics=result.to_dict())
            (run_dir / LOG_NAME).unlink(missing_ok=True)
        except Exception as error:  # a failing cell must not stop the grid
            record.update(status="failed", error=f"{type(error).__name__}: {error}")
            atomic.write_text(run_dir / LOG_NAME, traceback.format_exc())
        timings["total"] = sum(timings.values())
        record["timings"] = timings
        record["peak_memory_mb"] = _peak_memory_mb()
        if context.record:
            record["training"] = context.record
        record["finished"] = _now()
        atomic.write_json(run_dir / RECORD_NAME, record)
        return CellOutcome(cell, record["status"], record, record.get("error"))
    finally:
        lock.release()


def run_grid(
    spec: GridSpec,
    on_start: Callable[[Cell, int, int], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Run every cell of the grid in order; returns their outcomes."""
    cells = plan_grid(spec)
    device = resolve_device(spec.device)
    store = ResultsStore(spec.results)
    prepared: dict[tuple[str, str], PreparedDataset] = {}
    for cell in cells:
        if (cell.dataset, cell.protocol) not in prepared:
            prepared[cell.dataset, cell.protocol] = prepare_dataset(cell.dataset, cell.protocol, spec, device)
    preflight(cells, prepared)
    # Only now, with every input checked, is anything written.
    store.ensure_writable()
    for data in prepared.values():
        data.manifest_path = data.manifest.save(store.splits_dir)
    outcomes = []
    for index, cell in enumerate(cells):
        if on_start is not None:
            on_start(cell, index, len(cells))
        outcome = run_cell(cell, prepared[cell.dataset, cell.protocol], store, device, spec.force)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes
