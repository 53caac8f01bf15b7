"""The runner: expands methods × datasets × bits × seeds and runs each cell, resumably.

Each cell is fitted, encoded, evaluated and stored under its run key. A cell whose record
says ``ok`` is skipped unless forced; a cell that raises is recorded as failed with its
reason and the grid goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hashbench import registry
from hashbench.codes import pack
from hashbench.data import DatasetArrays, DataSplit, HashingDataset, load_dataset
from hashbench.data.cache import default_cache_dir
from hashbench.data.neighbours import relevance_for
from hashbench.data.splits import SplitManifest, check_manifest, draw_split, labels_digest
from hashbench.environment import describe_environment, resolve_device, seed_everything
from hashbench.errors import UserError
from hashbench.method import HashingMethod, RunContext
from hashbench.metric_table import METRICS_VERSION
from hashbench.params import params_to_dict, resolve_params
from hashbench.run.containment import ExitCalled, contained
from hashbench.storage import atomic
from hashbench.storage.records import CellIdentity, RunRecord, SplitInfo, Status
from hashbench.storage.store import CODES_NAME, LOG_NAME, ResultsStore, file_sha256

# Candidate cut-offs of P@k / R@k; those above the database size are dropped per dataset.
PRECISION_KS = (1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000)
BUSY_RECHECK_SECONDS = 0.2
MAX_SEED = 2**63  # seeds feed numpy and torch generators, which take 64-bit integers


def protocol_version(protocol: Any) -> str:
    return str(getattr(protocol, "version", "1"))


@dataclass
class GridSpec:
    methods: list[str]
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seed: int = 0
    protocol: str | None = None  # None: each dataset's default protocol
    protocols: dict[str, str] = field(default_factory=dict)  # dataset → protocol, wins over `protocol`
    # method → {dataset → protocol}: a method's own protocol on a dataset, wins over both
    method_protocols: dict[str, dict[str, str]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method → overrides
    data_root: Path = Path("data")
    results: Path = Path("results")
    device: str = "auto"
    force: bool = False
    cache_dir: Path | None = None  # decoded images and backbone features; None: beside the data
    drop_bad_rows: bool = False  # run without the rows `hashbench data check` flags, instead of refusing
    # --plugin specs, so that worker processes and cluster jobs can import them again.
    plugins: list[str] = field(default_factory=list)
    # [datasets.NAME] tables: the settings of configured datasets (registry.resolve_datasets).
    dataset_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # method → sweep tables, each {parameter → [values]}: a table gives the product of its
    # lists, several tables the union of their products; every value checked as `params` are.
    sweep: dict[str, list[dict[str, list[Any]]]] = field(default_factory=dict)


def _value_text(value: Any) -> str:
    return str(value) if not isinstance(value, str) else repr(value)


def sweep_params(spec: GridSpec, method: str, params_cls: type) -> list[Any]:
    """The parameter sets ``method`` runs with: its ``params`` alone, or one per point of its
    sweep (each resolved, typed and range-checked as ``--set`` values are), in order."""
    fixed = spec.params.get(method, {})
    tables = spec.sweep.get(method) or []
    if not tables:
        return [resolve_params(params_cls, fixed, owner=method)]
    sets: dict[str, Any] = {}
    for table in tables:
        if not table:
            raise UserError(f"sweep: {method}: an empty table sweeps nothing; give PARAM = [values]")
        for name, values in table.items():
            if name in fixed:
                raise UserError(
                    f"{method}.{name} is both set ({_value_text(fixed[name])}) and swept; "
                    f"drop --set {method}.{name} or the sweep of it"
                )
            if not values:
                raise UserError(f"sweep: {method}.{name}: no values; give at least one, e.g. {name} = [value, value]")
            resolved = []
            for value in values:
                try:
                    one = resolve_params(params_cls, {**fixed, name: value}, owner=method)
                except UserError as error:
                    raise UserError(f"sweep: {error}") from None
                plain = params_to_dict(one)[name]
                if plain in resolved:
                    raise UserError(
                        f"sweep: {method}.{name}: {_value_text(value)} is listed twice (as {_value_text(plain)}): "
                        "the same cells twice; name each value once"
                    )
                resolved.append(plain)
        names = list(table)
        for point in itertools.product(*(table[name] for name in names)):
            params = resolve_params(params_cls, {**fixed, **dict(zip(names, point, strict=True))}, owner=method)
            # several tables share a point (the defaults, say): it runs once
            sets.setdefault(json.dumps(params_to_dict(params), sort_keys=True), params)
    return list(sets.values())


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
    protocol_version: str = "1"
    # The dataset's class: the grid's own for a configured dataset (an embedding file).
    dataset_cls: Any = field(default=None, compare=False, repr=False)
    # How progress, the summary and status name the method: with the values its grid's sweep
    # varies, ``itq (iterations=5)``; the method's name otherwise (set by plan_grid).
    label: str = field(default="", compare=False)

    @property
    def identity(self) -> CellIdentity:
        return CellIdentity(
            self.method, params_to_dict(self.params), self.dataset, self.protocol, self.split_seed, self.bits, self.seed
        )

    @property
    def method_version(self) -> str:
        return str(self.method_cls.version)

    @property
    def key(self) -> str:
        return self.identity.key(self.method_version, self.protocol_version)


@dataclass
class CellOutcome:
    cell: Cell
    # OK or FAILED once run; OK with ``reused`` when done before; RUNNING when another runner
    # holds it; PENDING when submitted to a cluster without waiting.
    status: Status
    record: RunRecord | None = None
    error: str | None = None
    job_id: str | None = None  # the cluster job that ran (or will run) it
    reused: bool = False


class GridInterrupted(Exception):
    """Ctrl-C (SIGINT) while the grid ran: what had finished, what was stopped midway.

    Cells stopped midway keep their folder without a record (``interrupted`` in status),
    and a deep method resumes them from its last checkpoint; cells never started are
    simply still to do. The next identical ``run`` goes on from there.
    """

    def __init__(self, finished: list[CellOutcome], stopped: int, total: int, remote: bool = False) -> None:
        self.finished, self.stopped, self.total, self.remote = finished, stopped, total, remote
        super().__init__(f"interrupted after {len(finished)} of {total} cells")


@dataclass
class PreparedDataset:
    """A dataset loaded once and split once, shared by every cell that uses it."""

    name: str
    plugin: HashingDataset
    protocol: Any
    arrays: DatasetArrays
    manifest: SplitManifest
    manifest_path: Path | None = None  # set once the manifest is saved in the results store
    relevance: Any = None  # per-query relevant database positions (true neighbours); None: labels

    @property
    def labels_sha256(self) -> str | None:
        return self.arrays.provenance.get("labels_sha256")

    def split(self, name: str) -> DataSplit | None:
        indices = self.manifest.splits.get(name)
        return None if indices is None else DataSplit(name, indices, self.arrays, self.protocol.name)


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
    for name, values in (("bits", spec.bits), ("seeds", spec.seeds)):
        if not values:
            raise UserError(f"no {name} given: the grid would be empty; pass --{name} (e.g. --{name} {'16,32,64' if name == 'bits' else '0'})")
    _positive_ints(spec.bits, "--bits")
    # features:PATH and [datasets.NAME] tables become registered datasets with plain names
    grid = registry.resolve_datasets(spec.datasets, spec.dataset_options)
    datasets = grid.names
    for seed in [*spec.seeds, spec.split_seed]:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
            raise UserError(f"seeds must be integers from 0 to 2**63 - 1, got {seed!r}")
    for owner in spec.params:
        if owner not in spec.methods:
            raise UserError(
                f"parameters given for {owner!r}, which is not among the methods being run "
                f"({', '.join(spec.methods)})"
            )
    for owner in spec.sweep:
        if owner not in spec.methods:
            raise UserError(
                f"a sweep is given for {owner!r}, which is not among the methods being run "
                f"({', '.join(spec.methods)})"
            )
    for dataset_name in spec.protocols:
        if dataset_name not in datasets:
            raise UserError(
                f"a protocol is given for dataset {dataset_name!r}, which is not among the datasets being run "
                f"({', '.join(datasets)})"
            )
    for owner, table in spec.method_protocols.items():
        if owner not in spec.methods:
            raise UserError(
                f"[method_protocols.{owner}]: {owner!r} is not among the methods being run ({', '.join(spec.methods)})"
            )
        for dataset_name in table:
            if dataset_name not in datasets:
                raise UserError(
                    f"[method_protocols.{owner}]: dataset {dataset_name!r} is not among the datasets being run "
                    f"({', '.join(datasets)})"
                )
    method_classes = {name: registry.get_method(name) for name in spec.methods}
    resolved = {name: sweep_params(spec, name, cls.Params) for name, cls in method_classes.items()}
    cells = []
    for dataset_name in datasets:
        dataset_cls = grid.get(dataset_name)
        dataset = dataset_cls()
        shared = spec.protocols.get(dataset_name, spec.protocol)
        for method in spec.methods:
            protocol = dataset.protocol(spec.method_protocols.get(method, {}).get(dataset_name, shared))
            registry.check_file_name("protocol", protocol.name, f"dataset {dataset_name} ({grid.origin(dataset_name)})")
            swept = list(dict.fromkeys(name for table in spec.sweep.get(method, []) for name in table))
            for params in resolved[method]:
                values = params_to_dict(params)
                label = f"{method} ({', '.join(f'{name}={values[name]}' for name in swept)})" if swept else method
                for bits in spec.bits:
                    for seed in spec.seeds:
                        cells.append(
                            Cell(
                                method, method_classes[method], params, dataset_name, protocol.name,
                                bits, seed, spec.split_seed, protocol_version(protocol), dataset_cls, label,
                            )
                        )
    return cells


def prepare_dataset(
    name: str,
    protocol_name: str,
    spec: GridSpec,
    device: str = "cpu",
    manifest: SplitManifest | None = None,
    dataset_cls: Any = None,
) -> PreparedDataset:
    """Load a dataset and split it; with ``manifest`` (a saved one), reuse that split instead.
    ``dataset_cls``: the grid's class of a configured dataset (default: the registered ``name``)."""
    from hashbench.toolkit.backbone_features import attach_backbone_features

    plugin = (registry.get_dataset(name) if dataset_cls is None else dataset_cls)()
    protocol = plugin.protocol(protocol_name)
    cache_dir = spec.cache_dir if spec.cache_dir is not None else default_cache_dir(Path(spec.data_root))
    arrays = load_dataset(plugin, Path(spec.data_root), cache_dir=cache_dir, drop_bad_rows=spec.drop_bad_rows)
    arrays.dataset = name
    # What decides relevance, for the record: runs on other labels are never the same data.
    arrays.provenance["labels_sha256"] = labels_digest(arrays.labels)
    if manifest is None:
        manifest = draw_split(name, protocol, arrays, spec.split_seed)
    else:
        check_manifest(manifest, name, protocol, spec.split_seed, len(arrays))
    # Natural-image datasets carry no feature vectors: feature-input methods get cached
    # backbone features of the manifest's items, computed only when first asked for.
    attach_backbone_features(arrays, manifest, cache_dir, device)
    # Datasets without labels: each query's true nearest neighbours, computed once per split (cached).
    relevance = relevance_for(arrays, manifest)
    return PreparedDataset(name, plugin, protocol, arrays, manifest, relevance=relevance)


