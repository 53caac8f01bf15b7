"""Tables in the papers' layout from every run record of a results directory.

Rows are methods, columns are dataset × bits, cells are mean ± std over seeds (with a 95%
interval and a † where per-query values were stored); every mean that, at the precision the
table prints, equals its column's best is in bold. Written as Markdown, LaTeX (booktabs), CSV
and HTML; every CSV goes through :mod:`hashbench.report.csv_safe`, so that no cell of it runs as a
spreadsheet formula.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hashbench.errors import UserError
from hashbench.metric_table import MetricInfo, metric_info
from hashbench.report import csv_safe
from hashbench.report.intervals import (
    BOOTSTRAP_DRAWS,
    Comparison,
    Interval,
    bootstrap_interval,
    paired_test,
)
from hashbench.report.intervals import SEED as BOOTSTRAP_SEED
from hashbench.report.results import (
    ID_COLUMNS,
    column_captions,
    dataset_columns,
    frame_from_records,
    load_runs,
    read_records,
    row_labels,
)
from hashbench.storage import atomic
from hashbench.storage.store import ResultsStore


@dataclass
class SummaryTable:
    """Mean, std and count of one metric, rows = methods, columns = (dataset, bits)."""

    metric: str
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    info: MetricInfo | None = None
    captions: dict[str, str] = field(default_factory=dict)  # dataset column → what was run there
    runs: pd.DataFrame | None = None  # ok runs per cell, whether or not they hold the metric
    # Per cell (row, column): each seed's per-query values, when every run of the cell has them,
    # and the split they were measured on; the 95% interval; cells not distinguishable from
    # their column's best.
    values: dict[tuple, dict[int, Any]] = field(default_factory=dict)
    splits: dict[tuple, str] = field(default_factory=dict)
    intervals: dict[tuple, Interval] = field(default_factory=dict)
    indistinct: set[tuple] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.info is None:
            self.info = metric_info(self.metric)

    @property
    def title(self) -> str:
        direction = "higher" if self.info.higher_is_better else "lower"
        label = self.info.label
        if _is_resource(self.metric):  # a time or a memory size: say what was measured
            label += f": {self.info.description}"
        text = f"{label} (mean ± std over seeds; best in bold, as is every mean printed the same; {direction} is better"
        if self.intervals:
            text += (
                f"; [95% interval: bootstrap resampling queries and seeds, {BOOTSTRAP_DRAWS} draws, seed {BOOTSTRAP_SEED}]"
                "; † not distinguishable from the column's best at 5% (paired sign-flip test over queries, "
                "per-query values averaged over matched seeds)"
            )
        return text + ")"

    def best(self) -> pd.DataFrame:
        """True where a cell's mean, as the table prints it, equals its column's best by the
        metric's direction: means that print alike ("782" and "782") are all bold, whatever
        the digits not shown say."""
        extremes = self.mean.max(axis=0) if self.info.higher_is_better else self.mean.min(axis=0)
        bold = pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        for column in self.mean.columns:
            if pd.isna(extremes[column]):
                continue
            shown = self.info.formatted(extremes[column])
            bold[column] = [not pd.isna(value) and self.info.formatted(value) == shown for value in self.mean[column]]
        return bold

    def cell_text(self, row: str, column: tuple) -> str | None:
        mean = self.mean.at[row, column]
        if pd.isna(mean):
            return None
        std = self.std.at[row, column]
        count = int(self.count.at[row, column])
        text = self.info.formatted(mean)
        if count > 1:
            text += f" ± {self.info.formatted(0.0 if pd.isna(std) else std)}"
        runs = self.run_count(row, column)
        if count < runs:
            text += f" (n={count} of {runs})"
        interval = self.intervals.get((row, column))
        if interval is not None:
            text += f" [{self.info.formatted(interval.low)}, {self.info.formatted(interval.high)}]"
        if (row, column) in self.indistinct:
            text += " †"
        return text

    def compare(self, first: str, second: str) -> list[tuple[tuple, Comparison]]:
        """The paired comparison of rows ``first`` and ``second`` in every column holding both
        on the same split."""
        found = []
        for column in self.mean.columns:
            a, b = (first, column), (second, column)
            if a in self.values and b in self.values and self.splits.get(a) == self.splits.get(b):
                found.append((column, paired_test(self.values[a], self.values[b])))
        return found

    def add_uncertainty(self) -> None:
        """Intervals for every cell with per-query values; marks for cells the paired test
        cannot tell from their column's best."""
        for cell, values in self.values.items():
            self.intervals[cell] = bootstrap_interval(list(values.values()))
        best = self.best()
        for column in self.mean.columns:
            leaders = [row for row in self.mean.index if best.at[row, column] and (row, column) in self.values]
            if not leaders:
                continue
            # Several means may print as the best; the test compares with the exact best of them.
            pick = max if self.info.higher_is_better else min
            leader = (pick(leaders, key=lambda row, column=column: self.mean.at[row, column]), column)
            for row in self.mean.index:
                cell = (row, column)
                if best.at[row, column] or cell not in self.values or self.splits.get(cell) != self.splits.get(leader):
                    continue
                if paired_test(self.values[leader], self.values[cell]).p_value >= 0.05:
                    self.indistinct.add(cell)

    def run_count(self, row: str, column: tuple) -> int:
        if self.runs is None:
            return int(self.count.at[row, column])
        value = self.runs.at[row, column]
        return 0 if pd.isna(value) else int(value)

    def incomplete(self) -> list[str]:
        """A warning for each cell whose mean leaves out runs that lack the metric (or hold NaN)."""
        warnings = []
        for row in self.mean.index:
            for column in self.mean.columns:
                count, runs = int(self.count.at[row, column]), self.run_count(row, column)
                if count < runs:
                    dataset, bits = column
                    warnings.append(
                        f"{row} on {dataset} at {bits} bits: {runs - count} of {runs} run(s) lack {self.metric} "
                        f"(missing or NaN); the cell averages the other {count} and says n={count}"
                    )
        return warnings


