"""Published numbers read in a secondary source: the ``kind`` column, the mark every output
gives them, spreadsheet-safe CSV output, the shipped list and CSVs of the older format."""

from __future__ import annotations

import csv
import html

import pytest

from hashbench.errors import UserError
from hashbench.report.published import COLUMNS, SECONDARY_MARK, builtin_path, load_published
from hashbench.run.runner import GridSpec, run_grid

SECONDARY_TEXT = "secondary: cited in Survey S (2023) Table 4, quoting Paper B, not checked against the paper"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    results = tmp_path_factory.mktemp("published-secondary") / "results"
    run_grid(GridSpec(methods=["lsh", "itq"], bits=[8], seeds=[0], results=results))
    return results


def _report(invoke, grid, numbers, out):
    result = invoke("report", "--results", grid, "--out", out, "--published", numbers, "--no-plots")
    assert result.exit_code == 0, result.output
    return result


def _printed_row(result, method):
    """The line of the printed published table (not of the results table above it) for ``method``."""
    return next(line for line in result.output.splitlines() if line.startswith(f"| {method} | digits | standard | 8 |"))


def _csv_rows(out):
    with (out / "published-map.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_secondary_number_is_marked_in_the_printed_table_md_csv_and_html(invoke, grid, tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text(
        "method,dataset,protocol,metric,bits,value,source,checked,kind\n"
        "lsh,digits,standard,map,8,0.41,\"Survey S (2023) Table 4, quoting Paper B\",read in the survey,secondary\n"
        "itq,digits,standard,map,8,0.7,Paper A (2020) Table 1,read in Table 1,primary\n"
    )
    out = tmp_path / "out"
    result = _report(invoke, grid, numbers, out)

    lsh, itq = (_printed_row(result, method) for method in ("lsh", "itq"))
    assert f"| 0.4100 {SECONDARY_MARK} |" in lsh and f"{SECONDARY_MARK} {SECONDARY_TEXT}" in lsh
    assert SECONDARY_MARK not in itq and "secondary" not in itq and "| 0.7000 |" in itq
    assert "† " not in lsh  # the report's other mark is not reused
    assert f"{SECONDARY_MARK} secondary: read in the source named, not checked against the paper itself" in result.output

    markdown = (out / "published-map.md").read_text()
    assert markdown in result.output  # what is printed is the file
    assert SECONDARY_TEXT in markdown and f"0.4100 {SECONDARY_MARK}" in markdown

    rows = {row["method"]: row for row in _csv_rows(out)}
    assert rows["lsh"]["kind"] == "secondary" and rows["lsh"]["source"] == f"{SECONDARY_MARK} {SECONDARY_TEXT}"
    assert float(rows["lsh"]["published"]) == pytest.approx(0.41)  # the value stays a number
    assert rows["itq"]["kind"] == "primary" and rows["itq"]["source"] == "Paper A (2020) Table 1"

    page = (out / "report.html").read_text()
    assert html.escape(f"{SECONDARY_MARK} {SECONDARY_TEXT}") in page
    assert f"<td>0.4100 {SECONDARY_MARK}</td>" in page and "<td>0.7000</td>" in page
    assert "secondary: read in the source named, not checked against the paper itself" in page


@pytest.mark.parametrize("source", ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1:A2)"])
def test_a_formula_like_source_is_neutralised_in_the_csv(invoke, grid, tmp_path, source):
    numbers = tmp_path / "numbers.csv"
    quoted = '"' + source.replace('"', '""') + '"'
    numbers.write_text(
        "method,dataset,protocol,metric,bits,value,source\n"
        f"lsh,digits,standard,map,8,0.41,{quoted}\n"
        "=evil,digits,standard,map,8,0.5,Paper C\n"  # a method that was not run is written too
    )
    out = tmp_path / "out"
    _report(invoke, grid, numbers, out)
    rows = {row["source"]: row for row in _csv_rows(out)}
    assert "'" + source in rows and source not in rows
    assert rows["Paper C"]["method"] == "'=evil"
    # A negative difference is a number, not text: it is left as it is.
    lsh = rows["'" + source]
    assert float(lsh["difference"]) == pytest.approx(float(lsh["reproduced"]) - 0.41, abs=1e-5)
    # The other outputs show the source as given.
    assert source in (out / "published-map.md").read_text()