def _provenance(data: PreparedDataset) -> dict[str, Any]:
    """The record's ``data``: where the data came from, and for a configured dataset (an
    embedding file) its settings, so that `reeval` can load it again in another process."""
    configured = registry.configuration(type(data.plugin))
    return data.arrays.provenance if configured is None else {**data.arrays.provenance, "configured": configured}


def _feature_dimension(arrays: DatasetArrays) -> int | None:
    features = arrays.features
    return int(features.shape[1]) if isinstance(features, np.ndarray) and features.ndim == 2 else None


def preflight(cells: list[Cell], prepared: dict[tuple[str, str], PreparedDataset]) -> None:
    """Refuse, before any run, configurations a method cannot handle on a dataset."""
    problems = []
    for cell in cells:
        if cell.method_cls.input == "images" and prepared[cell.dataset, cell.protocol].arrays.images is None:
            problems.append(
                f"{cell.method} trains on images, and dataset {cell.dataset} holds feature vectors only; "
                "run methods that take features (`hashbench list` shows each method's input)"
            )
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


def check_dataset_names(store: ResultsStore, prepared: dict[tuple[str, str], PreparedDataset]) -> None:
    """Refuse a dataset made from a file (``features:good.npz``) whose name the results
    directory already gives to another file that is still there with other data: their runs
    would otherwise fill the same rows and cells of one table."""
    files = {
        (name, protocol): (configured["path"], protocol_version(data.protocol))
        for (name, protocol), data in prepared.items()
        if isinstance(configured := registry.configuration(type(data.plugin)), dict) and isinstance(configured.get("path"), str)
    }
    if not files:
        return
    for item in store.iter_records():
        record = item.record
        if record is None or (record.dataset, record.protocol) not in files:
            continue
        path, version = files[record.dataset, record.protocol]
        recorded = ((record.data or {}).get("configured") or {}).get("path")
        # A file moved or changed in place is the same dataset (its runs go stale if it changed).
        if not isinstance(recorded, str) or recorded == path or record.protocol_version == version or not os.path.exists(recorded):
            continue
        raise UserError(
            f"dataset name {record.dataset!r} already stands in {store.root} for {recorded}, another file than "
            f"{path}; give this one its own name with a [datasets.NAME] table (path = \"{path}\"), or use "
            "another --results"
        )