def per_query_vector(stored: dict[str, Any] | None, metric: str) -> Any:
    """A run's per-query values of ``metric`` (None when the metric has none or they were not stored)."""
    if stored is None:
        return None
    if metric in PER_QUERY_OF:
        return stored.get(PER_QUERY_OF[metric])
    name, _, k = metric.partition(".")
    if name == "precision_at_k" and k.isdigit() and "ks" in stored:
        columns = [int(value) for value in stored["ks"]]
        return stored["precision_at_k"][:, columns.index(int(k))] if int(k) in columns else None
    return None


PER_QUERY_OF = {"map": "ap", "map_all": "ap_all", "map_tie_aware": "ap_tie_aware"}
# Exported beside a metric in every format: the tie-aware expectation beside mAP.
COMPANIONS = {"map": "map_tie_aware"}


def _is_resource(metric: str) -> bool:
    """A time or a memory size, not a retrieval score."""
    return metric.startswith("timings.") or metric == "peak_memory_mb"


def _uses_cutoff(metric: str) -> bool:
    """Whether the metric is computed at the protocol's mAP cut-off k (its label names k)."""
    return metric_info(metric, 1).label != metric_info(metric, 2).label


def summarise(frame: pd.DataFrame, metric: str = "map", per_query: dict[str, dict] | None = None) -> SummaryTable:
    """The table of ``metric``; with ``per_query`` (run key → stored per-query values) also
    intervals and significance marks where every run of a cell has them."""
    metric_info(metric)  # refuses what is not a metric, with a suggestion
    ok = frame[frame["status"] == "ok"].copy() if len(frame) else frame
    if ok.empty:
        raise UserError("no successful runs in the results directory; run `hashbench run` first")
    if metric not in ok.columns:
        numeric = sorted(c for c in ok.columns if c not in (*ID_COLUMNS, "error", "device", "profile", "map_k", "split_hash", "data_id"))
        raise UserError(f"no run recorded the metric {metric!r}; recorded: {', '.join(numeric)}")
    ok["row"] = row_labels(ok)
    ok["column_dataset"] = dataset_columns(ok)
    grouped = ok.groupby(["row", "column_dataset", "bits"])[metric]
    stats = grouped.agg(["mean", "std", "count", "size"])
    order = list(dict.fromkeys(ok.sort_values(["method", "row"])["row"]))

    def pivot(statistic: str) -> pd.DataFrame:
        table = stats[statistic].unstack(["column_dataset", "bits"])
        table = table.reindex(index=order)
        return table.sort_index(axis=1)

    cutoffs = sorted({int(k) for k in ok["map_k"].dropna()}) if "map_k" in ok else []
    map_k = cutoffs[0] if len(cutoffs) == 1 else ("k" if not cutoffs else "/".join(map(str, cutoffs)))
    # The captions name the protocol's mAP cut-off only where the metric depends on it (not
    # beside times, memory, P@k or mAP@all).
    captioned = ok if _uses_cutoff(metric) else ok.drop(columns=["map_k"], errors="ignore")
    table = SummaryTable(
        metric, pivot("mean"), pivot("std"), pivot("count").fillna(0), metric_info(metric, map_k), column_captions(captioned),
        pivot("size"),
    )
    if per_query:
        for (row, dataset, bits), group in ok.groupby(["row", "column_dataset", "bits"]):
            vectors = {int(seed): per_query_vector(per_query.get(key), metric) for seed, key in zip(group["seed"], group["key"], strict=True)}
            splits = set(group["split_hash"])
            if len(vectors) == len(group) and all(v is not None for v in vectors.values()) and len(splits) == 1:
                table.values[row, (dataset, bits)] = vectors
                table.splits[row, (dataset, bits)] = splits.pop()
        table.add_uncertainty()
    return table


