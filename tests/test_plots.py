"""Report plots, timing table and HTML page against the run records they come from."""

from __future__ import annotations

import base64
import json
import re
import statistics

import numpy as np
import pytest

from hashbench.report.plots import make_plots
from hashbench.report.tables import load_runs, read_records, summarise, timing_table, write_report
from hashbench.run.runner import GridSpec, run_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = tmp_path_factory.mktemp("plots") / "results"
    run_grid(GridSpec(methods=["lsh", "itq"], bits=[8, 16], seeds=[0, 1], results=results))
    return results


@pytest.fixture(scope="module")
def report(grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    table, paths, warnings = write_report(grid, out, "map")
    return out, paths


def _records(results, method, bits):
    records = [json.loads(p.read_text()) for p in results.glob("runs/*/run.json")]
    chosen = [r for r in records if r["method"] == method and r["bits"] == bits]
    assert len(chosen) == 2  # two seeds
    return chosen


def _lines(plot, panel):
    """label → (x, y) of the lines drawn in one panel of a figure."""
    axes = plot.figure.axes[panel]
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in axes.get_lines()}


def test_plots_are_written_as_png_and_pdf(report):
    out, paths = report
    plot_files = sorted(path for key, path in paths.items() if key.startswith("plot_"))
    names = sorted(path.name for path in plot_files)
    assert names == sorted(
        f"{kind}-digits.{ext}" for kind in ("pr", "precision-at-k", "map-vs-bits") for ext in ("png", "pdf")
    )
    for path in plot_files:
        data = path.read_bytes()
        assert len(data) > 5000
        assert data.startswith(b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF-")


def test_pr_curves_drawn_are_the_records_mean_over_seeds(grid):
    records, _ = read_records(grid)
    pr = next(plot for plot in make_plots(records) if plot.kind == "pr")
    for panel, bits in enumerate((8, 16)):
        drawn = _lines(pr, panel)
        assert set(drawn) == {"itq", "lsh"}
        for method in ("itq", "lsh"):
            curves = [r["metrics"]["pr_curve"] for r in _records(grid, method, bits)]
            assert curves[0]["radius"] == list(range(bits + 1))
            recall = np.mean([c["recall"] for c in curves], axis=0)
            precision = np.mean([c["precision"] for c in curves], axis=0)
            x, y = drawn[method]
            np.testing.assert_allclose(x, recall, rtol=0, atol=1e-12)
            np.testing.assert_allclose(y, precision, rtol=0, atol=1e-12)
            assert pr.data[bits][method]["radius"] == list(range(bits + 1))


def test_precision_at_k_drawn_is_the_records_mean_over_seeds(grid):
    records, _ = read_records(grid)
    plot = next(plot for plot in make_plots(records) if plot.kind == "precision_at_k")
    drawn = _lines(plot, 1)  # the 16-bit panel
    chosen = _records(grid, "itq", 16)
    ks = sorted(int(k) for k in chosen[0]["metrics"]["precision_at_k"])
    x, y = drawn["itq"]
    assert list(x) == ks
    expected = [statistics.mean(r["metrics"]["precision_at_k"][str(k)] for r in chosen) for k in ks]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)


def test_map_versus_bits_is_the_tables_mean_and_std(grid):
    records, _ = read_records(grid)
    plot = next(plot for plot in make_plots(records, "map") if plot.kind == "map_vs_bits")
    table = summarise(load_runs(grid)[0], "map")
    series = plot.data["digits"]
    for method in ("itq", "lsh"):
        assert series[method]["bits"] == [8, 16]
        for bits, mean, std in zip(series[method]["bits"], series[method]["mean"], series[method]["std"], strict=True):
            values = [r["metrics"]["map"] for r in _records(grid, method, bits)]
            assert mean == pytest.approx(statistics.mean(values), abs=1e-12)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert mean == pytest.approx(table.mean.at[method, ("digits", bits)], abs=1e-12)
    drawn = {container.get_label(): container.lines[0] for container in plot.figure.axes[0].containers}
    assert list(drawn["itq"].get_xdata()) == [8, 16] and list(drawn["itq"].get_ydata()) == series["itq"]["mean"]
    assert plot.figure.axes[0].get_ylabel().startswith("mAP@100")


