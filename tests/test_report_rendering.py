"""What a user sees of `hashbench report` and `hashbench run`, through the CLI: the README's
account of a cell, captions, bold, stale plots, the dataset header, the run summary's notes;
and the install path (CPU index, the licence field)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _invoke(*args):
    from hashbench.cli import cli

    result = CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("rendering") / "results"
    _invoke("run", "--methods", "lsh,itq,pcah", "--bits", "8,16", "--seeds", "0,1", "--results", results, "--device", "cpu")
    return results


def _report(results: Path, out: Path, *options) -> tuple[Path, str]:
    result = _invoke("report", "--results", results, "--out", out, *options)
    return out, result.output


def _readme_section(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index(start) : text.index(end, text.index(start))]


def test_the_readme_describes_the_cells_report_prints(results, tmp_path):
    out, printed = _report(results, tmp_path / "out", "--no-plots", "--compare", "itq,lsh")
    # What the report prints: an interval, a † legend, and the --compare lines.
    assert re.search(r"\d\.\d{4} ± \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", printed)
    assert "† not distinguishable from the column's best at 5%" in printed
    assert "itq − lsh (paired over queries; 95% bootstrap interval; sign-flip p-value)" in printed
    section = _readme_section("`hashbench report [--results DIR]", "## Experiment files")
    for words in ("95% interval", "†", "sign-flip", "--compare A,B", "bold", "prints the same", "ci_low",
                  "indistinguishable_from_best"):  # fmt: skip
        assert words in section, words
    assert "cells are mean ± std over\nseeds, the best of each column in bold" not in section


@pytest.mark.parametrize(("metric", "what"), [("peak_memory_mb", "peak resident memory"), ("timings.fit", "seconds spent in fit")])
def test_timings_and_memory_tables_leave_the_map_cutoff_out_and_say_what_they_are(results, tmp_path, metric, what):
    out, _ = _report(results, tmp_path / "out", "--no-plots", "--metric", metric)
    stem = metric.replace(".", "_")
    for suffix in ("md", "tex", "html"):
        text = (out / f"{stem}.{suffix}").read_text()
        assert "mAP@k" not in text and "k = 100" not in text, suffix
        assert what in text and "protocol standard" in text and "2 seeds per cell" in text, suffix
    assert "mAP@k" not in (out / "report.html").read_text()
    # The mAP table keeps its cut-off.
    out, _ = _report(results, tmp_path / "map", "--no-plots")
    assert "mAP@k with k = 100" in (out / "map.md").read_text()


def test_every_mean_printed_as_the_best_is_bold_in_every_format(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    # lsh 782.2 and itq 782.4 MB both print "782 ± 0"; pcah's 790 is not the best.
    memory = {"lsh": 782.2, "itq": 782.4, "pcah": 790.0}
    for path in copy.glob("runs/*/run.json"):
        record = json.loads(path.read_text())
        record["peak_memory_mb"] = memory[record["method"]]
        path.write_text(json.dumps(record))
    out, _ = _report(copy, tmp_path / "out", "--no-plots", "--metric", "peak_memory_mb")
    markdown = (out / "peak_memory_mb.md").read_text()
    for method, bold in (("lsh", True), ("itq", True), ("pcah", False)):
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
        cells = [cell.strip() for cell in line.strip("|").split("|")[1:]]
        shown = "**782 ± 0**" if bold else "790 ± 0"
        assert cells == [shown, shown], (method, line)
        tex = next(line for line in (out / "peak_memory_mb.tex").read_text().splitlines() if line.startswith(f"{method} &"))
        assert tex.count(r"\textbf{") == (2 if bold else 0), tex
    page = (out / "peak_memory_mb.html").read_text()
    assert page.count("<b>782 ± 0</b>") == 4 and "<b>790" not in page
    frame = pd.read_csv(out / "peak_memory_mb.csv")
    assert dict(zip(frame["method"], frame["best"], strict=False)) == {"lsh": True, "itq": True, "pcah": False}


def _plot_files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if path.suffix in (".png", ".pdf")} if folder.is_dir() else set()


def test_no_plots_removes_the_plots_an_earlier_report_wrote_and_nothing_else(results, tmp_path):
    out = tmp_path / "out"
    _report(results, out)
    plots = out / "plots"
    assert _plot_files(plots) == {f"{kind}-digits.{ext}" for kind in ("pr", "precision-at-k", "map-vs-bits") for ext in ("png", "pdf")}
    (plots / "my-notes.txt").write_text("mine")
    (plots / "pr-sketch.png").write_bytes(b"mine")  # named like a plot, not written by hashbench
    # Another metric: the map-vs-bits plot is no longer the report's, and goes.
    _report(results, out, "--metric", "precision_at_k.10")
    assert "map-vs-bits-digits.png" not in _plot_files(plots) and "precision-at-k.10-vs-bits-digits.png" in _plot_files(plots)
    _, printed = _report(results, out, "--no-plots")
    assert "removed the 6 plot file(s) an earlier report wrote" in printed
    assert _plot_files(plots) == {"pr-sketch.png"} and (plots / "my-notes.txt").read_text() == "mine"
    assert "data:image/png" not in (out / "report.html").read_text()
    # A folder written before the list of plot files existed: its PNG/PDF pairs go, a lone file stays.
    _report(results, out)
    (plots / ".hashbench-plots").unlink()
    _report(results, out, "--no-plots")
    assert _plot_files(plots) == {"pr-sketch.png"}


def test_a_dataset_name_heads_all_of_its_bits_columns(results, tmp_path):
    out, _ = _report(results, tmp_path / "out", "--no-plots")
    tex = (out / "map.tex").read_text()
    assert r"\multicolumn{2}{c}{digits}" in tex and r"\cmidrule(lr){2-3}" in tex and "Method & 8 bits & 16 bits" in tex
    header = next(line for line in (out / "map.md").read_text().splitlines() if line.startswith("| method |"))
    assert header == "| method | digits 8 bits | digits 16 bits |"
    page = (out / "report.html").read_text()
    assert re.search(r'<th class="dataset" colspan="2">digits</th>', page)
    style = re.search(r"<style>(.*?)</style>", page, flags=re.DOTALL).group(1)
    # Centred over its columns, not pushed right over the last one; the bits headers stay right-aligned.
    assert re.search(r"th\.dataset \{[^}]*text-align: center", style)
    assert "th:first-child, table.hashbench td:first-child" not in style  # that rule left-aligned "8 bits"
    assert re.findall(r'<th class="bits">(\d+) bits</th>', page)[:2] == ["8", "16"]


def test_the_run_summary_notes_are_whole_left_aligned_lines_below_the_table(tmp_path):
    result = _invoke("run", "--methods", "greedyhash", "--bits", "8", "--results", tmp_path / "results",
                     "--set", "greedyhash.epochs=1", "--device", "cpu")  # fmt: skip
    lines = result.output.splitlines()
    row = max(index for index, line in enumerate(lines) if line.lstrip().startswith("greedyhash "))
    notes = [line for line in lines[row + 1 :] if line.strip()]
    assert notes == [
        "tiny profile: CPU settings for small images, not the papers';",
        "compare with published numbers only under profile paper.",
    ]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_cpu_install_is_one_command_and_the_default_path_is_unchanged(tmp_path):
    def dry_run(target: str, *variables: str) -> list[str]:
        done = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}", *variables],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return [line for line in done.stdout.splitlines() if "pip install" in line and "torch" in line]

    (cpu,) = dry_run("venv-cpu")
    assert cpu.split()[-2:] == ["--index-url", CPU_INDEX] and "torch==" in cpu
    (default,) = dry_run("test")  # what CI runs: no index of its own
    assert "--index-url" not in default and "torch==" in default
    quick_start = _readme_section("## Quick start", "## Running a benchmark")
    assert "make venv-cpu" in quick_start and CPU_INDEX in quick_start
    assert "about 3 GB" not in quick_start and "6.3 GB" in quick_start


def test_the_license_is_an_spdx_expression_setuptools_reads_without_warning():
    import tomllib

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first to read an SPDX string
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distribution = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message)[:80] for w in caught]
    assert distribution.metadata.license_expression == "MIT"