def to_markdown(table: SummaryTable) -> str:
    best = table.best()
    header = ["method", *[f"{dataset} {bits} bits" for dataset, bits in table.mean.columns]]
    lines = [table.title, ""]
    lines += [f"- {caption}" for caption in table.captions.values()]
    if table.captions:
        lines.append("")
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
        f"% {table.title}",
        *(f"% {caption}" for caption in table.captions.values()),
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
            text = text.replace("±", r"$\pm$").replace(" †", r"$^\dagger$")
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
        f"<caption>{html.escape(table.title)}"
        + "".join(f"<br><small>{html.escape(caption)}</small>" for caption in table.captions.values())
        + "</caption>",
        "<thead><tr><th rowspan=\"2\">method</th>",
    ]
    for dataset in datasets:
        width = sum(1 for name, _ in columns if name == dataset)
        parts.append(f"<th class=\"dataset\" colspan=\"{width}\">{html.escape(dataset)}</th>")
    parts.append("</tr><tr>" + "".join(f"<th class=\"bits\">{bits} bits</th>" for _, bits in columns) + "</tr></thead><tbody>")
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
    """Long format: one line per method × dataset × bits with mean, std, count, the 95%
    interval, whether it is the best and whether it is distinguishable from it."""
    rows = []
    best = table.best()
    for row in table.mean.index:
        for dataset, bits in table.mean.columns:
            mean = table.mean.at[row, (dataset, bits)]
            if pd.isna(mean):
                continue
            std = table.std.at[row, (dataset, bits)]
            interval = table.intervals.get((row, (dataset, bits)))
            rows.append(
                {
                    "method": row,
                    "dataset": dataset,
                    "bits": bits,
                    "metric": table.metric,
                    "mean": mean,
                    "std": None if pd.isna(std) else std,
                    "runs": int(table.count.at[row, (dataset, bits)]),
                    "ci_low": None if interval is None else interval.low,
                    "ci_high": None if interval is None else interval.high,
                    "best": bool(best.at[row, (dataset, bits)]),
                    "indistinguishable_from_best": (row, (dataset, bits)) in table.indistinct,
                }
            )
    return csv_safe.to_csv(pd.DataFrame(rows), float_format="%.6f")


