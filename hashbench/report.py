"""Tables in the papers' layout from every run record of a results directory.

Rows are methods, columns are dataset × bits, cells are mean ± std over seeds with the
best mean of each column in bold; written as Markdown, LaTeX (booktabs), CSV and HTML.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hashbench import atomic
from hashbench.errors import UserError
from hashbench.store import ResultsStore

ID_COLUMNS = ["key", "method", "params", "dataset", "protocol", "split_seed", "seed", "bits", "status"]


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, into)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        into[prefix] = value


def load_runs(results: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per run record: identity columns, flattened ``metrics``, ``timings.*``.

    Returns the frame and a warning for each record that could not be read (skipped).
    """
    store = ResultsStore(results)
    rows, warnings = [], []
    for item in store.iter_records():
        record = item.record
        if record is None:
            warnings.append(f"skipping {item.path}: unreadable run record ({item.error})")
            continue
        missing = [column for column in ("method", "dataset", "bits", "status") if column not in record]
        if missing:
            warnings.append(f"skipping {item.path}: run record lacks {', '.join(missing)}")
            continue
        row: dict[str, Any] = {column: record.get(column) for column in ID_COLUMNS}
        row["params"] = json.dumps(record.get("params", {}), sort_keys=True)
        row["error"] = record.get("error")
        _flatten("", record.get("metrics", {}), row)
        _flatten("timings", record.get("timings", {}), row)
        if "peak_memory_mb" in record:
            row["peak_memory_mb"] = record["peak_memory_mb"]
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ID_COLUMNS)
    return frame, warnings


def _row_labels(frame: pd.DataFrame) -> pd.Series:
    """The method name, plus the parameters that differ when a method ran with several."""
    labels = frame["method"].astype(str).copy()
    for method, group in frame.groupby("method"):
        variants = group["params"].unique()
        if len(variants) < 2:
            continue
        decoded = {variant: json.loads(variant) for variant in variants}
        keys = sorted({key for params in decoded.values() for key in params})
        differing = [key for key in keys if len({json.dumps(p.get(key)) for p in decoded.values()}) > 1]
        for variant, params in decoded.items():
            suffix = ", ".join(f"{key}={params.get(key)}" for key in differing)
            labels[group.index[group["params"] == variant]] = f"{method} ({suffix})"
    return labels


@dataclass
class SummaryTable:
    """Mean, std and count of one metric, rows = methods, columns = (dataset, bits)."""

    metric: str
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame

    def best(self) -> pd.DataFrame:
        """True where a cell holds its column's best mean (ties all bold)."""
        maxima = self.mean.max(axis=0)
        return self.mean.eq(maxima, axis=1) & self.mean.notna()

    def cell_text(self, row: str, column: tuple) -> str | None:
        mean = self.mean.at[row, column]
        if pd.isna(mean):
            return None
        std = self.std.at[row, column]
        count = int(self.count.at[row, column])
        text = f"{mean:.4f}"
        if count > 1:
            text += f" ± {0.0 if pd.isna(std) else std:.4f}"
        return text


def summarise(frame: pd.DataFrame, metric: str = "map") -> SummaryTable:
    ok = frame[frame["status"] == "ok"].copy() if len(frame) else frame
    if ok.empty:
        raise UserError("no successful runs in the results directory; run `hashbench run` first")
    if metric not in ok.columns:
        numeric = sorted(c for c in ok.columns if c not in ID_COLUMNS and c != "error" and not c.startswith("timings"))
        raise UserError(f"unknown metric {metric!r}; available: {', '.join(numeric)}")
    ok["row"] = _row_labels(ok)
    # One column per dataset (and protocol, when a dataset was run under several).
    protocols_per_dataset = ok.groupby("dataset")["protocol"].nunique()
    ok["column_dataset"] = [
        f"{dataset}/{protocol}" if protocols_per_dataset[dataset] > 1 else dataset
        for dataset, protocol in zip(ok["dataset"], ok["protocol"], strict=True)
    ]
    grouped = ok.groupby(["row", "column_dataset", "bits"])[metric]
    stats = grouped.agg(["mean", "std", "count"])
    order = list(dict.fromkeys(ok.sort_values(["method", "row"])["row"]))

    def pivot(statistic: str) -> pd.DataFrame:
        table = stats[statistic].unstack(["column_dataset", "bits"])
        table = table.reindex(index=order)
        return table.sort_index(axis=1)

    return SummaryTable(metric, pivot("mean"), pivot("std"), pivot("count").fillna(0))


def _metric_title(metric: str) -> str:
    return metric.replace("_", " ")


