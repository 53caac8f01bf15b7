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

from hashbench.metric_table import metric_info
from hashbench.report.outputs import replace_outputs
from hashbench.report.results import dataset_columns, frame_from_records, row_labels
from hashbench.storage import atomic
from hashbench.storage.records import RunRecord

# series[label] = {"x": [...], "y": [...], ...}: what one line of one panel shows.
Series = dict[str, dict[str, list[float]]]


@dataclass
class Plot:
    kind: str  # "pr" | "precision_at_k" | "<metric>_vs_bits"
    dataset: str  # the dataset column (dataset, or dataset/protocol)
    figure: Figure
    data: dict[Any, Series]  # panel (bits, or the dataset for *_vs_bits) → series
    paths: dict[str, Path] = field(default_factory=dict)  # "png"/"pdf" → file, once saved
    caption: str = ""  # what is plotted: dataset, protocol, metric with k, seeds, profile


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str


# Ten well-separated colours and as many markers: a method keeps its colour and marker in
# every panel and figure of a report, whatever was run where.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]


# A report of more row labels than this draws one row of panels per method family (classic,
# generative, similarity, contrastive): small multiples in which every line can be told apart.
GROUP_ABOVE = len(_COLOURS)


def method_family(method: str) -> str:
    """The family a method declares (``HashingMethod.family``); ``other`` for a method this
    process cannot load (a plugin not given to ``report``)."""
    from hashbench import registry
    from hashbench.method import FAMILIES

    try:
        family = getattr(registry.get_method(method), "family", "other")
    except Exception:  # an unknown or broken plugin: its runs are still reported
        return "other"
    return family if family in FAMILIES else "other"


