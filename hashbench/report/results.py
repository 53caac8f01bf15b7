"""Run records as a pandas DataFrame: what the report, the plots and the published-number
comparison share (they import this module; it imports none of them).

Reading leaves out, each with a warning naming the file: records that cannot be used, stale
records (an older method or protocol version than the one installed; kept with
``include_stale``), and ok records whose codes are missing or changed: the states of the
store's one resolver, as ``status`` shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from hashbench.run.status import current_versions
from hashbench.storage.records import RunRecord, Status
from hashbench.storage.store import ResultsStore

ID_COLUMNS = [
    "key", "method", "params", "dataset", "protocol", "split_seed", "seed", "bits", "status",
    "method_version", "protocol_version",
]


def read_records(results: Path, *, include_stale: bool = False) -> tuple[list[RunRecord], list[str]]:
    """The usable run records of ``results``, and a warning for each one left out."""
    store = ResultsStore(results)
    records, warnings = [], []
    stale = damaged = 0
    for item in store.iter_records():
        if item.record is None:
            warnings.append(item.warning)
            continue
        state = store.recorded_state(item.record, current_versions)
        if state.status is Status.STALE and not include_stale:
            stale += 1
            continue
        if state.status is Status.DAMAGED:
            warnings.append(f"skipping {item.path}: {state.reason}; rerun it with `hashbench run`")
            damaged += 1
            continue
        records.append(item.record)
    # One run per cell and version: a record left under a key of the older format is
    # superseded by a newer record of the same run.
    latest: dict[tuple[str, str, str], RunRecord] = {}
    for record in records:
        slot = (record.cell_id, record.method_version, record.protocol_version)
        if slot not in latest or (record.finished or "") > (latest[slot].finished or ""):
            latest[slot] = record
    if len(latest) < len(records):
        warnings.append(f"{len(records) - len(latest)} older record(s) of runs recorded again are left out")
        records = [record for record in records if latest[record.cell_id, record.method_version, record.protocol_version] is record]
    if stale:
        warnings.append(
            f"left out {stale} stale run(s), made under an older method or protocol version "
            "(`hashbench status` lists them; `hashbench run` redoes them; --include-stale keeps them)"
        )
    return records, warnings


def frame_from_records(records: list[RunRecord]) -> pd.DataFrame:
    """One row per record: identity columns, every recorded number (dotted names), device,
    profile and the mAP cut-off."""
    rows = []
    for record in records:
        row: dict[str, Any] = {column: getattr(record, column) for column in ID_COLUMNS}
        row["status"] = record.status.value
        row["params"] = json.dumps(record.params, sort_keys=True)
        row["error"] = record.error
        row["device"] = record.device
        row["profile"] = record.profile
        row["map_k"] = record.map_k
        row["split_hash"] = record.split.hash if record.split is not None else None
        row["data_id"] = (record.data or {}).get("labels_sha256")
        row.update(record.scalar_metrics())
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ID_COLUMNS)


def load_runs(results: Path, *, include_stale: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """:func:`read_records` as a frame, with the warnings."""
    records, warnings = read_records(results, include_stale=include_stale)
    return frame_from_records(records), warnings


def default_params(method: str) -> dict[str, Any] | None:
    """The installed method's default hyperparameters (None when it is not installed)."""
    from hashbench import registry
    from hashbench.errors import UserError
    from hashbench.params import params_to_dict

    try:
        return json.loads(json.dumps(params_to_dict(registry.get_method(method).Params())))
    except (UserError, TypeError):
        return None


def row_labels(frame: pd.DataFrame) -> pd.Series:
    """The method name, plus the parameters a run set away from the defaults or that differ
    between its runs, and its version when several are shown: a row per distinct setting,
    so overridden runs never pass for default ones."""
    labels = frame["method"].astype(str).copy()
    versioned = frame.get("method_version")
    for method, group in frame.groupby("method"):
        variants = group["params"].unique()
        versions = versioned[group.index].unique() if versioned is not None else []
        decoded = {variant: json.loads(variant) for variant in variants}
        defaults = default_params(str(method)) or {}
        keys = sorted({key for params in decoded.values() for key in params})
        shown = [
            key
            for key in keys
            if len({json.dumps(p.get(key)) for p in decoded.values()}) > 1
            or any(key in defaults and json.dumps(p.get(key)) != json.dumps(defaults[key]) for p in decoded.values())
        ]
        if not shown and len(versions) < 2:
            continue
        for index in group.index:
            params = decoded[frame.at[index, "params"]]
            parts = [f"{key}={params.get(key)}" for key in shown]
            if len(versions) > 1:
                parts.insert(0, f"v{frame.at[index, 'method_version']}")
            labels[index] = f"{method} ({', '.join(parts)})"
    return labels


def column_captions(frame: pd.DataFrame) -> dict[str, str]:
    """Per dataset column: what was run there (protocol and its cut-off k, seeds per cell,
    profile, rows with overridden parameters), for table and figure captions."""
    frame = frame.assign(column_dataset=dataset_columns(frame), label=row_labels(frame))
    captions = {}
    for column, group in frame.groupby("column_dataset", sort=True):
        parts = [str(column)]
        protocols = sorted(group["protocol"].astype(str).unique())
        parts.append(f"protocol {', '.join(protocols)}")
        cutoffs = sorted({int(k) for k in group["map_k"].dropna()}) if "map_k" in group else []
        if cutoffs:
            parts.append(f"mAP@k with k = {', '.join(map(str, cutoffs))}")
        counts = group.groupby(["label", "bits"]).size()
        low, high = int(counts.min()), int(counts.max())
        parts.append(f"{low if low == high else f'{low}–{high}'} seed{'s' if high != 1 else ''} per cell")
        profiles = sorted({str(p) for p in group["profile"].dropna()}) if "profile" in group else []
        if profiles:
            note = " (CPU settings for small images, not the papers')" if "tiny" in profiles else ""
            parts.append(f"profile {', '.join(profiles)}{note}")
        overridden = sorted({label for label in group["label"] if "(" in label})
        if overridden:
            parts.append(f"parameters set: {'; '.join(overridden)}")
        captions[str(column)] = " · ".join(parts)
    return captions


def dataset_columns(frame: pd.DataFrame) -> list[str]:
    """One column per dataset (and protocol, when a dataset was run under several).

    A cell pools only runs of the same data and protocol definition: runs of one protocol
    under another protocol version (a changed draw or cut-off, another embedding file) or on
    labels with another digest get a column of their own, named by what tells them apart."""
    if not len(frame):
        return []
    data_ids = frame["data_id"] if "data_id" in frame else pd.Series("", index=frame.index)
    protocols_per_dataset = frame.groupby("dataset")["protocol"].nunique()
    identities = pd.DataFrame(
        {"dataset": frame["dataset"], "protocol": frame["protocol"], "version": frame["protocol_version"].astype(str), "data": data_ids.fillna("")}
    )
    versions = identities.groupby(["dataset", "protocol"])["version"].nunique()
    # runs that recorded no labels digest (made before it was recorded) pool with those that did
    digests = identities[identities["data"] != ""].groupby(["dataset", "protocol", "version"])["data"].nunique()
    columns = []
    for dataset, protocol, version, data in identities.itertuples(index=False):
        column = f"{dataset}/{protocol}" if protocols_per_dataset[dataset] > 1 else str(dataset)
        if versions[dataset, protocol] > 1:
            column += f" (protocol v{version})"
        if digests.get((dataset, protocol, version), 0) > 1:
            column += f" (labels {data[:8] or 'unrecorded'})"
        columns.append(column)
    return columns
