"""CSV formula injection: no CSV hashbench writes holds a cell a spreadsheet would run as a
formula. Text from a published-numbers file, a run record or a plugin that starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (headers and index values
too); numbers, negative ones included, are left as they are."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from hashbench.report.csv_safe import defuse, to_csv

PLUGINS = Path(__file__).resolve().parent / "plugins.py"
STARTS = ("=", "+", "-", "@", "\t", "\r")

SOURCE = "=cmd|'/c calc'!A1"  # a published number's source
ERROR = "=HYPERLINK(\"http://evil.example\",\"click\")"  # a failed run's recorded error
DEVICE = "@SUM(A1)"  # a run's device
METRIC = "-2+3"  # a recorded number's name: a column header of runs.csv
METHOD = "+evil"  # a recorded method no plugin installs: the row of every table
PUBLISHED_METHOD = "-evil"  # a published number's method, not run


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return cell == cell.strip() and "_" not in cell


def _cells(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _column(rows: list[list[str]], name: str) -> list[str]:
    position = rows[0].index(name)
    return [row[position] for row in rows[1:]]


@pytest.fixture
def hostile_report(invoke, tmp_path):
    """A report of runs and published numbers whose text a spreadsheet would run as formulas."""
    results, out = tmp_path / "results", tmp_path / "out"
    ran = invoke("--plugin", PLUGINS, "run", "--methods", "exploding,lsh,itq", "--bits", "8", "--device", "cpu", "--results", results)
    assert ran.exit_code == 1, ran.output  # exploding fails, by design
    # Records are JSON anyone may edit or bring from elsewhere: plant hostile text in them.
    for path in results.glob("runs/*/run.json"):
        record = json.loads(path.read_text())
        if record["method"] == "exploding":
            record["error"] = ERROR
        elif record["method"] == "lsh":
            record["environment"]["device"] = DEVICE
            record["metrics"][METRIC] = 0.5
        else:
            record["method"] = METHOD
        path.write_text(json.dumps(record))
    numbers = tmp_path / "numbers.csv"
    quoted = '"' + SOURCE.replace('"', '""') + '"'
    numbers.write_text(
        "method,dataset,protocol,metric,bits,value,source\n"
        f"lsh,digits,standard,map,8,0.99,{quoted}\n"  # far above lsh's mAP: a negative difference
        f"{PUBLISHED_METHOD},digits,standard,map,8,0.5,Paper C\n"
    )
    reported = invoke("report", "--results", results, "--out", out, "--published", numbers, "--no-plots")
    assert reported.exit_code == 0, reported.output
    return out


def test_no_csv_the_report_writes_holds_a_formula_and_the_text_is_kept(hostile_report):
    out = hostile_report
    written = {path.name: _cells(path) for path in sorted(out.rglob("*.csv"))}
    assert {"map.csv", "runs.csv", "timings.csv", "published-map.csv"} <= set(written)
    for name, rows in written.items():
        for line, row in enumerate(rows, 1):
            for cell in row:
                assert not cell.startswith(STARTS) or _is_number(cell), f"{name} line {line}: {cell!r} would run as a formula"

    # The text is kept after the quote: in the cells, the header and every table's rows.
    runs = written["runs.csv"]
    assert "'" + METRIC in runs[0] and METRIC not in runs[0]
    assert "'" + ERROR in _column(runs, "error")
    assert "'" + DEVICE in _column(runs, "device")
    assert "'" + METHOD in _column(runs, "method")
    for name in ("map.csv", "timings.csv"):
        assert "'" + METHOD in _column(written[name], "method") and "lsh" in _column(written[name], "method")
    assert "'" + DEVICE in _column(written["timings.csv"], "device")
    published = {row[0]: dict(zip(written["published-map.csv"][0], row, strict=True)) for row in written["published-map.csv"][1:]}
    assert set(published) == {"lsh", "'" + PUBLISHED_METHOD}
    assert published["lsh"]["source"] == "'" + SOURCE
    # Numbers stay numbers, negative ones included.
    assert float(published["lsh"]["difference"]) < 0 and published["lsh"]["difference"].startswith("-")
    assert float(published["lsh"]["published"]) == pytest.approx(0.99)
    mean = float(_column(written["map.csv"], "mean")[0])
    assert 0 < mean <= 1

    # Only the CSVs quote: the other outputs show the text as given (HTML escaped).
    markdown = (out / "published-map.md").read_text()
    assert SOURCE.replace("|", "\\|") in markdown and f"| {PUBLISHED_METHOD} |" in markdown
    assert f"| {METHOD} |" in (out / "map.md").read_text()


@pytest.mark.parametrize("value", [0, 3, -3, 0.5, -0.5, -1e-3, math.inf, -math.inf, True, None, float("nan")])
def test_numbers_and_missing_values_are_untouched(value):
    result = defuse(value)
    assert result is value or (isinstance(value, float) and math.isnan(value) and math.isnan(result))


@pytest.mark.parametrize("text", ["", "plain", "0.5", "-0.5", "-3", "+1", "-1e-3", "-1E+03", "-.5", "-5.", "x=1", " -x", "'=1"])
def test_text_that_is_safe_or_a_plain_number_is_untouched(text):
    assert defuse(text) == text


@pytest.mark.parametrize(
    "text",
    ["-x", "@SUM(A1)", "=1+1", "+1+1", "-2+3", "=cmd|'/c calc'!A1", "\tx", "\r=1", "-", "+", "=", "@", "-inf", "-nan", "-1,5", "-1_0", "-1 "],
)
def test_formula_like_text_gets_a_leading_quote_and_keeps_the_rest(text):
    assert defuse(text) == "'" + text


def test_the_frame_writer_quotes_text_cells_headers_and_index_but_not_numbers():
    frame = pd.DataFrame(
        {"=name": ["-x", "ok", "-0.5", None], "value": [-0.5, -3.0, 1e-3, float("nan")], "count": [-3, 0, 1, 2], "flag": [True, False, True, False]},
        index=pd.Index(["@row", "-1", "r", "+r"], name="-index"),
    )
    rows = list(csv.reader(to_csv(frame, index=True, float_format="%.6f").splitlines()))
    assert rows[0] == ["'-index", "'=name", "value", "count", "flag"]
    assert rows[1:] == [
        ["'@row", "'-x", "-0.500000", "-3", "True"],
        ["-1", "ok", "-3.000000", "0", "False"],
        ["r", "-0.5", "0.001000", "1", "True"],
        ["'+r", "", "", "2", "False"],
    ]
    assert list(frame.columns) == ["=name", "value", "count", "flag"] and frame.iat[0, 0] == "-x"  # the input is not changed
    # Without the index, as hashbench writes its CSVs; a MultiIndex header is quoted per level.
    assert to_csv(frame).splitlines()[0] == "'=name,value,count,flag"
    wide = pd.DataFrame([[1, "=x"]], columns=pd.MultiIndex.from_tuples([("-a", "b"), ("c", "@d")]))
    assert [line.split(",") for line in to_csv(wide).splitlines()] == [["'-a", "c"], ["b", "'@d"], ["1", "'=x"]]
