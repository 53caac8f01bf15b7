"""`hashbench run` / `report` / `list` end to end, and every bad input of the run command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/run.json"))]


def test_list_shows_methods_and_datasets(invoke):
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("lsh", "pcah", "itq", "sh", "digits"):
        assert name in result.output
    parameters = invoke("list", "itq")  # one method's parameters, with their defaults
    assert parameters.exit_code == 0 and "iterations" in parameters.output and "50" in parameters.output


def test_run_then_report_shows_itq_above_lsh(invoke, results, tmp_path):
    result = invoke("run", "--methods", "lsh,pcah,itq,sh", "--bits", "16,32,64", "--results", results)
    assert result.exit_code == 0, result.output
    assert len(_records(results)) == 12
    again = invoke("run", "--methods", "lsh,pcah,itq,sh", "--bits", "16,32,64", "--results", results)
    assert again.output.count("done before") == 12
    out = tmp_path / "report"
    report = invoke("report", "--results", results, "--out", out)
    assert report.exit_code == 0, report.output
    for name in ("map.md", "map.tex", "map.html", "map.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0
    maps = {(r["method"], r["bits"]): r["metrics"]["map"] for r in _records(results)}
    for bits in (16, 32, 64):
        assert maps["itq", bits] > maps["lsh", bits]
    row = next(line for line in report.output.splitlines() if line.startswith("| itq"))
    assert f"{maps['itq', 64]:.4f}" in row


def test_seeds_and_config_file(invoke, results, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["itq"]\nbits = [8]\nseeds = [0, 1]\n[params.itq]\niterations = 5\n'
    )
    result = invoke("run", "--config", config, "--results", results, "--bits", "12")
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert {r["bits"] for r in records} == {12}  # the option overrides the file
    assert {r["params"]["iterations"] for r in records} == {5}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "itqq"], "unknown method 'itqq'; did you mean itq"),
        (["--methods", "itq", "--datasets", "cifar"], "unknown dataset 'cifar'"),
        (["--methods", "itq", "--protocol", "nope"], "dataset digits has no protocol 'nope'; its protocols: standard"),
        (["--methods", "itq", "--bits", "0"], "0 is below the minimum of 1"),
        (["--methods", "itq", "--bits", "16,x"], "'x' is not an integer"),
        (["--methods", "itq", "--bits", "16,,32"], "no empty items"),
        (["--methods", "itq", "--set", "itq.iters=3"], "unknown parameter itq.iters; itq has: iterations"),
        (["--methods", "itq", "--set", "itq.iterations=many"], "itq.iterations: expected an integer, got 'many'"),
        (["--methods", "itq", "--set", "itq.iterations=-1"], "itq.iterations must be >= 0"),
        (["--methods", "itq", "--set", "lsh.centre=true"], "parameters given for 'lsh', which is not among the methods"),
        (["--methods", "itq", "--set", "itqiterations"], "expected METHOD.PARAM=VALUE"),
        (["--methods", "lsh", "--set", "lsh.centre=maybe"], "lsh.centre: expected true or false"),
        (["--methods", "itq", "--bits", "65"], "itq cannot produce 65 bits from 64-dimensional input"),
        (["--methods", "itq", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        ([], "no methods given"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(invoke, results, args, message):
    result = invoke("run", *args, "--results", results)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not results.exists()


def test_config_that_does_not_parse_names_file_and_line(invoke, results, tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text('methods = ["itq"]\nbits = [16, 32\n')
    result = invoke("run", "--config", config, "--results", results)
    assert result.exit_code == 2
    assert str(config) in result.output and "line 2" in result.output
    config.write_text('methods = ["itq"]\nbitz = [16]\n')
    result = invoke("run", "--config", config, "--results", results)
    assert result.exit_code == 2 and "bitz: unknown setting" in result.output
    config.write_text('methods = ["itq"]\nbits = ["16"]\n')
    result = invoke("run", "--config", config, "--results", results)
    assert result.exit_code == 2 and "bits: expected an integer" in result.output
    assert not results.exists()


def test_unwritable_results_directory(invoke, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke("run", "--methods", "lsh", "--bits", "8", "--results", blocker / "results")
    assert result.exit_code == 2
    assert "cannot be created" in result.output and "--results" in result.output


def test_report_skips_a_corrupted_record_and_names_it(invoke, results, tmp_path):
    assert invoke("run", "--methods", "lsh,itq", "--bits", "8", "--results", results).exit_code == 0
    victim = next(results.glob("runs/lsh-*/run.json"))
    victim.write_text('{"method": "lsh", "stat')
    result = invoke("report", "--results", results, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"skipping {victim}" in result.output
    assert "| itq" in result.output and "| lsh" not in result.output
    # The corrupted record is redone by the next run, not trusted.
    assert "ok" in invoke("run", "--methods", "lsh", "--bits", "8", "--results", results).output
    assert json.loads(victim.read_text())["status"] == "ok"


def test_report_errors(invoke, tmp_path):
    result = invoke("report", "--results", tmp_path / "missing")
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    result = invoke("report", "--results", tmp_path / "empty")
    assert result.exit_code == 2 and "no run records" in result.output


def test_console_script_as_subprocess(results):
    process = subprocess.run(
        [sys.executable, "-m", "hashbench", "run", "--methods", "pcah", "--bits", "4", "--results", str(results)],
        capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert "pcah" in process.stdout
    process = subprocess.run(
        [sys.executable, "-m", "hashbench", "run", "--methods", "pcah", "--bits", "0"], capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") <= 2 and "Traceback" not in process.stderr
