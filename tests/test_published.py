"""Published numbers: the shipped list, a user's CSV, and the side-by-side view."""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from hashbench import registry
from hashbench.errors import UserError
from hashbench.metric_table import known_metric
from hashbench.report.published import COLUMNS, IDENTITY, builtin_path, compare, load_published
from hashbench.report.tables import load_runs
from hashbench.run.runner import GridSpec, run_grid

HEADER = "method,dataset,protocol,metric,bits,value,source\n"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = tmp_path_factory.mktemp("published") / "results"
    run_grid(GridSpec(methods=["lsh", "itq"], bits=[8], seeds=[0, 1], results=results))
    return results


@pytest.fixture
def numbers(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text(
        "# numbers for the test\n"
        + HEADER
        + "itq,digits,standard,map,8,0.7,Paper A (2020) Table 1\n"
        + "lsh,digits,standard,map,8,0.41,\"Paper B, Table 2\"\n"
        + "pcah,digits,standard,map,8,0.5,Paper C\n"  # not run
        + "itq,digits,other-protocol,map,8,0.9,Paper D\n"  # another protocol: not comparable
        + "itq,digits,standard,map_all,8,0.6,Paper A\n"  # another metric
        + "itq,cifar10,standard,map,8,0.3,Paper A\n"  # a dataset not run
    )
    return path


def _maps(results, method):
    records = [json.loads(p.read_text()) for p in results.glob("runs/*/run.json")]
    return [r["metrics"]["map"] for r in records if r["method"] == method]


def test_shipped_list_loads_and_every_row_is_cited_and_checked():
    frame = load_published()
    assert list(frame.columns) == [*COLUMNS, "checked", "kind"]
    for _, row in frame.iterrows():
        assert row["source"] and row["checked"], "a shipped number needs its citation and how it was checked"
        assert row["kind"] in ("primary", "secondary")
    text = builtin_path().read_text()
    assert text.startswith("#") and "checked" in text


def test_shipped_list_rows_name_registered_methods_datasets_protocols_and_metrics():
    """Every shipped number can meet a run: one row per number, a registered method and
    dataset, a protocol that dataset has, a metric the records hold (holds for an empty list)."""
    frame = load_published()
    assert not frame.duplicated(IDENTITY).any()
    for _, row in frame.iterrows():
        where = f"{row['method']} / {row['dataset']} / {row['protocol']} / {row['bits']} bits"
        registry.get_method(row["method"])  # raises UserError for an unknown name
        dataset = registry.get_dataset(row["dataset"])
        assert row["protocol"] in dataset.protocols, f"{where}: {row['dataset']} has no protocol {row['protocol']!r}"
        assert known_metric(row["metric"]), f"{where}: {row['metric']!r} is not a record metric"
        assert 0.0 <= row["value"] <= 1.0 and row["bits"] > 0, where


def test_shipped_list_is_package_data():
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    assert "hashbench.resources" in setuptools["packages"]
    assert "*.csv" in setuptools["package-data"]["hashbench.resources"]
    assert builtin_path().is_file() and builtin_path().parent.name == "resources"


def test_published_beside_reproduced_with_difference(grid, numbers):
    comparison = compare(load_runs(grid)[0], load_published(numbers), "map")
    rows = {(r["method"], r["protocol"]): r for _, r in comparison.iterrows()}
    assert set(rows) == {("itq", "standard"), ("lsh", "standard"), ("pcah", "standard"), ("itq", "other-protocol")}
    itq = rows["itq", "standard"]
    assert itq["reproduced"] == pytest.approx(statistics.mean(_maps(grid, "itq")), abs=1e-12)
    assert itq["std"] == pytest.approx(statistics.stdev(_maps(grid, "itq")), abs=1e-12)
    assert itq["runs"] == 2
    assert itq["difference"] == pytest.approx(statistics.mean(_maps(grid, "itq")) - 0.7, abs=1e-12)
    assert itq["source"] == "Paper A (2020) Table 1"
    assert rows["lsh", "standard"]["source"] == "Paper B, Table 2"
    for missing in (("pcah", "standard"), ("itq", "other-protocol")):
        assert rows[missing]["runs"] == 0 and pd.isna(rows[missing]["reproduced"])
    # The other metric is compared when it is the one reported.
    other = compare(load_runs(grid)[0], load_published(numbers), "map_all")
    assert list(other["method"]) == ["itq"] and other.iloc[0]["published"] == 0.6


def test_report_published_file_end_to_end(invoke, grid, numbers, tmp_path):
    out = tmp_path / "out"
    result = invoke("report", "--results", grid, "--out", out, "--published", numbers, "--no-plots")
    assert result.exit_code == 0, result.output
    mean = statistics.mean(_maps(grid, "itq"))
    line = next(line for line in result.output.splitlines() if line.startswith("| itq | digits | standard | 8 | 0.7000"))
    assert f"{mean:.4f} ± " in line and f"{mean - 0.7:+.4f}" in line and "Paper A (2020) Table 1" in line
    assert "| pcah | digits | standard | 8 | 0.5000 | not run | — |" in result.output
    assert (out / "published-map.csv").is_file()
    page = (out / "report.html").read_text()
    # mAP, the tie-aware mAP beside it, the published comparison and the timings
    assert page.count("<table") == 4 and "Paper B, Table 2" in page


def test_shipped_list_through_the_cli(invoke, grid, tmp_path):
    result = invoke("report", "--results", grid, "--out", tmp_path / "out", "--published", "--no-plots")
    assert result.exit_code == 0, result.output
    if load_published().empty:
        assert "holds no published numbers" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method,dataset,protocol,metric,bits,value\nitq,digits,standard,map,8,0.7\n", "missing column(s) source"),
        (HEADER + "itq,digits,standard,map,8,59.0,Paper\n", "give fractions (0.590), not percent"),
        (HEADER + "itq,digits,standard,map,8,high,Paper\n", "value 'high' is not a number"),
        (HEADER + "itq,digits,standard,map,0,0.5,Paper\n", "bits must be a positive integer"),
        (HEADER + "itq,digits,standard,map,8,0.5,\n", "source is empty"),
        (HEADER + "itq,digits,standard,map,8,0.5,A\nitq,digits,standard,map,8,0.6,B\n", "appears more than once"),
    ],
)
def test_bad_published_file_is_one_clear_message(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_published(path)
    assert str(path) in str(error.value)


def test_bad_published_file_through_the_cli(invoke, grid, tmp_path):
    result = invoke("report", "--results", grid, "--out", tmp_path / "out", "--published", tmp_path / "missing.csv")
    assert result.exit_code == 2 and "file not found" in result.output and "Traceback" not in result.output