def test_timing_table_comes_from_the_records(grid, report):
    out, paths = report
    timings = timing_table(load_runs(grid)[0])
    row = timings[(timings["method"] == "itq") & (timings["bits"] == 16)].iloc[0]
    chosen = _records(grid, "itq", 16)
    assert row["runs"] == 2 and row["device"] == "cpu"
    for column, key in (("fit (s)", "fit"), ("encode (s)", "encode"), ("evaluate (s)", "evaluate")):
        assert row[column] == pytest.approx(statistics.mean(r["timings"][key] for r in chosen), abs=1e-12)
    assert row["peak memory (MB)"] == max(r["peak_memory_mb"] for r in chosen)
    text = paths["timings_markdown"].read_text()
    assert "| itq | digits | 16 | 2 | cpu |" in text


def test_html_report_holds_tables_and_plots(report):
    out, paths = report
    page = paths["report"].read_text()
    assert page.count("<table") == 3  # mAP, tie-aware mAP beside it, timings (no --published)
    assert "tie-aware mAP@100" in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    embedded = {base64.b64decode(image) for image in images}
    assert embedded == {path.read_bytes() for key, path in paths.items() if key.startswith("plot_") and path.suffix == ".png"}
    for link in re.findall(r'href="([^"]+\.pdf)"', page):
        assert (out / link).is_file()
    assert "<b>" in page  # best in bold, as in the other formats


def test_report_without_plots(invoke, grid, tmp_path):
    result = invoke("report", "--results", grid, "--out", tmp_path / "out", "--no-plots")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / "plots").exists()
    assert "data:image/png" not in (tmp_path / "out" / "report.html").read_text()


def test_each_method_keeps_one_colour_in_every_panel_and_the_legend_names_it(tmp_path):
    from matplotlib.colors import to_hex

    results = tmp_path / "partial"
    # A partial grid: lsh at both lengths, itq only at 16 bits, pcah only at 8.
    run_grid(GridSpec(methods=["lsh"], bits=[8, 16], results=results))
    run_grid(GridSpec(methods=["itq"], bits=[16], results=results))
    run_grid(GridSpec(methods=["pcah"], bits=[8], results=results))
    records, _ = read_records(results)
    colours: dict[str, str] = {}
    for plot in make_plots(records):
        (legend,) = plot.figure.legends
        legend_colours = {
            text.get_text(): to_hex(handle.get_color()) for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
        }
        for axes in plot.figure.axes:
            for line in axes.get_lines():
                label = line.get_label()
                if label.startswith("_"):
                    continue  # matplotlib's own (error-bar parts)
                assert legend_colours[label] == to_hex(line.get_color()), (plot.kind, label)
                assert colours.setdefault(label, to_hex(line.get_color())) == to_hex(line.get_color())
        assert set(legend_colours) <= {"lsh", "itq", "pcah"}
    assert len(set(colours.values())) == 3


def test_one_seed_has_no_error_bars_and_the_axis_starts_at_zero(tmp_path):
    results = tmp_path / "one-seed"
    run_grid(GridSpec(methods=["itq"], bits=[16, 32], results=results))
    records, _ = read_records(results)
    (plot,) = [p for p in make_plots(records) if p.kind == "map_vs_bits"]
    (axes,) = plot.figure.axes
    assert axes.get_ylim()[0] == 0
    assert "one seed" in axes.get_ylabel() and "±" not in axes.get_ylabel()
    assert not axes.containers  # errorbar() adds a container; plot() does not


def test_report_html_scales_every_figure_alike_and_captions_say_what_was_run(report):
    out, paths = report
    page = paths["report"].read_text()
    widths = {int(w) for w in re.findall(r'<img style="width: (\d+)px"', page)}
    # Two code lengths: two-panel curves; one panel for mAP versus bits, at the same scale.
    assert widths == {round((4.2 * 2 + 1.8) * 100), round((4.2 + 1.8) * 100)}
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == 3
    for caption in captions:
        assert "protocol standard" in caption and "k = 100" in caption and "2 seeds per cell" in caption
    table = paths["markdown"].read_text()
    assert table.startswith("mAP@100 (mean ± std over seeds") and "protocol standard" in table
