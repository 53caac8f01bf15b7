"""Published numbers beside the reproduced ones.

A CSV of numbers taken from papers (one row per method × dataset × protocol × metric ×
bits), with the source of each. The package ships one (``hashbench/resources/published.csv``);
a user may pass their own with ``hashbench report --published FILE``. Lines starting with
``#`` are comments.

Columns: ``method, dataset, protocol, metric, bits, value, source`` and, optionally,
``checked`` (how the number was verified against its source) and ``kind``: ``primary`` (read
in the paper itself; the default, also for files without the column) or ``secondary`` (read
in another source that quotes the paper: a later paper's table, an author's comment, a
repository's notes; ``source`` then names that source). Values are fractions, on the
scale of the run records (0.590, not 59.0). ``metric`` names a record metric (``map`` is
mAP at the protocol's k, ``map_all``, ``precision_radius2``, ``precision_at_k.1000``, ...).
``protocol`` is the hashbench protocol matching the paper's stated setting (which one is which:
``docs/PROTOCOLS.md``, section "Published numbers").

Every output that shows a secondary number marks it with ``‡`` (the report's † means "not
distinguishable from the best") and says "secondary: cited in <source>, not checked against
the paper". The CSV written beside the report neutralises spreadsheet formulas
(:mod:`hashbench.report.csv_safe`): a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'``, unless it reads as a plain number.

The shipped file holds each number with its citation and how it was checked, primary or
secondary as it was read.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from hashbench.errors import UserError
from hashbench.metric_table import metric_info
from hashbench.report import csv_safe
from hashbench.report.results import row_labels

COLUMNS = ["method", "dataset", "protocol", "metric", "bits", "value", "source"]
OPTIONAL_COLUMNS = ["checked", "kind"]
IDENTITY = ["method", "dataset", "protocol", "metric", "bits"]
PRIMARY, SECONDARY = "primary", "secondary"
KINDS = (PRIMARY, SECONDARY)
# The summary table's † means "not distinguishable from the column's best"; secondary
# numbers get a mark of their own.
SECONDARY_MARK = "‡"
SECONDARY_LEGEND = f"{SECONDARY_MARK} secondary: read in the source named, not checked against the paper itself"


def citation(source: str, kind: str) -> str:
    """The source as every output shows it: a secondary number says where it was read."""
    if kind == SECONDARY:
        return f"{SECONDARY_MARK} secondary: cited in {source}, not checked against the paper"
    return source


def builtin_path() -> Path:
    """The CSV shipped with the package."""
    return Path(str(resources.files("hashbench") / "resources" / "published.csv"))


def load_published(path: Path | None = None) -> pd.DataFrame:
    """Read and check a published-numbers CSV (the shipped one when ``path`` is None)."""
    path = builtin_path() if path is None else Path(path)
    try:
        frame = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError as error:
        raise UserError(f"--published {path}: file not found") from error
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise UserError(f"--published {path}: not a readable CSV ({error})") from error
    frame.columns = [str(column).strip() for column in frame.columns]
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise UserError(
            f"--published {path}: missing column(s) {', '.join(missing)}; the header must be "
            f"{','.join(COLUMNS)}[,checked][,kind]"
        )
    frame = frame[[*COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]].copy()
    for column in frame.columns:
        frame[column] = frame[column].str.strip()
    # Files without the column (the older format) hold primary numbers only.
    frame["kind"] = frame["kind"].str.lower().replace("", PRIMARY) if "kind" in frame.columns else PRIMARY
    # Rows are numbered after the header, not counting comment lines.
    for position, row in frame.iterrows():
        where = f"--published {path}: data row {position + 1} ({row['method']}, {row['dataset']}, {row['bits']} bits)"
        for column in COLUMNS:
            if not row[column]:
                raise UserError(f"{where}: {column} is empty; every number needs all of {', '.join(COLUMNS)}")
        try:
            bits = int(row["bits"])
        except ValueError:
            bits = 0
        if bits < 1:
            raise UserError(f"{where}: bits must be a positive integer, got {row['bits']!r}")
        try:
            value = float(row["value"])
        except ValueError:
            raise UserError(f"{where}: value {row['value']!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{where}: value {value} is outside [0, 1]; give fractions (0.590), not percent (59.0)")
        if row["kind"] not in KINDS:
            raise UserError(
                f"{where}: kind must be {PRIMARY} (read in the paper itself) or {SECONDARY} (read in a source "
                f"that quotes it), got {row['kind']!r}"
            )
    frame["bits"] = frame["bits"].astype(int)
    frame["value"] = frame["value"].astype(float)
    duplicated = frame.duplicated(IDENTITY, keep=False)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise UserError(
            f"--published {path}: {first['method']} on {first['dataset']}/{first['protocol']} "
            f"{first['metric']} at {first['bits']} bits appears more than once; keep one row per number"
        )
    return frame.reset_index(drop=True)


def compare(runs: pd.DataFrame, published: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Published ``metric`` values beside the reproduced mean ± std over seeds.

    ``runs`` is :func:`hashbench.report.tables.load_runs`' frame. Only datasets present in the runs
    are compared; a method run with several parameter sets gets one line per set. The
    difference is reproduced − published. ``kind`` is primary or secondary; ``source`` is the
    citation as shown (:func:`citation`).
    """
    columns = [
        "method", "dataset", "protocol", "bits", "metric", "published", "reproduced", "std", "runs", "difference", "kind", "source",
    ]
    ok = runs[runs["status"] == "ok"].copy() if len(runs) else runs
    wanted = published[(published["metric"] == metric) & published["dataset"].isin(set(ok["dataset"] if "dataset" in ok else []))]
    if wanted.empty:
        return pd.DataFrame(columns=columns)
    ok["label"] = row_labels(ok)
    rows = []
    for _, number in wanted.sort_values(["dataset", "method", "bits"]).iterrows():
        matching = ok[
            (ok["method"] == number["method"])
            & (ok["dataset"] == number["dataset"])
            & (ok["protocol"] == number["protocol"])
            & (ok["bits"] == number["bits"])
        ]
        base = {
            "dataset": number["dataset"],
            "protocol": number["protocol"],
            "bits": int(number["bits"]),
            "metric": metric,
            "published": float(number["value"]),
            "kind": number["kind"],
            "source": citation(number["source"], number["kind"]),
        }
        if matching.empty or metric not in matching.columns or matching[metric].isna().all():
            rows.append({**base, "method": number["method"], "reproduced": None, "std": None, "runs": 0, "difference": None})
            continue
        for label, group in matching.groupby("label", sort=True):
            values = group[metric].dropna()
            mean = float(values.mean())
            rows.append(
                {
                    **base,
                    "method": label,
                    "reproduced": mean,
                    "std": float(values.std()) if len(values) > 1 else None,
                    "runs": int(len(values)),
                    "difference": mean - float(number["value"]),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def comparison_markdown(comparison: pd.DataFrame, metric: str, source_file: Path | str) -> str:
    lines = [f"published {metric_info(metric).label} beside the reproduced mean (difference = reproduced − published; {source_file})", ""]
    if comparison.empty:
        return "\n".join([*lines, "no published numbers for this metric on the datasets that were run"]) + "\n"
    header = ["method", "dataset", "protocol", "bits", "published", "reproduced", "difference", "source"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for _, row in comparison.iterrows():
        if row["reproduced"] is None or pd.isna(row["reproduced"]):
            reproduced, difference = "not run", "—"
        else:
            reproduced = f"{row['reproduced']:.4f}"
            if row["runs"] > 1 and row["std"] is not None and not pd.isna(row["std"]):
                reproduced += f" ± {row['std']:.4f} (n={row['runs']})"
            difference = f"{row['difference']:+.4f}"
        source = str(row["source"]).replace("|", "\\|")  # a bar would end the cell
        lines.append(
            f"| {row['method']} | {row['dataset']} | {row['protocol']} | {row['bits']} | {published_text(row)} | "
            f"{reproduced} | {difference} | {source} |"
        )
    if has_secondary(comparison):
        lines += ["", SECONDARY_LEGEND]
    return "\n".join(lines) + "\n"


def published_text(row: pd.Series) -> str:
    """The published value as the Markdown and HTML tables show it, marked when secondary."""
    text = f"{row['published']:.4f}"
    return f"{text} {SECONDARY_MARK}" if row.get("kind") == SECONDARY else text


def has_secondary(comparison: pd.DataFrame) -> bool:
    return "kind" in comparison.columns and bool((comparison["kind"] == SECONDARY).any())


def comparison_csv(comparison: pd.DataFrame) -> str:
    """``published-<metric>.csv``: the comparison with every text cell safe to open in a spreadsheet."""
    return csv_safe.to_csv(comparison, float_format="%.6f")