def test_the_shipped_list_loads_and_every_row_says_where_and_how_it_was_read():
    frame = load_published()
    assert not frame.empty
    assert set(frame["kind"]) <= {"primary", "secondary"}
    for _, row in frame.iterrows():
        assert row["source"].strip() and row["checked"].strip(), "every shipped number names its source and how it was read"
        if row["kind"] == "secondary":
            # A secondary number says where it was read and what was read there.
            assert "http" in row["source"] or "/" in row["source"]
            assert "'" in row["checked"] or '"' in row["checked"], "the words read in the source are quoted"
    header = next(line for line in builtin_path().read_text().splitlines() if not line.startswith("#"))
    assert header == ",".join([*COLUMNS, "checked", "kind"])


def test_the_shipped_bihalf_number_is_secondary_and_under_the_released_cifar10_i_split():
    frame = load_published()
    bihalf = frame[(frame["method"] == "bihalf") & (frame["bits"] == 64)]
    assert len(bihalf) == 1
    row = bihalf.iloc[0]
    assert (row["dataset"], row["protocol"], row["metric"], row["kind"]) == ("cifar10", "bihalf-code-i", "map", "secondary")
    assert row["value"] == pytest.approx(0.595)
    assert "liyunqianggyn/Deep-Unsupervised-Image-Hashing/issues/5" in row["source"]
    assert "in paper it is 59.5%" in row["checked"]


@pytest.mark.parametrize(
    "header",
    ["method,dataset,protocol,metric,bits,value,source", "method,dataset,protocol,metric,bits,value,source,checked"],
)
def test_a_csv_of_the_older_format_loads_as_primary(invoke, grid, tmp_path, header):
    numbers = tmp_path / "old.csv"
    extra = ",read in Table 2" if header.endswith("checked") else ""
    numbers.write_text("# an older list\n" + header + "\n" + f"lsh,digits,standard,map,8,0.41,Paper B Table 2{extra}\n")
    frame = load_published(numbers)
    assert list(frame["kind"]) == ["primary"]
    out = tmp_path / "out"
    result = _report(invoke, grid, numbers, out)
    line = _printed_row(result, "lsh")
    assert "| 0.4100 |" in line and line.endswith("| Paper B Table 2 |")
    assert SECONDARY_MARK not in result.output and "secondary" not in result.output
    assert [row["kind"] for row in _csv_rows(out)] == ["primary"]
    assert SECONDARY_MARK not in (out / "report.html").read_text()


def test_an_empty_kind_is_primary_and_the_case_does_not_matter(tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text(
        "method,dataset,protocol,metric,bits,value,source,kind\n"
        "lsh,digits,standard,map,8,0.41,Paper B,\n"
        "itq,digits,standard,map,8,0.7,Survey S,Secondary\n"
    )
    assert list(load_published(numbers)["kind"]) == ["primary", "secondary"]


def test_an_unknown_kind_is_one_clear_message(invoke, grid, tmp_path):
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("method,dataset,protocol,metric,bits,value,source,kind\nlsh,digits,standard,map,8,0.41,Blog,tertiary\n")
    with pytest.raises(UserError, match="kind must be primary .* or secondary .*, got 'tertiary'") as error:
        load_published(numbers)
    assert str(numbers) in str(error.value)
    result = invoke("report", "--results", grid, "--out", tmp_path / "out", "--published", numbers, "--no-plots")
    assert result.exit_code != 0 and "tertiary" in result.output and "Traceback" not in result.output