TIMING_COLUMNS = {
    "timings.fit": "fit (s)",
    "timings.encode": "encode (s)",
    "timings.evaluate": "evaluate (s)",
    "peak_memory_mb": "peak memory (MB)",
}


def timing_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Fit, encode and evaluation time (mean over seeds) and peak memory (the largest) per
    method × dataset × bits, with the device(s) the runs used. Peak memory is the peak
    resident size of the process that ran the cell (ru_maxrss), so it includes the dataset."""
    ok = frame[frame["status"] == "ok"].copy() if len(frame) else frame
    columns = ["method", "dataset", "bits", "runs", "device", *TIMING_COLUMNS.values()]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    ok["row"] = row_labels(ok)
    ok["column_dataset"] = dataset_columns(ok)
    for column in TIMING_COLUMNS:
        if column not in ok.columns:
            ok[column] = float("nan")
    if "device" not in ok.columns:
        ok["device"] = None
    rows = []
    for (label, dataset, bits), group in ok.groupby(["row", "column_dataset", "bits"], sort=True):
        devices = sorted({str(device) for device in group["device"].dropna()})
        rows.append(
            {
                "method": label,
                "dataset": dataset,
                "bits": int(bits),
                "runs": int(len(group)),
                "device": ", ".join(devices) or "—",
                "fit (s)": group["timings.fit"].mean(),
                "encode (s)": group["timings.encode"].mean(),
                "evaluate (s)": group["timings.evaluate"].mean(),
                "peak memory (MB)": group["peak_memory_mb"].max(),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def timing_markdown(timings: pd.DataFrame) -> str:
    lines = ["timings (mean over seeds; peak memory: the largest, of the process that ran the cell)", ""]
    lines.append("| " + " | ".join(timings.columns) + " |")
    lines.append("| --- | --- | ---: | ---: | --- |" + " ---: |" * len(TIMING_COLUMNS))
    for _, row in timings.iterrows():
        cells = [str(row["method"]), str(row["dataset"]), str(row["bits"]), str(row["runs"]), str(row["device"])]
        for column in TIMING_COLUMNS.values():
            value = row[column]
            cells.append("—" if pd.isna(value) else (f"{value:.0f}" if column.startswith("peak") else f"{value:.3g}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _frame_html(frame: pd.DataFrame, caption: str, formats: dict[str, str]) -> str:
    def cell(column: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "—"
        if column in formats and isinstance(value, (int, float)):
            return format(value, formats[column])
        return str(value)

    parts = ["<table class=\"hashbench\">", f"<caption>{html.escape(caption)}</caption><thead><tr>"]
    parts += [f"<th>{html.escape(str(column))}</th>" for column in frame.columns]
    parts.append("</tr></thead><tbody>")
    for _, row in frame.iterrows():
        parts.append("<tr>" + "".join(f"<td>{html.escape(cell(c, row[c]))}</td>" for c in frame.columns) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
table.hashbench { border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }
table.hashbench th, table.hashbench td { border-bottom: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
table.hashbench tbody tr > :first-child, table.hashbench thead tr:first-child > th:first-child { text-align: left; }
table.hashbench th.dataset { text-align: center; border-bottom: 1px solid #777; }
table.hashbench caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.4em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
"""


FIGURE_PIXELS_PER_INCH = 100
FIGURE_TITLES = {"pr": "precision–recall within Hamming radius r", "precision_at_k": "precision@k"}


