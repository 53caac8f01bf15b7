"""``hashbench reeval``: recompute every run's metrics from its stored codes, without training.

As ann-benchmarks recomputes its metrics from stored neighbours: after a metric changes (or
to fill in one that older records lack) the codes and the split manifest of each ok run are
evaluated again with the current engine. A run is refused, and left as it is, when the store's
one state resolver does not call it ok against its dataset as it is now (its ``codes.npz`` no
longer matches its record; its protocol is now another version or its labels changed: the
data changed), or when its manifest no longer matches the hash in its record; the method's
version is not compared, as its codes are evaluated as they are. A dataset made from an
embedding file is made again from the settings its records carry (``data.configured``).
A record is rewritten only when something changed: a metric's value, the metrics version,
or a codes hash or per-query values that an older record lacked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hashbench import registry
from hashbench.data import DatasetArrays, load_dataset
from hashbench.data.neighbours import relevance_for
from hashbench.data.splits import SplitManifest, check_manifest, labels_digest
from hashbench.errors import UserError
from hashbench.metric_table import METRICS_VERSION
from hashbench.reproducibility import TOLERANCE_TEXT, bit_differences, differing
from hashbench.run.runner import evaluate_codes, protocol_version
from hashbench.storage.records import RunRecord, Status
from hashbench.storage.store import CODES_NAME, ResultsStore, file_sha256


@dataclass
class ReevalOutcome:
    key: str
    state: str  # "unchanged", "updated", "refused" or "busy"
    detail: str = ""
    changed: list[str] = field(default_factory=list)  # metrics whose values changed


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Refused(Exception):
    """A run whose stored files cannot be trusted; the message says which and why."""


class _Datasets:
    """Each (dataset, dropped rows) loaded once, for its labels."""

    def __init__(self, data_root: Path, cache_dir: Path | None) -> None:
        self.data_root, self.cache_dir = Path(data_root), cache_dir
        self.loaded: dict[tuple[str, bool], DatasetArrays] = {}
        self.digests: dict[tuple[str, bool], str] = {}  # each one's labels_digest
        self.plugins: dict[str, Any] = {}

    def arrays(self, record: RunRecord) -> DatasetArrays:
        dropped = bool(record.data and "dropped_by_reason" in record.data)
        if (record.dataset, dropped) not in self.loaded:
            from hashbench.data.cache import default_cache_dir

            configured = (record.data or {}).get("configured")
            if configured is not None:  # an embedding file's dataset, made again from the record
                plugin = registry.configured_dataset(record.dataset, configured)()
            else:
                plugin = registry.get_dataset(record.dataset)()
            self.plugins[record.dataset] = plugin
            cache = self.cache_dir if self.cache_dir is not None else default_cache_dir(self.data_root)
            arrays = load_dataset(plugin, self.data_root, cache_dir=cache, drop_bad_rows=dropped)
            arrays.dataset = record.dataset
            self.loaded[record.dataset, dropped] = arrays
            self.digests[record.dataset, dropped] = labels_digest(np.asarray(arrays.labels))
        return self.loaded[record.dataset, dropped]

    def labels_sha256(self, record: RunRecord) -> str:
        return self.digests[record.dataset, bool(record.data and "dropped_by_reason" in record.data)]


def _checked_inputs(store: ResultsStore, record: RunRecord) -> tuple[SplitManifest, np.ndarray, np.ndarray]:
    """The run's manifest, checked against the hash in its record, and its codes (whose hash
    :meth:`ResultsStore.record_state` checked)."""
    codes_path = store.run_dir(record.key) / CODES_NAME
    if record.split is None or record.split.manifest is None:
        raise Refused("its record names no split manifest")
    manifest_path = store.root / record.split.manifest
    try:
        manifest = SplitManifest.load(manifest_path)
    except UserError as error:
        raise Refused(str(error)) from None
    if manifest.hash != record.split.hash:
        raise Refused(f"split manifest {manifest_path} is not the one the run used (hash {manifest.hash[:12]}, recorded {str(record.split.hash)[:12]})")
    try:
        with np.load(codes_path, allow_pickle=False) as codes:
            query_codes, database_codes = codes["query_codes"], codes["database_codes"]
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise Refused(f"{codes_path} cannot be read ({type(error).__name__}: {error}); rerun the cell") from None
    width = -(-record.bits // 8)
    for name, codes, split in (("query", query_codes, "query"), ("database", database_codes, "database")):
        expected = (int(manifest.splits[split].size), width)
        if codes.dtype != np.uint8 or codes.shape != expected:
            raise Refused(f"{codes_path}: {name} codes are {codes.dtype} {codes.shape}, expected uint8 {expected}")
    return manifest, query_codes, database_codes


def reevaluate_record(store: ResultsStore, record: RunRecord, datasets: _Datasets, now: Callable[[], str]) -> ReevalOutcome:
    arrays = datasets.arrays(record)
    # The protocol's version covers what defines the data where it can change (an embedding
    # file's hash and settings): another version means other labels or neighbours.
    protocol = datasets.plugins[record.dataset].protocol(record.protocol)
    state = store.record_state(record, record.method_version, protocol_version(protocol), datasets.labels_sha256(record))
    if state.status is not Status.OK:  # codes not whole, or the data changed since the run
        raise Refused(f"{state.reason}; rerun the cell")
    manifest, query_codes, database_codes = _checked_inputs(store, record)
    labels = np.asarray(arrays.labels)
    if manifest.num_items != len(labels):
        raise Refused(f"{record.dataset} now has {len(labels)} items, the split manifest {manifest.num_items}: the data changed")
    try:
        check_manifest(manifest, record.dataset, protocol, record.split_seed, len(labels))
    except UserError as error:
        raise Refused(str(error)) from None
    query, database = manifest.splits["query"], manifest.splits["database"]
    # Relevance as the run had it: shared labels, or a dataset's exact nearest neighbours.
    result = evaluate_codes(
        manifest, query_codes, database_codes, labels[query], labels[database], record.bits, relevance_for(arrays, manifest)
    )
    metrics = json.loads(json.dumps(result.to_dict()))  # as stored: string keys, plain floats
    # Reproduced means integers equal and floats equal within the tolerance: SIMD kernels of
    # another CPU change the last bits, which is not a change of the run's result.
    changed = differing(record.metrics or {}, metrics)
    codes_hash = record.codes_sha256 or file_sha256(store.run_dir(record.key) / CODES_NAME)
    per_query_whole = store.read_per_query(record) is not None
    if not changed and record.metrics_version == METRICS_VERSION and record.codes_sha256 is not None and per_query_whole:
        detail = f"metrics version {METRICS_VERSION}"
        last_bits = bit_differences(record.metrics or {}, metrics)
        if last_bits:
            detail += f"; within {TOLERANCE_TEXT}: {', '.join(last_bits)} differ in the last bits only"
        return ReevalOutcome(record.key, "unchanged", detail)
    per_query_hash = record.per_query_sha256 if per_query_whole and not changed else store.write_per_query(record.key, result)
    store.write_record(
        record.with_updates(
            metrics=metrics,
            metrics_version=METRICS_VERSION,
            codes_sha256=codes_hash,
            per_query_sha256=per_query_hash,
            reevaluated=now(),
        )
    )
    detail = f"metrics version {record.metrics_version} → {METRICS_VERSION}"
    if changed:
        detail += f"; changed: {', '.join(changed)}"
    if not per_query_whole:
        detail += "; per-query values written"
    return ReevalOutcome(record.key, "updated", detail, changed)


def reevaluate(
    results: Path,
    data_root: Path,
    cache_dir: Path | None = None,
    on_outcome: Callable[[ReevalOutcome], None] | None = None,
) -> tuple[list[ReevalOutcome], list[str]]:
    """Re-evaluate every ok run of ``results``; returns the outcomes and a warning for each
    record that cannot be read (skipped)."""
    store = ResultsStore(results)
    datasets = _Datasets(data_root, cache_dir)
    outcomes, warnings = [], []
    for item in store.iter_records():
        if item.record is None:
            warnings.append(item.warning)
            continue
        record = item.record
        if not record.ok:
            continue
        lock = store.try_lock(record.key)
        if lock is None:
            outcome = ReevalOutcome(record.key, "busy", "a runner holds it; run reeval again when it has finished")
        else:
            try:
                outcome = reevaluate_record(store, record, datasets, _now)
            except (Refused, UserError) as error:  # untrustworthy files, or the data is not there
                outcome = ReevalOutcome(record.key, "refused", str(error))
            finally:
                lock.release()
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes, warnings
