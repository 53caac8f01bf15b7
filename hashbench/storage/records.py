"""The run record: one typed, schema-versioned description of one run of the grid.

Every writer (the runner, a failed job, ``reeval``) and every reader (``status``, ``report``,
plots, published numbers, the run summary) goes through :class:`RunRecord`, never through a
raw dict. :meth:`RunRecord.from_json` checks each field's type and migrates records written
by earlier versions of the format; a file that parses but holds wrong types raises
:class:`RecordError`, which readers report with the file's path and skip.

Versions. Each method and each split protocol declares a ``version`` (a string bumped when
its behaviour changes); both are part of the run key, so a changed method gets new run
folders, and a record made under an older version is *stale*: not reused, left out of
reports. ``metrics_version`` says which version of the metric definitions computed
``metrics``; ``hashbench reeval`` recomputes them from the stored codes.

Schema versions: 1 (no ``schema_version`` field; no versions, cell id or codes hash; read as
version 1 of every method and protocol), 2 (current).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = 2
DEFAULT_VERSION = "1"  # of a method or protocol that declares none, and of schema-1 records


class Status(StrEnum):
    """The one vocabulary of run, status and report.

    A record holds ``ok`` or ``failed``; the others describe a cell of a grid.
    """

    OK = "ok"  # finished; codes and metrics stored and whole
    FAILED = "failed"  # the record says why
    STALE = "stale"  # finished under an older method or protocol version: redone by `run`
    DAMAGED = "damaged"  # an ok record whose codes are missing or changed since: redone by `run`
    RUNNING = "running"  # a process holds the cell's lock
    INTERRUPTED = "interrupted"  # a run folder (checkpoint) without a record: killed while training
    PENDING = "pending"  # never run


RECORDED = (Status.OK, Status.FAILED)


class RecordError(ValueError):
    """A run record that cannot be used: the message names the field and what is wrong."""


class NewerRecordError(RecordError):
    """A record of a newer schema than this hashbench reads: not its to replace."""


# --------------------------------------------------------------------------------------------
# identity and run key


@dataclass(frozen=True)
class CellIdentity:
    """What a cell of the grid is, apart from the versions of its method and protocol."""

    method: str
    params: Mapping[str, Any]
    dataset: str
    protocol: str
    split_seed: int
    bits: int
    seed: int

    def _digest(self, extra: Mapping[str, Any]) -> str:
        identity = {
            "method": self.method,
            "params": dict(self.params),
            "dataset": self.dataset,
            "protocol": self.protocol,
            "split_seed": self.split_seed,
            "bits": self.bits,
            "seed": self.seed,
            **extra,
        }
        text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    @property
    def prefix(self) -> str:
        """The readable part of the run key, shared by every version of the cell."""
        return f"{self.method}-{self.dataset}-{self.protocol}-split{self.split_seed}-{self.bits}b-seed{self.seed}-"

    @property
    def cell_id(self) -> str:
        """A digest of the identity without versions (the run key of schema-1 records)."""
        return self._digest({})

    def key(self, method_version: str, protocol_version: str) -> str:
        """The run folder's name: the readable prefix and a digest that includes the versions."""
        digest = self._digest({"method_version": method_version, "protocol_version": protocol_version})
        return self.prefix + digest


# --------------------------------------------------------------------------------------------
# field checks


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value):
        raise RecordError(f"{name} must be a {'string' if optional else 'non-empty string'}, got {value!r}")
    return value