def to_markdown(table: SummaryTable) -> str:
    best = table.best()
    header = ["method", *[f"{dataset} {bits} bits" for dataset, bits in table.mean.columns]]
    lines = [f"{_metric_title(table.metric)} (mean ± std over seeds; best in bold)", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for row in table.mean.index:
        cells = [row]
        for column in table.mean.columns:
            text = table.cell_text(row, column)
            cells.append("—" if text is None else (f"**{text}**" if best.at[row, column] else text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("$", r"\$")):
        text = text.replace(raw, escaped)
    return text


def to_latex(table: SummaryTable) -> str:
    best = table.best()
    columns = list(table.mean.columns)
    datasets = list(dict.fromkeys(dataset for dataset, _ in columns))
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{tabular}{l" + "r" * len(columns) + "}",
        r"\toprule",
    ]
    spans, rules, start = [], [], 2
    for dataset in datasets:
        width = sum(1 for name, _ in columns if name == dataset)
        spans.append(rf"\multicolumn{{{width}}}{{c}}{{{_latex_escape(dataset)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines.append(" & " + " & ".join(spans) + r" \\")
    lines.append(" ".join(rules))
    lines.append("Method & " + " & ".join(f"{bits} bits" for _, bits in columns) + r" \\")
    lines.append(r"\midrule")
    for row in table.mean.index:
        cells = [_latex_escape(row)]
        for column in columns:
            text = table.cell_text(row, column)
            if text is None:
                cells.append("--")
                continue
            text = text.replace("±", r"$\pm$")
            cells.append(rf"\textbf{{{text}}}" if best.at[row, column] else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(table: SummaryTable) -> str:
    best = table.best()
    columns = list(table.mean.columns)
    datasets = list(dict.fromkeys(dataset for dataset, _ in columns))
    parts = [
        "<table class=\"hashbench\">",
        f"<caption>{html.escape(_metric_title(table.metric))} (mean ± std over seeds; best in bold)</caption>",
        "<thead><tr><th rowspan=\"2\">method</th>",
    ]
    for dataset in datasets:
        width = sum(1 for name, _ in columns if name == dataset)
        parts.append(f"<th colspan=\"{width}\">{html.escape(dataset)}</th>")
    parts.append("</tr><tr>" + "".join(f"<th>{bits} bits</th>" for _, bits in columns) + "</tr></thead><tbody>")
    for row in table.mean.index:
        parts.append(f"<tr><th>{html.escape(row)}</th>")
        for column in columns:
            text = table.cell_text(row, column)
            if text is None:
                parts.append("<td>—</td>")
            elif best.at[row, column]:
                parts.append(f"<td><b>{html.escape(text)}</b></td>")
            else:
                parts.append(f"<td>{html.escape(text)}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts) + "\n"


def to_csv(table: SummaryTable) -> str:
    """Long format: one line per method × dataset × bits with mean, std and count."""
    rows = []
    for row in table.mean.index:
        for dataset, bits in table.mean.columns:
            mean = table.mean.at[row, (dataset, bits)]
            if pd.isna(mean):
                continue
            std = table.std.at[row, (dataset, bits)]
            rows.append(
                {
                    "method": row,
                    "dataset": dataset,
                    "bits": bits,
                    "metric": table.metric,
                    "mean": mean,
                    "std": None if pd.isna(std) else std,
                    "runs": int(table.count.at[row, (dataset, bits)]),
                }
            )
    return pd.DataFrame(rows).to_csv(index=False, float_format="%.6f")


def write_report(results: Path, out: Path, metric: str = "map") -> tuple[SummaryTable, dict[str, Path], list[str]]:
    """Write the table in every format into ``out``; returns it, the paths and warnings."""
    frame, warnings = load_runs(results)
    if frame.empty:
        raise UserError(f"no run records under {results}; run `hashbench run --results {results}` first")
    table = summarise(frame, metric)
    stem = metric.replace(".", "_")
    paths = {
        "markdown": Path(out) / f"{stem}.md",
        "latex": Path(out) / f"{stem}.tex",
        "html": Path(out) / f"{stem}.html",
        "csv": Path(out) / f"{stem}.csv",
        "runs": Path(out) / "runs.csv",
    }
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"report folder {out} cannot be created ({error.strerror}); choose another with --out") from error
    atomic.write_text(paths["markdown"], to_markdown(table))
    atomic.write_text(paths["latex"], to_latex(table))
    atomic.write_text(paths["html"], to_html(table))
    atomic.write_text(paths["csv"], to_csv(table))
    atomic.write_text(paths["runs"], frame.to_csv(index=False))
    failed = int((frame["status"] != "ok").sum())
    if failed:
        warnings.append(f"{failed} run(s) did not finish ok and are left out of the table")
    return table, paths, warnings


__all__ = ["load_runs", "summarise", "to_markdown", "to_latex", "to_html", "to_csv", "write_report"]