def method_styles(labels: list[str], families: dict[str, str] | None = None) -> dict[str, Style]:
    """One style per row label, assigned over the whole report: in sorted order, or with
    ``families`` (label → family) family by family, so that the lines of one family's panel
    have different colours."""
    from hashbench.method import FAMILIES

    if families:
        ordered = sorted(set(labels), key=lambda label: (FAMILIES.index(families.get(label, "other")), label))
    else:
        ordered = sorted(set(labels))
    return {
        label: Style(_COLOURS[index % len(_COLOURS)], _MARKERS[(index // len(_COLOURS) + index) % len(_MARKERS)])
        for index, label in enumerate(ordered)
    }


def label_records(records: list[RunRecord]) -> pd.DataFrame:
    """The ok records with their table row label and dataset column (as in the tables)."""
    ok = [record for record in records if record.ok]
    if not ok:
        return pd.DataFrame(columns=["label", "column_dataset", "bits", "record"])
    frame = frame_from_records(ok)
    frame["label"] = row_labels(frame)
    frame["column_dataset"] = dataset_columns(frame)
    frame["family"] = [method_family(method) for method in frame["method"]]
    frame["record"] = ok
    return frame


def family_groups(frame: pd.DataFrame) -> list[tuple[str, set[str]]]:
    """The rows of panels: ``[("", every label)]``, or, for more than ``GROUP_ABOVE`` labels
    of several families, one ``(family, its labels)`` per family in the report's order."""
    from hashbench.method import FAMILIES

    labels = set(frame["label"])
    by_family: dict[str, set[str]] = {}
    for label, family in zip(frame["label"], frame["family"], strict=True):
        by_family.setdefault(family, set()).add(label)
    if len(labels) <= GROUP_ABOVE or len(by_family) < 2:
        return [("", labels)]
    return [(family, by_family[family]) for family in FAMILIES if family in by_family]


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
            "runs": [int(n) for n in stats["count"]],
        }
    return series


PANEL_INCHES = 4.2  # every panel has the same size, so figures share one scale in report.html


def _figure(panels: int, rows: int = 1) -> tuple[Figure, list[list]]:
    figure = Figure(figsize=(PANEL_INCHES * panels + 1.8, 3.8 + 3.2 * (rows - 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, panels, squeeze=False)
    return figure, [list(row) for row in axes]


def _handles(styles: dict[str, Style], labels: set[str]) -> tuple[list, list[str]]:
    """Legend entries for ``labels`` in the styles' order, drawn from the styles."""
    from matplotlib.lines import Line2D

    shown = [label for label in styles if label in labels]
    return [Line2D([], [], color=styles[label].colour, marker=styles[label].marker, linewidth=1.2) for label in shown], shown


def _legend(figure: Figure, styles: dict[str, Style], labels: set[str], axes: Any = None, title: str = "") -> None:
    """A legend built from the styles (not from drawing order), outside the panels: one for
    the figure, or, given ``axes`` (a row's last panel), one beside that row."""
    handles, shown = _handles(styles, labels)
    if not handles:
        return
    if axes is None:
        figure.legend(handles, shown, loc="outside right upper", fontsize="small")
    else:
        axes.legend(handles, shown, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", title=title or None,
                    borderaxespad=0.0)


def _seeds_text(frame: pd.DataFrame, dataset: str) -> str:
    """"3 seeds" or "1–3 seeds": how many runs each plotted point averages."""
    subset = frame[frame["column_dataset"] == dataset]
    counts = subset.groupby(["label", "bits"]).size()
    low, high = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    count = str(low) if low == high else f"{low}–{high}"
    return f"{count} seed{'s' if high != 1 else ''}"


def _curves_plot(
    kind: str, frame: pd.DataFrame, dataset: str, styles: dict[str, Style], series_of: Any, draw: Any, setup: Any, title: str
) -> Plot:
    """A panel per code length (a row of them per family when the report groups methods);
    ``series_of(frame, dataset, bits)`` gives the lines, ``draw(ax, line, style, label)``
    draws one, ``setup(ax)`` sets a panel's axes, ``title`` is the figure's."""
    subset = frame[frame["column_dataset"] == dataset]
    bits_values = sorted(subset["bits"].unique())
    groups = family_groups(subset)
    figure, rows = _figure(len(bits_values), len(groups))
    data = {int(bits): series_of(frame, dataset, int(bits)) for bits in bits_values}
    drawn: set[str] = set()
    for axes, (family, labels) in zip(rows, groups, strict=True):
        for ax, bits in zip(axes, bits_values, strict=True):
            for label, line in data[int(bits)].items():
                if label in labels:
                    draw(ax, line, styles[label], label)
                    drawn.add(label)
            setup(ax)
            ax.set_title(f"{dataset}, {bits} bits" + (f" · {family}" if family else ""))
        if family:
            _legend(figure, styles, labels & drawn, axes=axes[-1], title=family)
    figure.suptitle(f"{title} (mean over {_seeds_text(frame, dataset)})")
    if not groups[0][0]:
        _legend(figure, styles, drawn)
    return Plot(kind, dataset, figure, data)


def pr_plot(frame: pd.DataFrame, dataset: str, styles: dict[str, Style]) -> Plot:
    def draw(ax: Any, line: dict, style: Style, label: str) -> None:
        ax.plot(line["recall"], line["precision"], color=style.colour, marker=style.marker, markersize=3, linewidth=1.2, label=label)

    def setup(ax: Any) -> None:
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)

    return _curves_plot("pr", frame, dataset, styles, pr_series, draw, setup, "precision–recall within Hamming radius r = 0..bits")


def precision_at_k_plot(frame: pd.DataFrame, dataset: str, styles: dict[str, Style]) -> Plot:
    def draw(ax: Any, line: dict, style: Style, label: str) -> None:
        ax.plot(line["k"], line["precision"], color=style.colour, marker=style.marker, markersize=3, linewidth=1.2, label=label)

    def setup(ax: Any) -> None:
        ax.set_xscale("log")
        ax.set(xlabel="k (top-k of the Hamming ranking)", ylabel="precision@k", ylim=(0, 1.02))
        ax.grid(alpha=0.3, which="both")

    return _curves_plot("precision_at_k", frame, dataset, styles, precision_at_k_series, draw, setup, "precision@k")


def metric_vs_bits_plot(frame: pd.DataFrame, dataset: str, metric: str, styles: dict[str, Style]) -> Plot:
    """One panel, or one per family side by side (same axes) when the report groups methods."""
    series = metric_vs_bits_series(frame, dataset, metric)
    groups = family_groups(frame[frame["column_dataset"] == dataset])
    figure, (axes,) = _figure(len(groups))
    several = any(count > 1 for line in series.values() for count in line["runs"])
    bits_values = sorted({b for line in series.values() for b in line["bits"]})
    cutoffs = frame.loc[frame["column_dataset"] == dataset, "map_k"].dropna().unique() if "map_k" in frame else []
    info = metric_info(metric, int(cutoffs[0]) if len(cutoffs) == 1 else None)
    seeds = _seeds_text(frame, dataset)
    spread = f"mean ± std over {seeds}" if several else ("one seed" if seeds == "1 seed" else f"mean over {seeds}")
    # The axis starts at 0, so gaps between methods look as large as they are.
    top = max((m + s for line in series.values() for m, s in zip(line["mean"], line["std"], strict=True)), default=1.0)
    for ax, (family, labels) in zip(axes, groups, strict=True):
        for label, line in series.items():
            if label not in labels:
                continue
            style = styles[label]
            if several:
                ax.errorbar(line["bits"], line["mean"], yerr=line["std"], color=style.colour, marker=style.marker,
                            markersize=4, capsize=3, linewidth=1.2, label=label)
            else:  # one seed: no spread to show, so no error bars pretending to show one
                ax.plot(line["bits"], line["mean"], color=style.colour, marker=style.marker, markersize=4, linewidth=1.2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits_values, [str(b) for b in bits_values])
        ax.minorticks_off()
        ax.set(title=f"{dataset} · {family}" if family else dataset, xlabel="bits", ylabel=f"{info.label} ({spread})")
        ax.set_ylim(0, 1.02 if top <= 1 and info.format == ".4f" else top * 1.08)
        ax.grid(alpha=0.3)
        if family:
            # below the panel, so that it covers no line
            ax.legend(*_handles(styles, labels & set(series)), loc="upper center", bbox_to_anchor=(0.5, -0.16),
                      ncols=2, fontsize="small", borderaxespad=0.0)
    if not groups[0][0]:
        _legend(figure, styles, set(series))
    return Plot(f"{metric}_vs_bits", dataset, figure, {dataset: series})


def _file_stem(plot: Plot) -> str:
    dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", plot.dataset)
    kind = re.sub(r"[^A-Za-z0-9._-]+", "-", plot.kind.replace("_", "-"))
    return f"{kind}-{dataset}"


def save_figure(figure: Figure, folder: Path, stem: str) -> dict[str, Path]:
    """Write a figure as ``stem.png`` and ``stem.pdf`` in ``folder`` (atomically; the PDF
    without a creation date, so the same figure gives the same file); returns the paths."""
    import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for extension, options in (("png", {"dpi": 150}), ("pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=extension, **options)
        paths[extension] = folder / f"{stem}.{extension}"
        atomic.write_bytes(paths[extension], buffer.getvalue())
    return paths


def save_plot(plot: Plot, folder: Path) -> dict[str, Path]:
    """Write the plot's figure as PNG and PDF (atomically); returns the paths."""
    plot.paths.update(save_figure(plot.figure, folder, _file_stem(plot)))
    return plot.paths


def make_plots(records: list[RunRecord], metric: str = "map", captions: dict[str, str] | None = None) -> list[Plot]:
    """Every plot of the report, per dataset column: PR, P@k and metric versus bits.

    ``captions`` maps a dataset column to the text that says what was run there.
    """
    frame = label_records(records)
    families = dict(zip(frame["label"], frame["family"], strict=True)) if len(frame) else {}
    styles = method_styles(list(frame["label"]), families if len(families) > GROUP_ABOVE else None) if len(frame) else {}
    plots = []
    for dataset in sorted(frame["column_dataset"].unique()) if len(frame) else []:
        for plot in (
            pr_plot(frame, dataset, styles),
            precision_at_k_plot(frame, dataset, styles),
            metric_vs_bits_plot(frame, dataset, metric, styles),
        ):
            plot.caption = (captions or {}).get(dataset, "")
            plots.append(plot)
    return plots


# The plot folder's list of the files the last report wrote there, one name a line: the next
# report removes those it does not write again, and `--no-plots` removes them all, so the
# folder never holds a plot that report.html does not show. Nothing else is ever removed.
MANIFEST = ".hashbench-plots"
# How _file_stem and save_plot name a plot file.
_PLOT_NAME = re.compile(r"(?:pr|precision-at-k|[A-Za-z0-9._-]+-vs-bits)-[A-Za-z0-9._-]+\.(?:png|pdf)")


def earlier_plots(folder: Path) -> list[Path]:
    """The plot files an earlier report wrote into ``folder``: those its manifest lists; in a
    folder written before there was one, the PNG and PDF pairs named as hashbench names its
    plots. Only plain files with a plot's name, directly in the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    manifest = folder / MANIFEST
    if manifest.is_file():
        names = {line.strip() for line in manifest.read_text(errors="replace").splitlines()}
    else:
        present = {path.name for path in folder.iterdir()}
        names = {name for name in present if name.endswith(".png") and name[:-4] + ".pdf" in present}
        names |= {name[:-4] + ".pdf" for name in names}
    return sorted(folder / name for name in names if _PLOT_NAME.fullmatch(name) and (folder / name).is_file())


def remove_plots(folder: Path, keep: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """Delete the earlier plots of ``folder`` except ``keep``; returns what was deleted. With
    nothing kept the manifest goes too, and the folder when that leaves it empty."""
    return replace_outputs(folder, MANIFEST, earlier_plots(folder), keep)


def write_plots(
    records: list[RunRecord], folder: Path, metric: str = "map", captions: dict[str, str] | None = None
) -> list[Plot]:
    """Save every plot of the report into ``folder``, remove the ones an earlier report wrote
    there that this one does not (another dataset, another --metric), and list what is there."""
    plots = make_plots(records, metric, captions)
    for plot in plots:
        save_plot(plot, folder)
    remove_plots(folder, keep={path for plot in plots for path in plot.paths.values()})
    return plots
