"""The report's tables against the run records: bold on the best cell, mean and std of every row.

LSH, PCAH and ITQ run on digits (8 and 16 bits, three seeds) through the CLI, then
``hashbench report`` writes its tables for two metrics: mAP (higher is better; ITQ, the first
row, wins every column) and the fit time (lower is better; another row wins). The expected
numbers come from the run records (``runs/*/run.json``) with numpy: per method and code
length the mean and the sample standard deviation, and per code length the method with the
best mean. Each format (Markdown, LaTeX, HTML) must put exactly that cell of each column in
bold, and every cell must show the records' mean and standard deviation.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

METHODS = ("lsh", "pcah", "itq")
BITS = (8, 16)
SEEDS = (0, 1, 2)
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
# metric → (its value in a run record, higher is better, tolerance of the printed numbers)
METRICS = {
    "map": (lambda record: record["metrics"]["map"], True, {"abs": 6e-5}),  # 4 decimals
    "timings.fit": (lambda record: record["timings"]["fit"], False, {"rel": 6e-3}),  # 3 significant digits
}


def _invoke(*args):
    from hashbench.cli import cli

    result = CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("report-bold") / "results"
    _invoke("run", "--methods", ",".join(METHODS), "--bits", ",".join(map(str, BITS)),
            "--seeds", ",".join(map(str, SEEDS)), "--results", results, "--device", "cpu")  # fmt: skip
    return results


@pytest.fixture(scope="module", params=sorted(METRICS))
def report(request, results) -> dict:
    metric = request.param
    value_of, higher_is_better, tolerance = METRICS[metric]
    out = results.parent / f"report-{metric}"
    _invoke("report", "--results", results, "--out", out, "--no-plots", "--metric", metric)
    values: dict[tuple[str, int], list[float]] = {}
    for path in results.glob("runs/*/run.json"):
        record = json.loads(path.read_text())
        assert record["status"] == "ok"
        values.setdefault((record["method"], record["bits"]), []).append(float(value_of(record)))
    assert sorted(values) == sorted((method, bits) for method in METHODS for bits in BITS)
    assert all(len(runs) == len(SEEDS) for runs in values.values())
    expected = {
        key: (float(np.mean(runs)), float(np.std(runs, ddof=1))) for key, runs in values.items()
    }
    pick = max if higher_is_better else min
    best = {bits: pick(METHODS, key=lambda method: expected[method, bits][0]) for bits in BITS}
    stem = metric.replace(".", "_")
    files = {kind: out / f"{stem}.{kind}" for kind in ("md", "tex", "html", "csv")}
    return {"files": files, "expected": expected, "best": best, "tolerance": tolerance}


def _check(table: dict[str, dict[int, str]], report: dict, bold) -> None:
    """``table``: method → bits → cell text; ``bold(text)``: the inside of a bold cell, or None."""
    assert set(table) >= set(METHODS), sorted(table)
    for method in METHODS:
        for bits in BITS:
            text = table[method][bits]
            inner = bold(text)
            should = report["best"][bits] == method
            assert (inner is not None) == should, f"{method} at {bits} bits: {text!r} (best: {report['best'][bits]})"
            mean, std = (float(number) for number in NUMBER.findall(inner if inner is not None else text)[:2])
            want_mean, want_std = report["expected"][method, bits]
            assert mean == pytest.approx(want_mean, **report["tolerance"]), (method, bits, text)
            assert std == pytest.approx(want_std, **report["tolerance"]), (method, bits, text)


def _bits_of(headers: list[str]) -> list[int]:
    return [int(match.group(1)) for header in headers if (match := re.search(r"(\d+) bits", header))]


def _bold(pattern: str):
    compiled = re.compile(pattern)

    def inner(text: str) -> str | None:
        match = compiled.fullmatch(text.strip())
        return match.group(1) if match else None

    return inner


def test_markdown_bolds_the_best_mean_of_each_column(report):
    lines = [line for line in report["files"]["md"].read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    bits = _bits_of(header[1:])
    assert sorted(bits) == sorted(BITS)
    table = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(bits, cells[1:], strict=True))
    _check(table, report, _bold(r"\*\*(.+)\*\*"))


def test_latex_bolds_the_best_mean_of_each_column(report):
    lines = report["files"]["tex"].read_text().splitlines()
    header = next(line for line in lines if line.lower().startswith("method &"))
    bits = _bits_of(header.split("&")[1:])
    assert sorted(bits) == sorted(BITS)
    table = {}
    for line in lines:
        cells = [cell.strip() for cell in line.removesuffix(r"\\").split(" & ")]
        if cells[0] in METHODS:
            table[cells[0]] = dict(zip(bits, cells[1:], strict=True))
    _check(table, report, _bold(r"\\textbf\{(.+)\}"))


def test_html_bolds_the_best_mean_of_each_column(report):
    text = report["files"]["html"].read_text()
    bits = _bits_of(re.findall(r"<th[^>]*>([^<]*bits)</th>", text))
    assert sorted(bits) == sorted(BITS)
    table = {}
    for name, row in re.findall(r"<tr>\s*<th[^>]*>([^<]+)</th>(.*?)</tr>", text, flags=re.DOTALL):
        cells = [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, flags=re.DOTALL)]
        if cells:
            table[html.unescape(name).strip()] = dict(zip(bits, cells, strict=True))
    _check(table, report, _bold(r"<b>(.+)</b>"))


def test_csv_means_and_stds_are_those_of_the_records(report):
    frame = pd.read_csv(report["files"]["csv"])
    for method in METHODS:
        for bits in BITS:
            (row,) = frame[(frame["method"] == method) & (frame["bits"] == bits)].itertuples()
            want_mean, want_std = report["expected"][method, bits]
            assert row.mean == pytest.approx(want_mean, rel=1e-5, abs=1e-6)
            assert row.std == pytest.approx(want_std, rel=1e-5, abs=1e-6)
            assert row.runs == len(SEEDS)
