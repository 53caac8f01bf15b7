"""Parameter sweeps: `--sweep METHOD.PARAM=V1,V2` and `[sweep.METHOD]` expand the grid like bits
and seeds, each value checked as `--set` values are; `report` then gives the sensitivity table
and plot, checked here against the run records, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hashbench.report.results import read_records
from hashbench.report.sensitivity import make_studies, plot
from hashbench.run.runner import GridSpec, plan_grid


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/run.json"))]


def _means(records, param):
    """(value, bits) → mean mAP over seeds, from the run records themselves."""
    values: dict[tuple, list[float]] = {}
    for record in records:
        values.setdefault((record["params"][param], record["bits"]), []).append(record["metrics"]["map"])
    return {cell: float(np.mean(maps)) for cell, maps in values.items()}


def test_a_sweep_runs_once_per_value_and_reports_its_sensitivity(invoke, results, tmp_path):
    args = ["run", "--methods", "itq", "--sweep", "itq.iterations=1,5,50", "--bits", "8,16", "--seeds", "0,1", "--results", results]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert len(records) == 3 * 2 * 2 and len({(r["params"]["iterations"], r["bits"], r["seed"]) for r in records}) == 12
    assert sorted({r["params"]["iterations"] for r in records}) == [1, 5, 50]
    assert "itq (iterations=5)" in result.output  # the summary names each cell's value
    # nothing is redone; the default value's cells are the plain grid's cells
    assert invoke(*args).output.count("done before") == 12
    plain = invoke("run", "--methods", "itq", "--bits", "8,16", "--seeds", "0,1", "--results", results)
    assert plain.output.count("done before") == 4 and len(_records(results)) == 12
    status = invoke("status", "--methods", "itq", "--sweep", "itq.iterations=1,5,50,100", "--bits", "8,16", "--seeds", "0,1", "--results", results)
    assert status.exit_code == 0, status.output
    assert "itq (iterations=100)" in status.output and "ok 12" in status.output and "pending 4" in status.output

    out = tmp_path / "report"
    report = invoke("report", "--results", results, "--out", out)
    assert report.exit_code == 0, report.output
    folder = out / "sensitivity"
    table = pd.read_csv(folder / "map-itq-iterations.csv")
    means = _means(records, "iterations")
    assert sorted(zip(table["value"], table["bits"], strict=True)) == sorted(means)
    for row in table.itertuples():
        assert row.mean == pytest.approx(means[row.value, row.bits], abs=1e-6)
        assert row.ci_low <= row.mean <= row.ci_high and row.runs == 2
        assert row.default == (row.value == 50)
    markdown = (folder / "map-itq-iterations.md").read_text()
    assert [line.split(" | ")[0].strip("| ") for line in markdown.splitlines() if line.startswith("| ") and "bits" not in line and "---" not in line] == [
        "1", "5", "50 (default)"
    ]
    assert "held fixed: every other parameter of itq at its default" in markdown
    assert (folder / "map-itq-iterations.png").stat().st_size > 0 and (folder / "map-itq-iterations.pdf").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "<h2>Sensitivity</h2>" in page and "mAP@100 of itq against iterations" in page and "held fixed" in page

    # the plot's lines: one per code length, through the records' means, on a log axis (1..50)
    loaded, _ = read_records(results)
    from hashbench.report.results import frame_from_records
    from hashbench.report.tables import summarise

    (study,) = make_studies(frame_from_records(loaded), "map", None, summarise=summarise)
    figure = plot(study)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"8 bits", "16 bits", "default (50)"}
    for bits in (8, 16):
        line = lines[f"{bits} bits"]
        assert list(line.get_xdata()) == [1.0, 5.0, 50.0]
        assert list(line.get_ydata()) == pytest.approx([means[v, bits] for v in (1, 5, 50)], abs=1e-9)
    assert list(lines["default (50)"].get_xdata()) == [50.0, 50.0]
    assert len(ax.collections) == 2  # a band per code length


def test_no_sweep_no_sensitivity_and_the_same_keys(invoke, results, tmp_path):
    spec = GridSpec(methods=["itq", "lsh"], bits=[8])
    assert [c.key for c in plan_grid(spec)] == [c.key for c in plan_grid(GridSpec(methods=["itq", "lsh"], bits=[8], sweep={}))]
    swept = plan_grid(GridSpec(methods=["itq", "lsh"], bits=[8], sweep={"itq": [{"iterations": [50, 7]}]}))
    assert [c.key for c in swept][0] == plan_grid(spec)[0].key  # the default value: the same run
    assert [c.method for c in swept] == ["itq", "itq", "lsh"]
    result = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results)
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    assert invoke("report", "--results", results, "--out", out).exit_code == 0
    assert not (out / "sensitivity").exists() and "Sensitivity" not in (out / "report.html").read_text()


def test_a_config_sweep_gives_the_product_of_a_table_and_the_union_of_tables(invoke, results, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["lsh", "itq"]\nbits = [8]\n'
        "[sweep.itq]\niterations = [2, 3]\n"
        "[[sweep.lsh]]\ncentre = [true, false]\n[[sweep.lsh]]\ncentre = [true]\n"
    )
    status = invoke("status", "--config", config, "--results", results)
    assert status.exit_code == 0, status.output
    assert "grid of 4 cells" in status.output  # lsh's centre=true once
    for label in ("itq (iterations=2)", "itq (iterations=3)", "lsh (centre=True)", "lsh (centre=False)"):
        assert label in status.output
    # the command line wins: --set of a swept parameter sets it instead, --sweep replaces the file's
    assert "grid of 3 cells" in invoke("status", "--config", config, "--results", results, "--set", "itq.iterations=4").output
    again = invoke("status", "--config", config, "--results", results, "--sweep", "itq.iterations=4,5,6")
    assert "grid of 5 cells" in again.output and "itq (iterations=6)" in again.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "cibhash", "--sweep", "cibhash.tau=0.1,0"], "sweep: cibhash.tau must be positive, got 0"),
        (["--methods", "cibhash", "--sweep", "cibhash.tau=0.1,abc"], "sweep: cibhash.tau: expected a number, got 'abc'"),
        (["--methods", "cibhash", "--sweep", "cibhash.temperature=1,2"], "sweep: unknown parameter cibhash.temperature"),
        (["--methods", "itq", "--sweep", "cibhash.tau=0.1,0.3"], "a sweep is given for 'cibhash', which is not among the methods"),
        (["--methods", "itq", "--sweep", "itq.iterations=5", "--set", "itq.iterations=3"], "itq.iterations is both set ('3') and swept"),
        (["--methods", "itq", "--sweep", "itq.iterations=5,05"], "'05' is listed twice (as 5)"),
        (["--methods", "itq", "--sweep", "itq.iterations=-1"], "sweep: itq.iterations must be >= 0"),
        (["--methods", "itq", "--sweep", "itq.iterations"], "expected METHOD.PARAM=VALUE,VALUE"),
        (["--methods", "itq", "--sweep", "itq.iterations=1,,2"], "an empty value"),
    ],
)
def test_a_bad_sweep_is_one_line_exit_2_and_writes_nothing(invoke, results, args, message):
    result = invoke("run", *args, "--results", results)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not results.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep.itq]\niterations = 5\n", "sweep.itq: expected a table of parameter = [values], got sweep.itq.iterations = 5"),
        ("[sweep.itq]\niterations = []\n", "sweep: itq.iterations = [] sweeps nothing"),
        ("sweep = 3\n", "sweep: expected tables [sweep.METHOD] of parameter = [values], got 3"),
        ('[sweep.itq]\niterations = [5, "x"]\n', "sweep: itq.iterations: expected an integer, got 'x'"),
        ("[params.itq]\niterations = 5\n[sweep.itq]\niterations = [1, 2]\n", "itq.iterations is both set (5) and swept"),
    ],
)
def test_a_bad_sweep_table_is_one_line(invoke, results, tmp_path, text, message):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["itq"]\nbits = [8]\n' + text)
    result = invoke("run", "--config", config, "--results", results)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not results.exists()


@pytest.mark.slow
def test_a_cibhash_tau_sweep_end_to_end(invoke, results, tmp_path):
    """The issue's command, with two epochs a cell so that it runs in about a minute on a CPU."""
    result = invoke(
        "run", "--methods", "cibhash", "--sweep", "cibhash.tau=0.1,0.3,1.0", "--set", "cibhash.epochs=2",
        "--bits", "16,32", "--seeds", "0,1", "--results", results,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert len(records) == 12
    out = tmp_path / "report"
    assert invoke("report", "--results", results, "--out", out).exit_code == 0
    table = pd.read_csv(out / "sensitivity" / "map-cibhash-tau-epochs=2.csv")
    means = _means(records, "tau")
    assert len(table) == 6
    for row in table.itertuples():
        assert row.mean == pytest.approx(means[row.value, row.bits], abs=1e-6)
    assert set(table.loc[table["default"], "value"]) == {0.3}
    assert "held fixed: every other parameter of cibhash at its default except epochs=2" in (
        out / "sensitivity" / "map-cibhash-tau-epochs=2.md"
    ).read_text()
