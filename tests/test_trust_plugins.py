"""A plugin cannot corrupt the cells that follow it.

Each test runs a misbehaving method (tests/trust_plugins.py) through `hashbench run` as a
user would, then checks what the cells after it computed and where they were recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parent / "trust_plugins.py"


def _records(results: Path) -> dict[tuple[str, int], dict]:
    return {(r["method"], r["bits"]): r for r in (json.loads(p.read_text()) for p in results.glob("runs/*/run.json"))}


def _hashbench(cwd: Path, *args) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("HASHBENCH_RESULTS", "HASHBENCH_DATA")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a loaded plugin leaves no __pycache__ beside it
    return subprocess.run(
        [sys.executable, "-m", "hashbench", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_method_writing_into_its_arrays_changes_nothing_for_the_cells_after_it(invoke, tmp_path, jobs):
    grid = ("--bits", "8,16")
    alone = invoke("run", "--methods", "itq,lsh", *grid, "--results", tmp_path / "alone")
    assert alone.exit_code == 0, alone.output
    after = invoke("--plugin", PLUGIN, "run", "--methods", "scribbler,itq,lsh", *grid, "--results", tmp_path / "after", "--jobs", jobs)
    assert after.exit_code == 0, after.output
    expected, records = _records(tmp_path / "alone"), _records(tmp_path / "after")
    assert {record["status"] for record in records.values()} == {"ok"}
    for cell, record in expected.items():
        assert records[cell]["metrics"] == record["metrics"], cell
        assert records[cell]["split"]["hash"] == record["split"]["hash"]
    if jobs == "2":  # a later cell ran in a worker that had run the scribbler (and kept its data)
        scribbled = {records["scribbler", bits]["execution"]["pid"] for bits in (8, 16)}
        assert scribbled & {record["execution"]["pid"] for cell, record in records.items() if cell in expected}
    # A rerun trusts these records: they are the right ones.
    again = invoke("--plugin", PLUGIN, "run", "--methods", "scribbler,itq,lsh", *grid, "--results", tmp_path / "after")
    assert again.output.count("done before") == 6


def test_a_method_changing_the_working_directory_leaves_the_grid_where_it_was(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--plugin", PLUGIN, "run", "--methods", "wanderer,itq,lsh", "--bits", "16", "--results", "results")
    assert result.exit_code == 0, result.output
    assert Path.cwd() == tmp_path  # restored after the cell
    records = _records(tmp_path / "results")
    assert sorted(records) == [("itq", 16), ("lsh", 16), ("wanderer", 16)]
    assert {record["status"] for record in records.values()} == {"ok"}
    assert records["itq", 16]["metrics"]["map"] > records["lsh", 16]["metrics"]["map"]
    assert list((tmp_path / "results" / "splits").glob("*.json"))
    assert not any((tmp_path / "elsewhere").iterdir())  # no record, split or lock went there
    report = invoke("report", "--results", "results", "--out", "report")
    assert report.exit_code == 0, report.output
    assert "| wanderer" in report.output and "| itq" in report.output and "| lsh" in report.output


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_method_calling_os_exit_fails_its_cell_and_the_grid_goes_on(tmp_path, jobs):
    process = _hashbench(
        tmp_path, "--plugin", PLUGIN, "run", "--methods", "quitter,itq,lsh", "--bits", "16", "--results", "results", "--jobs", jobs
    )
    assert process.returncode == 1, process.stdout + process.stderr
    assert "hashbench run" in process.stdout  # the summary table
    records = _records(tmp_path / "results")
    assert records["quitter", 16]["status"] == "failed"
    assert "called os._exit(0)" in records["quitter", 16]["error"]
    assert records["itq", 16]["status"] == records["lsh", 16]["status"] == "ok"
    assert "failed: quitter digits 16b seed 0" in process.stderr and "called os._exit(0)" in process.stderr
    assert "1 of 3 runs failed" in process.stderr


BAD_PLUGIN = '''
from hashbench.data import HashingDataset
from hashbench.method import HashingMethod
from hashbench.registry import register_dataset, register_method

if {kind!r} == "method":
    @register_method
    class Badly(HashingMethod):
        name = {name!r}

        def fit(self, train, val=None):
            pass

        def encode(self, split):
            return split.features[:, : self.bits] > 0.5
else:
    @register_dataset
    class Badly(HashingDataset):
        name = {name!r}

        def load(self, root, **options):
            raise AssertionError("never loaded")
'''


def _tree(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize(("kind", "name"), [("method", "my/method"), ("method", "../../../escaped"), ("dataset", "../data")])
def test_a_plugin_name_that_is_no_file_name_is_refused_in_one_line(tmp_path, kind, name):
    plugin = tmp_path / "badly_named.py"
    plugin.write_text(BAD_PLUGIN.format(kind=kind, name=name))
    work = tmp_path / "a" / "b" / "c" / "d"
    work.mkdir(parents=True)
    before = _tree(tmp_path)
    grid = ("--methods", name) if kind == "method" else ("--methods", "lsh", "--datasets", name)
    process = _hashbench(work, "--plugin", plugin, "run", *grid, "--bits", "8", "--results", "results")
    assert process.returncode == 2, process.stdout + process.stderr
    error = process.stderr.strip()
    assert "\n" not in error and "Traceback" not in error
    assert f"{kind} name {name!r}" in error and "Badly" in error  # names the plugin
    assert "letters, digits" in error
    assert _tree(tmp_path) == before  # nothing written, inside the results folder or out of it


def test_plugin_names_of_letters_digits_dots_dashes_and_underscores_are_allowed(invoke, tmp_path):
    plugin = tmp_path / "well_named.py"
    plugin.write_text(BAD_PLUGIN.format(kind="method", name="my_method.v2-b"))
    result = invoke("--plugin", plugin, "run", "--methods", "my_method.v2-b,lsh", "--bits", "8", "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    assert sorted(_records(tmp_path / "results")) == [("lsh", 8), ("my_method.v2-b", 8)]