def _integer(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecordError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _mapping(value: Any, name: str, optional: bool = True) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise RecordError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _number(value: Any, name: str, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if not _is_number(value):
        raise RecordError(f"{name} must be a number, got {value!r}")
    return value


def _number_map(value: Any, name: str) -> dict[str, float]:
    mapping = _mapping(value, name, optional=False)
    for key, item in mapping.items():
        if item is not None and not _is_number(item):
            raise RecordError(f"{name}.{key} must be a number, got {item!r}")
    return mapping


def _check_metrics(metrics: Any) -> dict[str, Any]:
    metrics = _mapping(metrics, "metrics", optional=False)
    for key, value in metrics.items():
        where = f"metrics.{key}"
        if key in ("precision_at_k", "recall_at_k"):
            for k in _number_map(value, where):
                if not k.isdigit():
                    raise RecordError(f"{where} keys must be cut-offs k, got {k!r}")
        elif key == "pr_curve":
            curve = _mapping(value, where, optional=False)
            lengths = set()
            for part in ("radius", "precision", "recall"):
                points = curve.get(part)
                if not isinstance(points, list) or not all(_is_number(p) for p in points):
                    raise RecordError(f"{where}.{part} must be a list of numbers")
                lengths.add(len(points))
            if len(lengths) != 1:
                raise RecordError(f"{where}: radius, precision and recall differ in length")
        elif key == "topk":
            if value is not None:
                _integer(value, where, 1)
        elif key in ("map_k", "num_queries", "num_database", "bits"):
            _integer(value, where, 0)
        elif value is not None and not _is_number(value):
            raise RecordError(f"{where} must be a number, got {value!r}")
    return metrics


@dataclass(frozen=True)
class SplitInfo:
    manifest: str | None  # path relative to the results directory
    hash: str | None  # the manifest's content hash
    sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> SplitInfo:
        value = _mapping(value, "split", optional=False)
        sizes = value.get("sizes") or {}
        if not isinstance(sizes, dict) or not all(isinstance(n, int) and not isinstance(n, bool) for n in sizes.values()):
            raise RecordError("split.sizes must map split names to integers")
        return cls(_text(value.get("manifest"), "split.manifest", True), _text(value.get("hash"), "split.hash", True), sizes)


# --------------------------------------------------------------------------------------------
# the record


@dataclass(frozen=True)
class RunRecord:
    key: str
    cell_id: str
    method: str
    dataset: str
    protocol: str
    bits: int
    seed: int
    split_seed: int
    status: Status
    params: dict[str, Any]
    method_version: str = DEFAULT_VERSION
    protocol_version: str = DEFAULT_VERSION
    schema_version: int = SCHEMA_VERSION
    method_description: str = ""
    protocol_description: str = ""
    input: str | None = None
    split: SplitInfo | None = None
    data: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    metrics_version: str | None = None
    codes_sha256: str | None = None
    per_query_sha256: str | None = None  # of per_query.npz: each query's AP@k, AP@all, ... (float32)
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    training: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    execution: dict[str, Any] | None = None
    error: str | None = None
    started: str | None = None
    finished: str | None = None
    reevaluated: str | None = None

    @classmethod
    def new(cls, identity: CellIdentity, method_version: str, protocol_version: str, **fields: Any) -> RunRecord:
        """A record of the cell ``identity`` under these versions (key and cell id derived)."""
        return cls(
            key=identity.key(method_version, protocol_version),
            cell_id=identity.cell_id,
            method=identity.method,
            dataset=identity.dataset,
            protocol=identity.protocol,
            bits=identity.bits,
            seed=identity.seed,
            split_seed=identity.split_seed,
            params=dict(identity.params),
            method_version=method_version,
            protocol_version=protocol_version,
            **fields,
        )

    # -- reading -----------------------------------------------------------------------------

    @property
    def identity(self) -> CellIdentity:
        return CellIdentity(self.method, self.params, self.dataset, self.protocol, self.split_seed, self.bits, self.seed)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def map_k(self) -> int | None:
        return None if self.metrics is None else self.metrics.get("map_k")

    @property
    def device(self) -> str | None:
        device = (self.environment or {}).get("device")
        return device if isinstance(device, str) else None

    @property
    def profile(self) -> str | None:
        """The profile a deep method resolved (``paper`` / ``tiny``), when it recorded one."""
        settings = (self.training or {}).get("settings")
        profile = settings.get("profile") if isinstance(settings, dict) else None
        if profile is None:
            profile = (self.training or {}).get("profile")
        return profile if isinstance(profile, str) else None

    @property
    def pr_curve(self) -> dict[str, list[float]] | None:
        """Precision and recall within each Hamming radius (``radius``, ``precision``, ``recall``)."""
        return None if self.metrics is None else self.metrics.get("pr_curve")

    @property
    def precision_at_k(self) -> dict[str, float]:
        return {} if self.metrics is None else dict(self.metrics.get("precision_at_k") or {})

    def metric(self, name: str) -> float | None:
        """A recorded number by its dotted name (``map``, ``precision_at_k.100``,
        ``timings.fit``, ``peak_memory_mb``); None when not recorded."""
        if name == "peak_memory_mb":
            return self.peak_memory_mb
        head, _, rest = name.partition(".")
        if head == "timings" and rest:
            value: Any = self.timings.get(rest)
        else:
            value = self.metrics
            for part in name.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        return float(value) if _is_number(value) else None

    def scalar_metrics(self) -> dict[str, float]:
        """Every recorded number as ``{dotted name: value}`` (curves left out)."""
        values: dict[str, float] = {}
        for key, value in (self.metrics or {}).items():
            if key in ("precision_at_k", "recall_at_k"):
                values.update({f"{key}.{k}": float(v) for k, v in value.items() if v is not None})
            elif _is_number(value) and key not in ("map_k", "topk", "num_queries", "num_database", "bits"):
                values[key] = float(value)
        values.update({f"timings.{name}": float(v) for name, v in self.timings.items() if v is not None})
        if self.peak_memory_mb is not None:
            values["peak_memory_mb"] = float(self.peak_memory_mb)
        return values

    def is_current(self, method_version: str, protocol_version: str) -> bool:
        return (self.method_version, self.protocol_version) == (method_version, protocol_version)

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["status"] = self.status.value
        # Leave out what a run did not produce, so records stay short and readable.
        return {key: item for key, item in value.items() if key == "params" or item not in (None, {})}

    @classmethod
    def from_json(cls, value: Any) -> RunRecord:
        """Check every field's type; migrate records of earlier schema versions."""
        if not isinstance(value, dict):
            raise RecordError(f"a run record must be a JSON object, got {type(value).__name__}")
        value = dict(value)
        schema = value.get("schema_version", 1)
        schema = _integer(schema, "schema_version", 1)
        if schema > SCHEMA_VERSION:
            raise NewerRecordError(
                f"schema_version {schema} is newer than this hashbench reads ({SCHEMA_VERSION}); upgrade hashbench"
            )
        if schema == 1:
            value = _migrate_v1(value)
        status = value.get("status")
        if not isinstance(status, str) or status not in {s.value for s in RECORDED}:
            raise RecordError(f"status must be one of {', '.join(s.value for s in RECORDED)}, got {status!r}")
        params = value.get("params", {})
        if not isinstance(params, dict):
            raise RecordError(f"params must be an object, got {type(params).__name__}")
        record = cls(
            key=_text(value.get("key"), "key"),
            cell_id=_text(value.get("cell_id"), "cell_id"),
            method=_text(value.get("method"), "method"),
            dataset=_text(value.get("dataset"), "dataset"),
            protocol=_text(value.get("protocol"), "protocol"),
            bits=_integer(value.get("bits"), "bits", 1),
            seed=_integer(value.get("seed"), "seed"),
            split_seed=_integer(value.get("split_seed"), "split_seed"),
            status=Status(status),
            params=params,
            method_version=_text(value.get("method_version"), "method_version"),
            protocol_version=_text(value.get("protocol_version"), "protocol_version"),
            schema_version=SCHEMA_VERSION,
            method_description=_text(value.get("method_description", ""), "method_description", True) or "",
            protocol_description=_text(value.get("protocol_description", ""), "protocol_description", True) or "",
            input=_text(value.get("input"), "input", True),
            split=None if value.get("split") is None else SplitInfo.from_json(value["split"]),
            data=_mapping(value.get("data"), "data"),
            metrics=None if value.get("metrics") is None else _check_metrics(value["metrics"]),
            metrics_version=_text(value.get("metrics_version"), "metrics_version", True),
            codes_sha256=_text(value.get("codes_sha256"), "codes_sha256", True),
            per_query_sha256=_text(value.get("per_query_sha256"), "per_query_sha256", True),
            timings=_number_map(value.get("timings") or {}, "timings"),
            peak_memory_mb=_number(value.get("peak_memory_mb"), "peak_memory_mb"),
            training=_mapping(value.get("training"), "training"),
            environment=_mapping(value.get("environment"), "environment"),
            execution=_mapping(value.get("execution"), "execution"),
            error=_text(value.get("error"), "error", True),
            started=_text(value.get("started"), "started", True),
            finished=_text(value.get("finished"), "finished", True),
            reevaluated=_text(value.get("reevaluated"), "reevaluated", True),
        )
        if record.ok and record.metrics is None:
            raise RecordError("an ok record must hold metrics")
        if record.ok and not isinstance(record.metrics.get("map"), (int, float)):
            raise RecordError("metrics.map must be a number")
        return record

    def with_updates(self, **changes: Any) -> RunRecord:
        return replace(self, **changes)


def _migrate_v1(value: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record: no versions (all were 1), its key digest is the cell id."""
    value = dict(value)
    value.setdefault("method_version", DEFAULT_VERSION)
    value.setdefault("protocol_version", DEFAULT_VERSION)
    if value.get("metrics") is not None:
        value.setdefault("metrics_version", "1")
    key = value.get("key")
    if isinstance(key, str) and "-" in key:
        value.setdefault("cell_id", key.rsplit("-", 1)[1])
    return value


