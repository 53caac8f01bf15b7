"""The run record: one typed, schema-versioned description of one run of the grid.

Every writer (the runner, a failed job, ``reeval``) and every reader (``status``, ``report``,
plots, published numbers, the run summary) goes through :class:`RunRecord`, never through a
raw dict. :meth:`RunRecord.from_json` checks each field against one declarative schema
(:func:`record_schema`, strict pydantic, as the experiment files and dataset settings are)
and migrates records written by earlier versions of the format; a file that parses but holds
wrong types raises :class:`RecordError` (one line: the dotted field, what is wrong, the value),
which readers report with the file's path and skip.

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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from functools import cache
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
# the record's schema


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@cache
def record_schema() -> type:
    """The run record's fields as a strict pydantic model (built on first use). It checks a
    record read from disk; the :class:`RunRecord` built from it keeps the values as read.
    Keys it does not know are ignored, so a record with a later optional field still reads."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

    strict = ConfigDict(strict=True, extra="ignore")
    Text = Annotated[str, StringConstraints(min_length=1)]
    Count = Annotated[int, Field(ge=0)]
    Number = float | None  # strict float takes an int too, never a bool
    Cutoff = Annotated[str, StringConstraints(pattern=r"^[0-9]+$")]

    class Curve(BaseModel):
        model_config = strict
        radius: list[float]
        precision: list[float]
        recall: list[float]

        @model_validator(mode="after")
        def _same_length(self) -> Curve:
            if not len(self.radius) == len(self.precision) == len(self.recall):
                raise ValueError("radius, precision and recall differ in length")
            return self

    class Metrics(BaseModel):
        model_config = ConfigDict(strict=True, extra="allow")
        __pydantic_extra__: dict[str, Number]  # every other metric is a number (or null)
        precision_at_k: dict[Cutoff, Number] | None = None
        recall_at_k: dict[Cutoff, Number] | None = None
        pr_curve: Curve | None = None
        topk: Annotated[int, Field(ge=1)] | None = None
        map_k: Count | None = None
        num_queries: Count | None = None
        num_database: Count | None = None
        bits: Count | None = None

    class ExtraMetric(BaseModel):
        model_config = strict
        value: Number
        description: Text

    class Split(BaseModel):
        model_config = strict
        manifest: str | None = None  # path relative to the results directory
        hash: str | None = None  # the manifest's content hash
        sizes: dict[str, int] = {}

    class Record(BaseModel):
        model_config = strict
        key: Text
        cell_id: Text
        method: Text
        dataset: Text
        protocol: Text
        bits: Annotated[int, Field(ge=1)]
        seed: Count
        split_seed: Count
        status: Literal[tuple(s.value for s in RECORDED)]
        params: dict[str, Any] = {}
        method_version: Text
        protocol_version: Text
        method_description: str = ""
        protocol_description: str = ""
        input: str | None = None
        split: Split | None = None
        data: dict[str, Any] | None = None
        metrics: Metrics | None = None
        metrics_version: str | None = None
        codes_sha256: str | None = None
        per_query_sha256: str | None = None
        extra_metrics: dict[str, ExtraMetric] | None = None
        timings: dict[str, Number] | None = None
        peak_memory_mb: Number = None
        training: dict[str, Any] | None = None
        environment: dict[str, Any] | None = None
        execution: dict[str, Any] | None = None
        error: str | None = None
        started: str | None = None
        finished: str | None = None
        reevaluated: str | None = None

        @model_validator(mode="after")
        def _ok_has_metrics(self) -> Record:
            if self.status == Status.OK.value:
                if self.metrics is None:
                    raise ValueError("an ok record must hold metrics")
                if not _is_number((self.metrics.__pydantic_extra__ or {}).get("map")):
                    raise ValueError("metrics.map must be a number")
            return self

    return Record


def _record_message(error: Any) -> str:
    """One line for the first error of a record's ValidationError: the dotted field, what
    was wrong, and the value found."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if str(part) != "[key]" and not str(part).startswith("function-"))
    message = re.sub(r" or instance of \w+", "", first["msg"].removeprefix("Value error, "))
    if first["type"] == "value_error":
        return f"{where}: {message}" if where else message
    found = first.get("input")
    shown = type(found).__name__ if isinstance(found, (dict, list)) else repr(found)
    return f"{where or 'record'}: {message[0].lower()}{message[1:]}, got {shown}"


@dataclass(frozen=True)
class SplitInfo:
    manifest: str | None  # path relative to the results directory
    hash: str | None  # the manifest's content hash
    sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> SplitInfo:
        """From a record's checked ``split`` object."""
        return cls(value.get("manifest"), value.get("hash"), dict(value.get("sizes") or {}))


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
    # A method's own metrics beside the standard set (its optional ``extra_metrics`` hook):
    # {name: {"value": number, "description": what it is}}; absent for methods without one.
    extra_metrics: dict[str, Any] | None = None
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
        elif head == "extra_metrics" and rest:
            value = ((self.extra_metrics or {}).get(rest) or {}).get("value")
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
        values.update({
            f"extra_metrics.{name}": float(entry["value"])
            for name, entry in (self.extra_metrics or {}).items() if _is_number(entry.get("value"))
        })
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
        """Check every field against :func:`record_schema`; migrate records of earlier
        schema versions."""
        if not isinstance(value, dict):
            raise RecordError(f"a run record must be a JSON object, got {type(value).__name__}")
        schema = value.get("schema_version", 1)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
            raise RecordError(f"schema_version must be an integer >= 1, got {schema!r}")
        if schema > SCHEMA_VERSION:
            raise NewerRecordError(
                f"schema_version {schema} is newer than this hashbench reads ({SCHEMA_VERSION}); upgrade hashbench"
            )
        if schema == 1:
            value = _migrate_v1(value)
        from pydantic import ValidationError

        try:
            record_schema().model_validate(value)
        except ValidationError as error:
            raise RecordError(_record_message(error)) from None
        fields = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        fields.update(
            schema_version=SCHEMA_VERSION,
            status=Status(value["status"]),
            params=value.get("params", {}),
            method_description=value.get("method_description") or "",
            protocol_description=value.get("protocol_description") or "",
            split=None if value.get("split") is None else SplitInfo.from_json(value["split"]),
            timings=value.get("timings") or {},
        )
        return cls(**fields)

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


