"""Sensitivity of a method to one hyperparameter: where a method ran with several values of one
parameter and every other parameter the same (a sweep, or runs with ``--set``), a table (rows:
the parameter's values, columns: dataset × bits, cells as in the main table: mean ± std over
seeds with the 95% interval and the † of the main table) and a plot of the metric against the
value, one line per code length, the interval drawn as a band and the default value marked.

Written into ``<out>/sensitivity/`` as Markdown, CSV, PNG and PDF; ``.hashbench-sensitivity``
there lists what the last report wrote, and the next report removes those files it does not
write again (nothing else in the folder is touched).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hashbench.errors import UserError
from hashbench.report import csv_safe
from hashbench.report.outputs import replace_outputs
from hashbench.report.results import default_params, row_labels
from hashbench.storage import atomic

FOLDER = "sensitivity"
MANIFEST = ".hashbench-sensitivity"
# A log axis where the swept values span more than this ratio (more than a decade).
LOG_ABOVE = 10.0
PANEL_INCHES = 4.2


@dataclass
class Study:
    """One method, one parameter, every other parameter held fixed."""

    method: str
    param: str
    values: list[Any]  # the swept values, in order (numbers ascending)
    labels: dict[Any, str]  # json of a value → the row label of its runs in ``table``
    default: Any  # the installed method's default (None when unknown)
    fixed: dict[str, Any]  # the other parameters, as recorded
    table: Any  # a SummaryTable of the study's runs, rows = labels
    name: str = ""  # file stem
    figure: Any = None
    # dataset column → bits → {"value", "mean", "low", "high"}: exactly what each line draws
    data: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    band: str = ""  # what the band shows
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def numeric(self) -> bool:
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)

    @property
    def log_axis(self) -> bool:
        numbers = [float(v) for v in self.values] if self.numeric else []
        return bool(numbers) and min(numbers) > 0 and max(numbers) / min(numbers) > LOG_ABOVE

    def value_text(self, value: Any) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return text + (" (default)" if self.is_default(value) else "")

    def is_default(self, value: Any) -> bool:
        return self.default is not None and json.dumps(value) == json.dumps(self.default)

    @property
    def held_fixed(self) -> str:
        defaults = default_params(self.method) or {}
        changed = [
            f"{key}={json.dumps(value)}"
            for key, value in sorted(self.fixed.items())
            if key not in defaults or json.dumps(defaults[key]) != json.dumps(value)
        ]
        text = f"held fixed: every other parameter of {self.method} at its default"
        return text + (f" except {', '.join(changed)}" if changed else "")

    @property
    def title(self) -> str:
        return f"{self.table.info.label} of {self.method} against {self.param}"

    @property
    def columns(self) -> list[str]:
        """What ran in each dataset column, less the list of parameter sets (the rows say it)."""
        return [re.sub(r" · parameters set: .*$", "", caption) for caption in self.table.captions.values()]

    @property
    def caption(self) -> str:
        return " · ".join([self.held_fixed, *self.columns])


def _sorted_values(values: list[Any]) -> list[Any]:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=json.dumps)


def find_studies(frame: pd.DataFrame) -> list[tuple[str, str, dict[str, Any], pd.Index]]:
    """(method, parameter, the other parameters, rows of ``frame``) for every parameter a method
    ran with at two values or more, all its other parameters (and its version) the same."""
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    found = []
    for (method, _version), group in ok.groupby(["method", "method_version"], sort=True):
        decoded = {index: json.loads(text) for index, text in group["params"].items()}
        keys = sorted({key for params in decoded.values() for key in params})
        for key in keys:
            by_rest: dict[str, list] = {}
            for index, params in decoded.items():
                rest = json.dumps({k: v for k, v in params.items() if k != key}, sort_keys=True)
                by_rest.setdefault(rest, []).append(index)
            for rest, indices in by_rest.items():
                values = {json.dumps(decoded[index].get(key)) for index in indices}
                if len(values) > 1:
                    found.append((str(method), key, json.loads(rest), pd.Index(indices)))
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")


def make_studies(frame: pd.DataFrame, metric: str, per_query: dict[str, Any] | None, *, summarise: Any) -> list[Study]:
    """Every study of ``frame`` (the report's runs), each with its table of ``metric`` made by
    ``summarise`` (:func:`hashbench.report.tables.summarise`, passed in: that module imports this one)."""
    studies, names = [], set()
    for method, param, fixed, indices in find_studies(frame):
        runs = frame.loc[indices]
        try:
            table = summarise(runs, metric, per_query)
        except UserError:  # none of these runs recorded the metric
            continue
        labels = row_labels(runs)
        by_value: dict[str, str] = {}
        for index in runs.index:
            by_value[json.dumps(json.loads(runs.at[index, "params"]).get(param))] = labels[index]
        values = _sorted_values([json.loads(text) for text in by_value])
        default = (default_params(method) or {}).get(param)
        study = Study(method, param, values, by_value, default, fixed, table)
        defaults = default_params(method) or {}
        changed = [f"{k}={json.dumps(v)}" for k, v in sorted(fixed.items()) if json.dumps(defaults.get(k)) != json.dumps(v)]
        stem = _slug("-".join([metric.replace(".", "_"), method, param, *changed]))
        name, count = stem, 1
        while name in names:
            count += 1
            name = f"{stem}-{count}"
        names.add(name)
        study.name = name
        studies.append(study)
    return studies


def _rows(study: Study) -> list[tuple[Any, str]]:
    return [(value, study.labels[json.dumps(value)]) for value in study.values]


def to_markdown(study: Study) -> str:
    table = study.table
    best = table.best()
    lines = [f"{study.title}: {table.title}", "", f"- {study.held_fixed}", *(f"- {c}" for c in study.columns), ""]
    header = [study.param, *[f"{dataset} {bits} bits" for dataset, bits in table.mean.columns]]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| ---: |" + " ---: |" * (len(header) - 1))
    for value, label in _rows(study):
        cells = [study.value_text(value)]
        for column in table.mean.columns:
            text = table.cell_text(label, column)
            cells.append("—" if text is None else (f"**{text}**" if best.at[label, column] else text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(study: Study) -> str:
    table = study.table
    best = table.best()
    columns = list(table.mean.columns)
    datasets = list(dict.fromkeys(dataset for dataset, _ in columns))
    parts = [
        "<table class=\"hashbench\">",
        f"<caption>{html.escape(study.title)}: {html.escape(table.title)}<br><small>{html.escape(study.held_fixed)}</small>"
        + "".join(f"<br><small>{html.escape(c)}</small>" for c in study.columns)
        + "</caption>",
        f"<thead><tr><th rowspan=\"2\">{html.escape(study.param)}</th>",
    ]
    for dataset in datasets:
        width = sum(1 for name, _ in columns if name == dataset)
        parts.append(f"<th class=\"dataset\" colspan=\"{width}\">{html.escape(dataset)}</th>")
    parts.append("</tr><tr>" + "".join(f"<th class=\"bits\">{bits} bits</th>" for _, bits in columns) + "</tr></thead><tbody>")
    for value, label in _rows(study):
        parts.append(f"<tr><th>{html.escape(study.value_text(value))}</th>")
        for column in columns:
            text = table.cell_text(label, column)
            if text is None:
                parts.append("<td>—</td>")
            else:
                parts.append(f"<td>{'<b>' if best.at[label, column] else ''}{html.escape(text)}{'</b>' if best.at[label, column] else ''}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts) + "\n"


def to_csv(study: Study) -> str:
    """One line per value × dataset × bits: mean, std, runs, the 95% interval, default, best."""
    table = study.table
    best = table.best()
    rows = []
    for value, label in _rows(study):
        for dataset, bits in table.mean.columns:
            mean = table.mean.at[label, (dataset, bits)]
            if pd.isna(mean):
                continue
            std = table.std.at[label, (dataset, bits)]
            interval = table.intervals.get((label, (dataset, bits)))
            rows.append({
                "method": study.method, "parameter": study.param, "value": value if study.numeric else json.dumps(value),
                "default": study.is_default(value), "dataset": dataset, "bits": bits, "metric": table.metric,
                "mean": mean, "std": None if pd.isna(std) else std, "runs": int(table.count.at[label, (dataset, bits)]),
                "ci_low": None if interval is None else interval.low, "ci_high": None if interval is None else interval.high,
                "best": bool(best.at[label, (dataset, bits)]),
                "indistinguishable_from_best": (label, (dataset, bits)) in table.indistinct,
            })  # fmt: skip
    return csv_safe.to_csv(pd.DataFrame(rows), float_format="%.6f")


def series(study: Study) -> tuple[dict[str, dict[int, dict[str, list[float]]]], str]:
    """Per dataset column and code length: the values, the means and the band's ends (the 95%
    interval where every point has one, else mean ± std), and what the band shows."""
    table = study.table
    cells = [(label, column) for _, label in _rows(study) for column in table.mean.columns if not pd.isna(table.mean.at[label, column])]
    intervals = bool(cells) and all(cell in table.intervals for cell in cells)
    several = any(int(table.count.at[label, column]) > 1 for label, column in cells)
    band = "95% interval (bootstrap over queries and seeds)" if intervals else ("± std over seeds" if several else "")
    data: dict[str, dict[int, dict[str, list[float]]]] = {}
    for dataset, bits in table.mean.columns:
        line: dict[str, list[float]] = {"value": [], "mean": [], "low": [], "high": []}
        for position, (value, label) in enumerate(_rows(study)):
            mean = table.mean.at[label, (dataset, bits)]
            if pd.isna(mean):
                continue
            if intervals:
                low, high = table.intervals[label, (dataset, bits)].low, table.intervals[label, (dataset, bits)].high
            else:
                std = table.std.at[label, (dataset, bits)]
                std = 0.0 if pd.isna(std) or not several else float(std)
                low, high = mean - std, mean + std
            line["value"].append(float(value) if study.numeric else float(position))
            line["mean"].append(float(mean))
            line["low"].append(float(low))
            line["high"].append(float(high))
        if line["value"]:
            data.setdefault(str(dataset), {})[int(bits)] = line
    return data, band


def plot(study: Study) -> Any:
    """One panel per dataset column, one line per code length."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hashbench.report.plots import _COLOURS, _MARKERS

    data, band = series(study)
    study.data, study.band = data, band
    panels = max(1, len(data))
    figure = Figure(figsize=(PANEL_INCHES * panels + 1.6, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    all_bits = sorted({bits for lines in data.values() for bits in lines})
    for ax, (dataset, lines) in zip(axes, data.items(), strict=False):
        for bits, line in lines.items():
            index = all_bits.index(bits)
            colour, marker = _COLOURS[index % len(_COLOURS)], _MARKERS[index % len(_MARKERS)]
            ax.plot(line["value"], line["mean"], color=colour, marker=marker, markersize=4, linewidth=1.3, label=f"{bits} bits")
            if band:
                ax.fill_between(line["value"], line["low"], line["high"], color=colour, alpha=0.18, linewidth=0)
        if study.log_axis:
            ax.set_xscale("log")
            ax.minorticks_off()
        if study.numeric and len(study.values) <= 12:  # the swept values themselves, not powers of ten
            ax.set_xticks([float(v) for v in study.values], [format(v, "g") for v in study.values])
        if not study.numeric:
            ax.set_xticks(range(len(study.values)), [study.value_text(v) for v in study.values])
        default_x = None
        if study.default is not None:
            if study.numeric and isinstance(study.default, (int, float)) and not isinstance(study.default, bool):
                default_x = float(study.default)
            elif not study.numeric and any(study.is_default(v) for v in study.values):
                default_x = float(next(i for i, v in enumerate(study.values) if study.is_default(v)))
        if default_x is not None and (default_x > 0 or not study.log_axis):
            ax.axvline(default_x, color="#555", linestyle="--", linewidth=1.0, label=f"default ({study.value_text(study.default).removesuffix(' (default)')})")
        ax.set(title=dataset, xlabel=study.param + (" (log scale)" if study.log_axis else ""), ylabel=study.table.info.label)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside right upper", fontsize="small", title="band: 95% interval" if band.startswith("95%") else (f"band: {band}" if band else None), title_fontsize="small")
    figure.suptitle(study.title)
    study.figure = figure
    return figure


def _earlier(folder: Path) -> list[Path]:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return []
    names = {line.strip() for line in manifest.read_text(errors="replace").splitlines() if line.strip()}
    return sorted(folder / name for name in names if "/" not in name and (folder / name).is_file())


def write_sensitivity(
    frame: pd.DataFrame, per_query: dict[str, Any] | None, out: Path, metric: str = "map", *, plots: bool = True, summarise: Any
) -> list[Study]:
    """Write every study's table (Markdown, CSV) and, with ``plots``, its figure (PNG, PDF)
    into ``out/sensitivity``; remove what an earlier report wrote there and this one does not."""
    folder = Path(out) / FOLDER
    studies = make_studies(frame, metric, per_query, summarise=summarise)
    if studies:
        folder.mkdir(parents=True, exist_ok=True)
    for study in studies:
        study.paths["markdown"] = folder / f"{study.name}.md"
        study.paths["csv"] = folder / f"{study.name}.csv"
        atomic.write_text(study.paths["markdown"], to_markdown(study))
        atomic.write_text(study.paths["csv"], to_csv(study))
        if plots:
            from hashbench.report.plots import (
                save_figure,  # matplotlib: only where figures are drawn
            )

            plot(study)
            study.paths.update(save_figure(study.figure, folder, study.name))
        else:
            study.data, study.band = series(study)
    replace_outputs(folder, MANIFEST, _earlier(folder), {path for study in studies for path in study.paths.values()})
    return studies


def html_section(studies: list[Study], out: Path) -> str:
    """report.html's section: each study's table, then its figure (PNG embedded, PDF linked)."""
    import base64
    import os

    if not studies:
        return ""
    parts = ["<h2>Sensitivity</h2>"]
    for study in studies:
        parts.append(f"<h3>{html.escape(study.method)}: {html.escape(study.param)}</h3>")
        parts.append(to_html(study))
        if study.figure is not None and "png" in study.paths:
            png = base64.b64encode(study.paths["png"].read_bytes()).decode("ascii")
            pdf = os.path.relpath(study.paths["pdf"], out)
            width = round(study.figure.get_figwidth() * 100)
            what = "one line per code length" + (f"; band: {study.band}" if study.band else "")
            what += "; dashed line: the default value" if study.default is not None else ""
            what += "; log axis" if study.log_axis else ""
            parts.append(
                f"<figure><img style=\"width: {width}px\" alt=\"{html.escape(study.title)}\" src=\"data:image/png;base64,{png}\">"
                f"<figcaption><b>{html.escape(study.title)}</b> · {html.escape(what)} · {html.escape(study.caption)} · "
                f"<a href=\"{html.escape(pdf)}\">PDF</a></figcaption></figure>"
            )
    return "\n".join(parts) + "\n"