def _peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak so far, not this run's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def precision_ks(database_size: int, topk: int) -> tuple[int, ...]:
    return tuple(sorted({k for k in (*PRECISION_KS, topk) if k <= database_size}))


def run_cell(
    cell: Cell,
    data: PreparedDataset,
    store: ResultsStore,
    device: str,
    force: bool,
    execution: dict[str, Any] | None = None,
) -> CellOutcome:
    """Fit, encode, evaluate and store one cell; never raises for a failing method.

    ``execution`` says how the cell was executed (worker, cluster job) for the record.
    """
    key = cell.key
    run_dir = store.run_dir(key)
    if run_dir.exists() and not run_dir.is_dir():
        return CellOutcome(cell, Status.FAILED, None, f"{run_dir} is a file where the run's folder belongs; move it away")
    lock = store.try_lock(key)
    if lock is None and not store.locks_listed:
        # Where the lock table cannot show every holder (a networked results folder),
        # `hashbench status` holds a lock for an instant to probe it: look again before
        # leaving the cell to whoever holds it. Elsewhere status takes no lock.
        time.sleep(BUSY_RECHECK_SECONDS)
        lock = store.try_lock(key)
    if lock is None:
        return CellOutcome(cell, Status.RUNNING)
    try:
        stored = store.stored_state(cell.identity, cell.method_version, cell.protocol_version, data.labels_sha256)
        if stored.protected:  # not this hashbench's to overwrite, not even with --force
            return CellOutcome(cell, Status.FAILED, None, stored.reason)
        if not force and stored.status is Status.OK:
            return CellOutcome(cell, Status.OK, stored.record, reused=True)
        # The saved manifest is what the record will point at: check it is still the split
        # in use (an edited or truncated file is rewritten from the draw in memory).
        data.manifest.save(store.splits_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        started = _now()
        timings: dict[str, float] = {}
        context = RunContext(seed=cell.seed, device=device, work_dir=run_dir)
        outcome: dict[str, Any] = {}
        try:
            # The method's code may not end this process nor move its working directory.
            with contained() as exits:
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
            if exits:  # the method caught the guard's exception and went on: it still failed
                raise ExitCalled(exits[0])
            start = time.perf_counter()
            result = evaluate_codes(
                data.manifest, query_codes, database_codes, query.labels, database.labels, cell.bits, data.relevance
            )
            extra = evaluate_extra(
                cell.method_cls, data.manifest, query_codes, database_codes, query.labels, database.labels, cell.bits, data.relevance
            )
            timings["evaluate"] = time.perf_counter() - start
            atomic.save_npz(run_dir / CODES_NAME, query_codes=query_codes, database_codes=database_codes)
            outcome.update(
                status=Status.OK,
                metrics=result.to_dict(),
                metrics_version=METRICS_VERSION,
                codes_sha256=file_sha256(run_dir / CODES_NAME),
                per_query_sha256=store.write_per_query(key, result),
                extra_metrics=extra,
            )
            (run_dir / LOG_NAME).unlink(missing_ok=True)
        except BaseException as error:  # a failing cell must not stop the grid, not even sys.exit
            if isinstance(error, KeyboardInterrupt):
                raise
            outcome.update(status=Status.FAILED, error=f"{type(error).__name__}: {error}")
            with contextlib.suppress(OSError):  # the record below says why; the log is a bonus
                atomic.write_text(run_dir / LOG_NAME, traceback.format_exc())
        timings["total"] = sum(timings.values())
        record = RunRecord.new(
            cell.identity,
            cell.method_version,
            cell.protocol_version,
            method_description=cell.method_cls.description,
            protocol_description=data.protocol.summary(),
            input=cell.method_cls.input,
            split=SplitInfo(
                str(data.manifest_path.relative_to(store.root)),
                data.manifest.hash,
                {name: int(indices.size) for name, indices in data.manifest.splits.items()},
            ),
            data=_provenance(data),
            timings=timings,
            peak_memory_mb=_peak_memory_mb(),
            training=context.record or None,
            environment=describe_environment(device),
            execution=execution or {"executor": "in process"},
            started=started,
            finished=_now(),
            **outcome,
        )
        try:
            store.write_record(record)
        except OSError as error:  # a full or read-only disk: this cell fails, the grid goes on
            reason = f"could not write the run record: {error}"
            return CellOutcome(cell, Status.FAILED, None, reason)
        return CellOutcome(cell, record.status, record, record.error)
    finally:
        lock.release()


def evaluate_codes(
    manifest: SplitManifest,
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    bits: int,
    relevance: Any = None,
) -> Any:
    """The full metric set of one run, at the protocol's cut-off (also what `reeval` computes).

    With ``relevance`` (per-query relevant database positions), it replaces the labels."""
    from hashbench.metrics import evaluate

    database_size = int(manifest.splits["database"].size)
    labelled = relevance is None
    return evaluate(
        query_codes,
        database_codes,
        query_labels if labelled else None,
        database_labels if labelled else None,
        relevance=relevance,
        bits=bits,
        topk=manifest.topk,
        ks=precision_ks(database_size, manifest.topk),
    )


def evaluate_extra(
    method_cls: type[HashingMethod],
    manifest: SplitManifest,
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    bits: int,
    relevance: Any = None,
) -> dict[str, dict[str, Any]] | None:
    """A method's own metrics beside the standard set, stored as the record's
    ``extra_metrics``: its optional classmethod ``extra_metrics(query_codes, database_codes,
    query_labels, database_labels, *, bits, topk, relevance)`` (packed codes; labels None when
    ``relevance`` decides) returns {name: {"value": number, "description": text}}. None for a
    method without one, whose record stays as it was."""
    hook = getattr(method_cls, "extra_metrics", None)
    if hook is None:
        return None
    labelled = relevance is None
    values = hook(
        query_codes,
        database_codes,
        query_labels if labelled else None,
        database_labels if labelled else None,
        bits=bits,
        topk=manifest.topk,
        relevance=relevance,
    )
    return {
        str(name): {"value": None if entry["value"] is None else float(entry["value"]), "description": str(entry["description"])}
        for name, entry in values.items()
    }


@dataclass(frozen=True)
class CellJob:
    """One cell as plain, picklable data: all a worker process or cluster job needs to run it.

    The parent has drawn and saved the split manifest; the job loads the dataset itself and
    reuses that manifest (checked against its hash), so every job sees the same split.
    """

    spec: GridSpec  # paths made absolute, plugin files included
    identity: CellIdentity  # the cell: method, resolved parameters (as recorded), dataset, ...
    method_version: str
    protocol_version: str
    manifest: str  # absolute path of the saved split manifest
    manifest_hash: str
    working_dir: str  # the parent's, for dotted --plugin modules and relative paths in plugins
    execution: dict[str, Any] = field(default_factory=dict)  # stored as "execution" in the record

    @property
    def key(self) -> str:
        return self.identity.key(self.method_version, self.protocol_version)


@dataclass
class JobResult:
    """What a job sends back (plain data: the record as JSON, so any process can unpickle it)."""

    key: str
    status: str
    record: dict[str, Any] | None = None
    error: str | None = None

    def outcome(self, cell: Cell, job_id: str | None = None) -> CellOutcome:
        record = None if self.record is None else RunRecord.from_json(self.record)
        return CellOutcome(cell, Status(self.status), record, self.error, job_id)


def _portable(spec: GridSpec) -> GridSpec:
    """The spec with absolute paths, valid in any process on any node sharing the filesystem."""
    plugins = [str(Path(p).resolve()) if p.endswith(".py") or Path(p).is_file() else p for p in spec.plugins]
    return replace(
        spec,
        results=Path(spec.results).resolve(),
        data_root=Path(spec.data_root).resolve(),
        cache_dir=None if spec.cache_dir is None else Path(spec.cache_dir).resolve(),
        plugins=plugins,
    )


def make_job(cell: Cell, data: PreparedDataset, spec: GridSpec, execution: dict[str, Any]) -> CellJob:
    if data.manifest_path is None:
        raise ValueError("the split manifest must be saved before jobs are made")
    return CellJob(
        spec=_portable(spec),
        identity=cell.identity,
        method_version=cell.method_version,
        protocol_version=cell.protocol_version,
        manifest=str(Path(data.manifest_path).resolve()),
        manifest_hash=data.manifest.hash,
        working_dir=str(Path.cwd()),
        execution=execution,
    )


# A worker runs many cells of one dataset in a row: keep the last dataset loaded.
_job_data_cache: dict[tuple, PreparedDataset] = {}


def _job_data(job: CellJob, device: str, dataset_cls: Any = None) -> PreparedDataset:
    spec, cell = job.spec, job.identity
    configured = json.dumps(registry.configuration(dataset_cls), sort_keys=True, default=str)
    cache_key = (cell.dataset, configured, cell.protocol, job.manifest_hash, spec.data_root, spec.cache_dir, spec.drop_bad_rows)
    if cache_key not in _job_data_cache:
        _job_data_cache.clear()
        try:
            manifest = SplitManifest.load(Path(job.manifest))
        except UserError:
            manifest = None  # damaged since planning: drawn again below
        if manifest is not None and manifest.hash != job.manifest_hash:
            raise UserError(f"split manifest {job.manifest} changed since the grid was planned; rerun the grid")
        data = prepare_dataset(cell.dataset, cell.protocol, spec, device, manifest=manifest, dataset_cls=dataset_cls)
        if data.manifest.hash != job.manifest_hash:
            raise UserError(
                f"split manifest {job.manifest} is damaged and drawing {cell.dataset}/{cell.protocol} with split seed "
                f"{spec.split_seed} again gives another split (the data or the protocol changed); rerun the grid"
            )
        data.manifest.save(Path(job.manifest).parent)
        data.manifest_path = Path(job.manifest)
        _job_data_cache[cache_key] = data
    return _job_data_cache[cache_key]


def record_failure(job: CellJob, reason: str, log: str | None = None) -> bool:
    """Record a cell that failed outside the method (lost job, unloadable data).

    Written only when no other process holds the cell and no ok record exists; returns
    whether it was written.
    """
    store = ResultsStore(job.spec.results)
    lock = store.try_lock(job.key)
    if lock is None:
        return False
    try:
        existing = store.read_record(job.key)
        if existing is not None and existing.ok:
            return False
        run_dir = store.run_dir(job.key)
        run_dir.mkdir(parents=True, exist_ok=True)
        if log:
            atomic.write_text(run_dir / LOG_NAME, log)
        store.write_record(
            RunRecord.new(
                job.identity,
                job.method_version,
                job.protocol_version,
                status=Status.FAILED,
                error=reason,
                execution=job.execution,
                finished=_now(),
            )
        )
        return True
    finally:
        lock.release()


def run_job(job: CellJob) -> JobResult:
    """Run one cell in this (fresh) process: rebuild it from ``job``, then :func:`run_cell`."""
    try:
        if os.path.isdir(job.working_dir):
            os.chdir(job.working_dir)
        registry.load_plugins(job.spec.plugins)
        grid = registry.resolve_datasets(job.spec.datasets, job.spec.dataset_options)  # configured datasets, as planned
        planned = job.identity
        method_cls = registry.get_method(planned.method)
        params = resolve_params(method_cls.Params, dict(planned.params), owner=planned.method)
        cell = Cell(
            planned.method, method_cls, params, planned.dataset, planned.protocol, planned.bits, planned.seed,
            planned.split_seed, job.protocol_version, grid.get(planned.dataset),
        )
        if cell.key != job.key:
            raise UserError(
                f"{planned.method} rebuilt in this process has another run key ({cell.key}, expected {job.key}); "
                "the installed method differs from the one that planned the grid"
            )
        device = resolve_device(job.spec.device)
        data = _job_data(job, device, cell.dataset_cls)
        if protocol_version(data.protocol) != job.protocol_version:
            raise UserError(
                f"protocol {planned.dataset}/{planned.protocol} is version {protocol_version(data.protocol)} here, "
                f"{job.protocol_version} where the grid was planned; install the same hashbench everywhere"
            )
    except Exception as error:  # the cell fails; the grid goes on
        reason = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        try:
            record_failure(job, reason, traceback.format_exc())
        except OSError as write_error:  # a full or read-only disk: this cell fails, the grid goes on
            reason = f"{reason}; its failure record could not be written ({write_error})"
        return JobResult(job.key, Status.FAILED.value, None, reason)
    outcome = run_cell(cell, data, ResultsStore(job.spec.results), device, job.spec.force, job.execution)
    record = None if outcome.record is None else outcome.record.to_json()
    return JobResult(job.key, outcome.status.value, record, outcome.error)


class Executor(Protocol):
    """Runs jobs somewhere else than this process (see :mod:`hashbench.run.executors`)."""

    # True when jobs run on other machines: the device is then resolved there, not here.
    remote: bool

    def describe(self) -> dict[str, Any]:
        """How cells are executed, for the run records."""
        ...

    def run(
        self,
        jobs: list[CellJob],
        on_submit: Callable[[int, str | None], None],
        on_result: Callable[[int, JobResult], None],
    ) -> None:
        """Run every job; call ``on_submit(index, job id)`` and ``on_result(index, result)``."""
        ...


def run_grid(
    spec: GridSpec,
    on_start: Callable[[Cell, int, int], None] | None = None,
    on_done: Callable[[CellOutcome], None] | None = None,
    executor: Executor | None = None,
) -> list[CellOutcome]:
    """Run every cell of the grid; returns their outcomes in grid order.

    Without ``executor`` the cells run here, in order. With one, cells without an ok record
    are sent to it as :class:`CellJob` s, once the datasets are split and the manifests saved.
    """
    # Paths are resolved once, here: a method that changes the working directory moves no
    # record, split or lock of the cells after it.
    spec = _portable(spec)
    cells = plan_grid(spec)
    try:
        device = resolve_device(spec.device)
    except UserError:
        if executor is None or not executor.remote or not str(spec.device).startswith("cuda"):
            raise
        device = "cpu"  # a GPU-less login node: the jobs resolve the device on their nodes
    store = ResultsStore(spec.results)
    prepared: dict[tuple[str, str], PreparedDataset] = {}
    for cell in cells:
        if (cell.dataset, cell.protocol) not in prepared:
            prepared[cell.dataset, cell.protocol] = prepare_dataset(
                cell.dataset, cell.protocol, spec, device, dataset_cls=cell.dataset_cls
            )
    preflight(cells, prepared)
    check_dataset_names(store, prepared)
    # Only now, with every input checked, is anything written.
    store.ensure_writable()
    for data in prepared.values():
        data.manifest_path = data.manifest.save(store.splits_dir)
    if executor is None:
        outcomes = []
        running = False  # whether a cell was midway when Ctrl-C came (not a callback between cells)
        try:
            for index, cell in enumerate(cells):
                if on_start is not None:
                    on_start(cell, index, len(cells))
                running = True
                outcome = run_cell(cell, prepared[cell.dataset, cell.protocol], store, device, spec.force)
                running = False
                outcomes.append(outcome)
                if on_done is not None:
                    on_done(outcome)
        except KeyboardInterrupt:
            raise GridInterrupted(outcomes, int(running), len(cells)) from None
        return outcomes

    results: dict[int, CellOutcome] = {}
    to_run: list[int] = []
    for index, cell in enumerate(cells):
        data = prepared[cell.dataset, cell.protocol]
        stored = store.stored_state(cell.identity, cell.method_version, cell.protocol_version, data.labels_sha256)
        if stored.protected or (not spec.force and stored.status is Status.OK):
            if stored.protected:
                results[index] = CellOutcome(cell, Status.FAILED, None, stored.reason)
            else:
                results[index] = CellOutcome(cell, Status.OK, stored.record, reused=True)
            if on_done is not None:
                on_done(results[index])
        else:
            to_run.append(index)
    execution = executor.describe()
    jobs = [make_job(cells[i], prepared[cells[i].dataset, cells[i].protocol], spec, execution) for i in to_run]
    job_ids: dict[int, str | None] = {}

    def on_submit(position: int, job_id: str | None) -> None:
        job_ids[to_run[position]] = job_id
        if on_start is not None:
            on_start(cells[to_run[position]], to_run[position], len(cells))

    def on_result(position: int, result: JobResult) -> None:
        index = to_run[position]
        outcome = result.outcome(cells[index], job_ids.get(index))
        results[index] = outcome
        if on_done is not None:
            on_done(outcome)

    try:
        executor.run(jobs, on_submit, on_result)
    except KeyboardInterrupt:
        stopped = sum(1 for index in job_ids if index not in results)
        finished = [results[index] for index in sorted(results)]
        raise GridInterrupted(finished, stopped, len(cells), remote=executor.remote) from None
    for index in to_run:  # a job that never reported back failed; it must not go unnoticed
        if index not in results:
            on_result(to_run.index(index), JobResult(cells[index].key, Status.FAILED.value, None, "its worker or job never reported back"))
    return [results[index] for index in sorted(results)]
