"""The report's numbers against the run records they come from."""

from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest

from hashbench.errors import UserError
from hashbench.report.tables import (
    load_runs,
    summarise,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
    write_report,
)
from hashbench.run.runner import GridSpec, run_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = tmp_path_factory.mktemp("report") / "results"
    run_grid(GridSpec(methods=["lsh", "itq"], bits=[8, 16], seeds=[0, 1, 2], results=results))
    run_grid(GridSpec(methods=["itq"], bits=[8], seeds=[0, 1], params={"itq": {"iterations": 0}}, results=results))
    return results


def _records(results):
    return [json.loads(p.read_text()) for p in results.glob("runs/*/run.json")]


def test_means_and_stds_equal_those_of_the_records(grid):
    table = summarise(load_runs(grid)[0], "map")
    for method in ("lsh",):
        for bits in (8, 16):
            values = [r["metrics"]["map"] for r in _records(grid) if r["method"] == method and r["bits"] == bits]
            assert len(values) == 3
            assert table.mean.at[method, ("digits", bits)] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert table.std.at[method, ("digits", bits)] == pytest.approx(statistics.stdev(values), abs=1e-12)
    # itq ran with two parameter sets: two rows, labelled by the parameter that differs.
    assert set(table.mean.index) == {"lsh", "itq (iterations=0)", "itq (iterations=50)"}
    assert table.count.at["itq (iterations=0)", ("digits", 8)] == 2


def test_best_per_column_is_bold_in_every_format(grid):
    table = summarise(load_runs(grid)[0], "map")
    best_row = table.mean[("digits", 16)].idxmax()
    markdown = to_markdown(table)
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {best_row} |"))
    assert f"**{table.cell_text(best_row, ('digits', 16))}**" in line
    assert r"\textbf{" in to_latex(table) and r"\toprule" in to_latex(table) and r"$\pm$" in to_latex(table)
    assert "<b>" in to_html(table)
    csv = pd.read_csv(pd.io.common.StringIO(to_csv(table)))
    row = csv[(csv["method"] == "lsh") & (csv["bits"] == 8)].iloc[0]
    assert row["mean"] == pytest.approx(table.mean.at["lsh", ("digits", 8)], abs=1e-6)
    assert row["runs"] == 3


def test_other_metrics_and_unknown_metric(grid, tmp_path):
    table, paths, _ = write_report(grid, tmp_path, "precision_at_k.10")
    record = next(r for r in _records(grid) if r["method"] == "lsh" and r["bits"] == 8 and r["seed"] == 0)
    assert "precision_at_k.10" in paths["markdown"].name.replace("_at_k_", "_at_k.") or paths["markdown"].exists()
    values = [r["metrics"]["precision_at_k"]["10"] for r in _records(grid) if r["method"] == "lsh" and r["bits"] == 8]
    assert record["metrics"]["precision_at_k"]["10"] in values
    assert table.mean.at["lsh", ("digits", 8)] == pytest.approx(statistics.mean(values), abs=1e-12)
    with pytest.raises(UserError, match="'mapp' is not a metric; did you mean 'map'"):
        summarise(load_runs(grid)[0], "mapp")
    # The cut-off and the run counts are not metrics, and a known metric nobody recorded is named.
    for name in ("map_k", "num_queries", "bits"):
        with pytest.raises(UserError, match="is not a metric"):
            summarise(load_runs(grid)[0], name)
    with pytest.raises(UserError, match="no run recorded the metric 'precision_at_k.7'"):
        summarise(load_runs(grid)[0], "precision_at_k.7")


def test_lower_is_better_metrics_bold_the_smallest(grid, tmp_path):
    table, paths, _ = write_report(grid, tmp_path, "timings.fit", plots=False)
    frame = load_runs(grid)[0]
    means = frame[frame["bits"] == 8].groupby("method")["timings.fit"].mean()
    fastest = means.idxmin()
    assert table.best().loc[:, ("digits", 8)].idxmax() == fastest
    assert f"**{table.cell_text(fastest, ('digits', 8))}**" in paths["markdown"].read_text()
    assert "lower is better" in paths["markdown"].read_text() and "fit time (s)" in paths["markdown"].read_text()


def test_map_is_exported_with_the_tie_aware_map_beside_it_in_every_format(grid, tmp_path):
    table, paths, _ = write_report(grid, tmp_path, "map", plots=False)
    for kind, suffix in (("markdown", "md"), ("latex", "tex"), ("html", "html"), ("csv", "csv")):
        assert paths[f"{kind}_map_tie_aware"] == tmp_path / f"map_tie_aware.{suffix}"
        assert paths[f"{kind}_map_tie_aware"].exists()
    assert (tmp_path / "map_tie_aware.md").read_text().startswith("tie-aware mAP@")
