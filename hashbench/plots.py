"""Report plots from run records: precision–recall, precision@k and metric versus bits.

One figure per dataset (and protocol) and kind, with one panel per code length for the
curves; one line per method (per parameter set when a method ran with several). Curves are
averaged over seeds point by point. Each plotting function returns the figure and the
exact series it drew, so the numbers behind a plot can be checked against the records.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, no global
backend switch, nothing shown on screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hashbench import atomic
from hashbench.metric_table import metric_info
from hashbench.records import RunRecord
from hashbench.results_frame import dataset_columns, frame_from_records, row_labels

# series[label] = {"x": [...], "y": [...], ...}: what one line of one panel shows.
Series = dict[str, dict[str, list[float]]]


@dataclass
class Plot:
    kind: str  # "pr" | "precision_at_k" | "<metric>_vs_bits"
    dataset: str  # the dataset column (dataset, or dataset/protocol)
    figure: Figure
    data: dict[Any, Series]  # panel (bits, or the dataset for *_vs_bits) → series
    paths: dict[str, Path] = field(default_factory=dict)  # "png"/"pdf" → file, once saved


def label_records(records: list[RunRecord]) -> pd.DataFrame:
    """The ok records with their table row label and dataset column (as in the tables)."""
    ok = [record for record in records if record.ok]
    if not ok:
        return pd.DataFrame(columns=["label", "column_dataset", "bits", "record"])
    frame = frame_from_records(ok)
    frame["label"] = row_labels(frame)
    frame["column_dataset"] = dataset_columns(frame)
    frame["record"] = ok
    return frame


def _mean_curves(curves: list[dict[str, list[float]]], x: str, y: str) -> dict[str, list[float]]:
    """Point-by-point mean over seeds of curves sampled at the same x positions."""
    xs = np.asarray(curves[0][x], dtype=float)
    for curve in curves[1:]:
        if len(curve[x]) != len(xs) or not np.allclose(curve[x], xs):
            raise ValueError("curves of one method differ in their sampling points")
    ys = np.mean([np.asarray(curve[y], dtype=float) for curve in curves], axis=0)
    return {x: xs.tolist(), y: ys.tolist(), "runs": [float(len(curves))]}


def pr_series(frame: pd.DataFrame, dataset: str, bits: int) -> Series:
    """Hamming-radius precision–recall curve per method, mean over seeds (r = 0..bits)."""
    series: Series = {}
    subset = frame[(frame["column_dataset"] == dataset) & (frame["bits"] == bits)]
    for label, group in subset.groupby("label", sort=True):
        curves = [record.pr_curve for record in group["record"] if record.pr_curve is not None]
        # Seeds of one cell share the code length, so their curves share the radii 0..bits;
        # a record that does not is left out rather than misaligned.
        curves = [curve for curve in curves if len(curve["radius"]) == int(bits) + 1]
        if not curves:
            continue
        recall = _mean_curves(curves, "radius", "recall")
        precision = _mean_curves(curves, "radius", "precision")
        series[label] = {"radius": recall["radius"], "recall": recall["recall"], "precision": precision["precision"]}
    return series


def precision_at_k_series(frame: pd.DataFrame, dataset: str, bits: int) -> Series:
    """P@k per method for the cut-offs every seed has, mean over seeds."""
    series: Series = {}
    subset = frame[(frame["column_dataset"] == dataset) & (frame["bits"] == bits)]
    for label, group in subset.groupby("label", sort=True):
        tables = [record.precision_at_k for record in group["record"]]
        ks = sorted(set.intersection(*(set(table) for table in tables)), key=int) if tables else []
        if not ks:
            continue
        values = np.mean([[table[k] for k in ks] for table in tables], axis=0)
        series[label] = {"k": [int(k) for k in ks], "precision": values.tolist()}
    return series


def metric_vs_bits_series(frame: pd.DataFrame, dataset: str, metric: str) -> Series:
    """Mean ± std over seeds of ``metric`` at each code length, per method."""
    series: Series = {}
    subset = frame[frame["column_dataset"] == dataset]
    if metric not in subset.columns:
        return series
    for label, group in subset.groupby("label", sort=True):
        stats = group.groupby("bits")[metric].agg(["mean", "std", "count"]).dropna(subset=["mean"])
        if stats.empty:
            continue
        series[label] = {
            "bits": [int(b) for b in stats.index],
            "mean": stats["mean"].tolist(),
            "std": stats["std"].fillna(0.0).tolist(),
        }
    return series


def _figure(panels: int) -> tuple[Figure, list]:
    figure = Figure(figsize=(4.2 * panels, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    return figure, list(axes)


def _legend(figure: Figure, axes: list) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize="small")


def pr_plot(frame: pd.DataFrame, dataset: str) -> Plot:
    bits_values = sorted(frame[frame["column_dataset"] == dataset]["bits"].unique())
    figure, axes = _figure(len(bits_values))
    data = {}
    for ax, bits in zip(axes, bits_values, strict=True):
        series = pr_series(frame, dataset, int(bits))
        data[int(bits)] = series
        for label, line in series.items():
            ax.plot(line["recall"], line["precision"], marker=".", markersize=3, linewidth=1.2, label=label)
        ax.set(title=f"{dataset}, {bits} bits", xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    figure.suptitle("precision–recall within Hamming radius r = 0..bits")
    _legend(figure, axes)
    return Plot("pr", dataset, figure, data)


def precision_at_k_plot(frame: pd.DataFrame, dataset: str) -> Plot:
    bits_values = sorted(frame[frame["column_dataset"] == dataset]["bits"].unique())
    figure, axes = _figure(len(bits_values))
    data = {}
    for ax, bits in zip(axes, bits_values, strict=True):
        series = precision_at_k_series(frame, dataset, int(bits))
        data[int(bits)] = series
        for label, line in series.items():
            ax.plot(line["k"], line["precision"], marker="o", markersize=3, linewidth=1.2, label=label)
        ax.set_xscale("log")
        ax.set(title=f"{dataset}, {bits} bits", xlabel="k (top-k of the Hamming ranking)", ylabel="precision@k", ylim=(0, 1.02))
        ax.grid(alpha=0.3, which="both")
    figure.suptitle("precision@k")
    _legend(figure, axes)
    return Plot("precision_at_k", dataset, figure, data)


def metric_vs_bits_plot(frame: pd.DataFrame, dataset: str, metric: str = "map") -> Plot:
    figure, (ax,) = _figure(1)
    series = metric_vs_bits_series(frame, dataset, metric)
    for label, line in series.items():
        ax.errorbar(line["bits"], line["mean"], yerr=line["std"], marker="o", markersize=4, capsize=3, linewidth=1.2, label=label)
    bits_values = sorted({b for line in series.values() for b in line["bits"]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(bits_values, [str(b) for b in bits_values])
    ax.minorticks_off()
    cutoffs = frame.loc[frame["column_dataset"] == dataset, "map_k"].dropna().unique() if "map_k" in frame else []
    name = metric_info(metric, int(cutoffs[0]) if len(cutoffs) == 1 else None).label
    ax.set(title=dataset, xlabel="bits", ylabel=f"{name} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    _legend(figure, [ax])
    return Plot(f"{metric}_vs_bits", dataset, figure, {dataset: series})


def _file_stem(plot: Plot) -> str:
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", plot.dataset)
    kind = re.sub(r"[^A-Za-z0-9._-]+", "-", plot.kind.replace("_", "-"))
    return f"{kind}-{dataset}"


def save_plot(plot: Plot, folder: Path) -> dict[str, Path]:
    """Write the figure as PNG and PDF (atomically); returns the paths."""
    import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(plot)
    for extension, options in (("png", {"dpi": 150}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        plot.figure.savefig(buffer, format=extension, **options)
        path = folder / f"{stem}.{extension}"
        atomic.write_bytes(path, buffer.getvalue())
        plot.paths[extension] = path
    return plot.paths


def make_plots(records: list[RunRecord], metric: str = "map") -> list[Plot]:
    """Every plot of the report, per dataset column: PR, P@k and metric versus bits."""
    frame = label_records(records)
    plots = []
    for dataset in sorted(frame["column_dataset"].unique()) if len(frame) else []:
        plots.append(pr_plot(frame, dataset))
        plots.append(precision_at_k_plot(frame, dataset))
        plots.append(metric_vs_bits_plot(frame, dataset, metric))
    return plots


def write_plots(records: list[RunRecord], folder: Path, metric: str = "map") -> list[Plot]:
    plots = make_plots(records, metric)
    for plot in plots:
        save_plot(plot, folder)
    return plots