def html_report(
    results: Path,
    table: SummaryTable,
    timings: pd.DataFrame,
    plots: list,
    comparison: pd.DataFrame | None,
    published_source: str | None,
    out: Path,
    notes: list[str],
    companion: SummaryTable | None = None,
    sensitivity: list | None = None,
) -> str:
    """One self-contained page: the tables, then the plots (PNG embedded, PDF linked)."""
    import base64
    import os
    from datetime import UTC, datetime

    parts = [
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hashbench report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>hashbench report</h1>",
        f"<p>Results: <code>{html.escape(str(results))}</code> · written "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}</p>",
    ]
    parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in notes]
    parts += ["<h2>Results</h2>", to_html(table)]
    if companion is not None:
        parts.append(to_html(companion))
    if comparison is not None:
        parts.append("<h2>Published numbers</h2>")
        if comparison.empty:
            parts.append(f"<p>No published {html.escape(table.metric)} numbers for the datasets that were run "
                         f"({html.escape(str(published_source))}).</p>")
        else:
            from hashbench.report.published import SECONDARY_LEGEND, has_secondary, published_text

            shown = comparison.drop(columns=["metric", "kind"], errors="ignore")
            # The published value as text, so that a secondary number carries its mark.
            shown["published"] = [published_text(row) for _, row in comparison.iterrows()]
            parts.append(
                _frame_html(
                    shown,
                    f"published {table.metric} beside the reproduced mean; difference = reproduced − published "
                    f"({published_source})",
                    {"reproduced": ".4f", "std": ".4f", "difference": "+.4f"},
                )
            )
            if has_secondary(comparison):
                parts.append(f"<p class=\"note\">{html.escape(SECONDARY_LEGEND)}</p>")
    parts.append("<h2>Timings</h2>")
    parts.append(
        _frame_html(
            timings,
            "mean over seeds; peak memory is the largest peak resident size of the process that ran the cell",
            {"fit (s)": ".3g", "encode (s)": ".3g", "evaluate (s)": ".3g", "peak memory (MB)": ".0f"},
        )
    )
    if sensitivity:
        from hashbench.report.sensitivity import html_section

        parts.append(html_section(sensitivity, out))
    if plots:
        parts.append("<h2>Plots</h2>")
        for dataset in dict.fromkeys(plot.dataset for plot in plots):
            parts.append(f"<h3>{html.escape(dataset)}</h3>")
            for plot in (p for p in plots if p.dataset == dataset):
                png = base64.b64encode(plot.paths["png"].read_bytes()).decode("ascii")
                pdf = os.path.relpath(plot.paths["pdf"], out)
                # One scale for every figure: the width follows the figure's size in inches.
                width = round(plot.figure.get_figwidth() * FIGURE_PIXELS_PER_INCH)
                title = FIGURE_TITLES.get(plot.kind) or f"{table.info.label} versus bits"
                parts.append(
                    f"<figure><img style=\"width: {width}px\" alt=\"{html.escape(title)} for {html.escape(dataset)}\" "
                    f"src=\"data:image/png;base64,{png}\"><figcaption><b>{html.escape(title)}</b> · "
                    f"{html.escape(plot.caption)} · <a href=\"{html.escape(pdf)}\">PDF</a></figcaption></figure>"
                )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    results: Path,
    out: Path,
    metric: str = "map",
    *,
    plots: bool = True,
    published: Path | bool | None = None,
    include_stale: bool = False,
) -> tuple[SummaryTable, dict[str, Path], list[str]]:
    """Write the tables, timings, plots and the HTML report into ``out``.

    ``published``: True for the package's published numbers, a path for a user's CSV.
    Returns the summary table, the paths written (by kind) and warnings.
    """
    from hashbench.report.published import (
        builtin_path,
        compare,
        comparison_csv,
        comparison_markdown,
        load_published,
    )

    metric_info(metric)  # refuse a non-metric before reading anything
    records, warnings = read_records(results, include_stale=include_stale)
    frame = frame_from_records(records)
    if frame.empty:
        raise UserError(f"no run records under {results}; run `hashbench run --results {results}` first")
    store = ResultsStore(results)
    per_query = {record.key: store.read_per_query(record) for record in records if record.ok}
    table = summarise(frame, metric, per_query)
    warnings += table.incomplete()
    comparison, published_source = None, None
    if published:
        path = builtin_path() if published is True else Path(published)
        numbers = load_published(path)
        # Name the shipped list by what it is, not by where the package happens to be installed.
        published_source = "hashbench's published.csv" if published is True else str(path)
        if numbers.empty:
            warnings.append(f"{published_source} holds no published numbers")
        comparison = compare(frame, numbers, metric)
    stem = metric.replace(".", "_")
    out = Path(out)
    paths = {
        "markdown": out / f"{stem}.md",
        "latex": out / f"{stem}.tex",
        "html": out / f"{stem}.html",
        "csv": out / f"{stem}.csv",
        "runs": out / "runs.csv",
        "timings_markdown": out / "timings.md",
        "timings_csv": out / "timings.csv",
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"report folder {out} cannot be created ({error.strerror}); choose another with --out") from error
    atomic.write_text(paths["markdown"], to_markdown(table))
    atomic.write_text(paths["latex"], to_latex(table))
    atomic.write_text(paths["html"], to_html(table))
    atomic.write_text(paths["csv"], to_csv(table))
    companion = None
    if metric in COMPANIONS and COMPANIONS[metric] in frame.columns:
        # mAP with ties broken by index is a convention; its expectation over tie orders is
        # exported beside it, so a reader sees how much the convention moves the number.
        companion = summarise(frame, COMPANIONS[metric], per_query)
        twin = COMPANIONS[metric]
        for kind, suffix, render in (("markdown", "md", to_markdown), ("latex", "tex", to_latex), ("html", "html", to_html), ("csv", "csv", to_csv)):
            paths[f"{kind}_{twin}"] = out / f"{twin}.{suffix}"
            atomic.write_text(paths[f"{kind}_{twin}"], render(companion))
    atomic.write_text(paths["runs"], csv_safe.to_csv(frame))
    timings = timing_table(frame)
    atomic.write_text(paths["timings_markdown"], timing_markdown(timings))
    atomic.write_text(paths["timings_csv"], csv_safe.to_csv(timings, float_format="%.6f"))
    if comparison is not None:
        paths["published_markdown"] = out / f"published-{stem}.md"
        paths["published_csv"] = out / f"published-{stem}.csv"
        atomic.write_text(paths["published_markdown"], comparison_markdown(comparison, metric, published_source))
        atomic.write_text(paths["published_csv"], comparison_csv(comparison))
    figures = []
    if plots:
        from hashbench.report.plots import write_plots

        try:
            figures = write_plots(records, out / "plots", metric, table.captions)
        except OSError as error:
            raise UserError(f"cannot write the plots into {out / 'plots'}: {error.strerror or error}; choose another --out") from None
        for plot in figures:
            for extension, path in plot.paths.items():
                paths[f"plot_{plot.kind}_{plot.dataset}_{extension}"] = path
    elif (out / "plots").is_dir():
        # --no-plots: the plots an earlier report wrote here would no longer be the report's.
        from hashbench.report.plots import remove_plots

        try:
            removed = remove_plots(out / "plots")
        except OSError as error:
            raise UserError(f"cannot remove the earlier plots in {out / 'plots'}: {error.strerror or error}") from None
        if removed:
            warnings.append(f"--no-plots: removed the {len(removed)} plot file(s) an earlier report wrote into {out / 'plots'}")
    from hashbench.report.sensitivity import write_sensitivity

    try:  # a method run with several values of one parameter, all else equal: its sensitivity
        studies = write_sensitivity(frame, per_query, out, metric, plots=plots, summarise=summarise)
    except OSError as error:
        raise UserError(f"cannot write the sensitivity tables into {out / 'sensitivity'}: {error.strerror or error}; choose another --out") from None
    for study in studies:
        for kind, path in study.paths.items():
            paths[f"sensitivity_{study.name}_{kind}"] = path
    failed = int((frame["status"] != "ok").sum())
    if failed:
        warnings.append(f"{failed} run(s) did not finish ok and are left out of the table")
    paths["report"] = out / "report.html"
    notes = [f"{failed} run(s) did not finish ok and are left out."] if failed else []
    atomic.write_text(paths["report"], html_report(results, table, timings, figures, comparison, published_source, out, notes, companion, studies))
    return table, paths, warnings


__all__ = [
    "load_runs",
    "read_records",
    "frame_from_records",
    "summarise",
    "timing_table",
    "to_markdown",
    "to_latex",
    "to_html",
    "to_csv",
    "write_report",
]
