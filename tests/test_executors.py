"""Executors: worker processes, concurrent runners on one directory, Slurm through submitit.

Everything runs for real in separate processes; submitit's local executor stands in for a
Slurm cluster (the same pickled jobs, each in its own subprocess).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hashbench.errors import UserError
from hashbench.run.executors import THREAD_VARIABLES, SlurmExecutor, _import_submitit, fair_share

PLUGIN = Path(__file__).resolve().parent / "counting_plugin.py"


def _records(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("runs/*/run.json"))}


def _codes(results: Path, key: str):
    return np.load(results / "runs" / key / "codes.npz")


def test_fair_share_of_threads():
    assert fair_share(2, cpus=16) == 8
    assert fair_share(3, cpus=16) == 5
    assert fair_share(4, cpus=2) == 1  # never zero
    assert fair_share(1, cpus=7) == 7


@pytest.mark.slow  # worker processes start torch and scikit-learn afresh
def test_jobs_2_gives_the_same_records_as_one_job(invoke, tmp_path):
    grid = ("run", "--methods", "lsh,itq", "--bits", "8,16")
    one = invoke(*grid, "--results", tmp_path / "one")
    assert one.exit_code == 0, one.output
    two = invoke(*grid, "--results", tmp_path / "two", "--jobs", "2")
    assert two.exit_code == 0, two.output
    serial, parallel = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert sorted(serial) == sorted(parallel) and len(serial) == 4
    share = fair_share(2)
    for key, record in parallel.items():
        assert record["status"] == "ok"
        assert record["metrics"] == serial[key]["metrics"]
        assert record["split"]["hash"] == serial[key]["split"]["hash"]
        for name in ("query_codes", "database_codes"):
            assert np.array_equal(_codes(tmp_path / "two", key)[name], _codes(tmp_path / "one", key)[name])
        # Each worker ran with its share of the CPUs, set before numpy and torch loaded.
        execution = record["execution"]
        assert execution["executor"] == "local" and execution["jobs"] == 2
        assert execution["threads_per_job"] == share
        assert execution["pid"] != os.getpid()
        assert execution["threads"]["environment"] == {variable: str(share) for variable in THREAD_VARIABLES}
        assert execution["threads"]["torch"] == share == record["environment"]["torch_threads"]
        assert execution["threads"]["blas"] and set(execution["threads"]["blas"]) == {share}
        assert serial[key]["execution"] == {"executor": "in process"}
    # Resuming with workers does no work: every cell is done.
    again = invoke(*grid, "--results", tmp_path / "two", "--jobs", "2")
    assert again.output.count("done before") == 4


@pytest.mark.slow  # each cell gets a process of its own once a worker has died
def test_a_dying_worker_fails_its_own_cell_only(invoke, results):
    result = invoke("--plugin", PLUGIN, "run", "--methods", "dying,counting", "--bits", "8", "--results", results, "--jobs", "2")
    assert result.exit_code == 1, result.output
    records = {r["method"]: r for r in _records(results).values()}
    assert records["counting"]["status"] == "ok"
    assert records["dying"]["status"] == "failed"
    assert records["dying"]["error"].startswith("the worker process running this cell died")
    assert "1 of 2 runs failed" in result.output


def _runner(results: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hashbench", "--plugin", str(PLUGIN), "run", "--methods", "counting",
         "--bits", "4,6,8,10", "--seeds", "0,1", "--results", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )


@pytest.mark.slow  # worker processes start torch and scikit-learn afresh
def test_two_runners_at_once_run_each_cell_exactly_once(results, tmp_path):
    log = tmp_path / "fits.log"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {
        "HASHBENCH_TEST_FIT_LOG": str(log),
        "HASHBENCH_TEST_FIT_SLEEP": "0.3",
        "HASHBENCH_TEST_BARRIER": str(barrier),  # both runners are inside a fit before either goes on
        "HASHBENCH_TEST_PEERS": "2",
    }
    runners = [_runner(results, env), _runner(results, env)]
    outputs = [runner.communicate(timeout=300) for runner in runners]
    for runner, (_, stderr) in zip(runners, outputs, strict=True):
        assert runner.returncode == 0, stderr
    fits = [tuple(line.split()) for line in log.read_text().splitlines()]
    cells = {(bits, seed) for bits, seed, _ in fits}
    assert len(fits) == 8 == len(cells)  # 4 bits × 2 seeds, each fitted once
    assert len({pid for _, _, pid in fits}) == 2  # and both runners did some of them
    records = _records(results)
    assert len(records) == 8 and {r["status"] for r in records.values()} == {"ok"}
    # What one runner ran, the other reports as running elsewhere or done before.
    others = sum(stdout.count("running elsewhere") + stdout.count("done before") for stdout, _ in outputs)
    assert others == 8


@pytest.mark.slow  # worker processes start torch and scikit-learn afresh
def test_slurm_executor_through_submitit_local_runs_cells_in_subprocesses(invoke, results, monkeypatch):
    monkeypatch.setattr("hashbench.cli.run.SUBMITIT_CLUSTER", "local")
    result = invoke(
        "--plugin", PLUGIN, "run", "--methods", "counting,dying", "--bits", "8", "--results", results,
        "--executor", "slurm", "--partition", "debug", "--time-limit", "5", "--cpus-per-run", "1",
    )
    assert result.exit_code == 1, result.output
    records = {r["method"]: r for r in _records(results).values()}
    ok = records["counting"]
    assert ok["status"] == "ok"
    assert ok["execution"]["executor"] == "submitit-local"
    assert ok["execution"]["partition"] == "debug" and ok["execution"]["time_limit_min"] == 5
    assert ok["execution"]["pid"] != os.getpid()  # a job process, not this one
    # A job that dies leaves no record of its own; the runner records why, with the job's log.
    dead = records["dying"]
    assert dead["status"] == "failed"
    assert "job" in dead["error"] and "log" in dead["error"]
    assert (results / "slurm").is_dir()
    assert "1 of 2 runs failed" in result.output
    # Resubmitting skips the finished cell and retries the failed one only.
    again = invoke(
        "--plugin", PLUGIN, "run", "--methods", "counting", "--bits", "8", "--results", results,
        "--executor", "slurm", "--time-limit", "5",
    )
    assert again.exit_code == 0 and "done before" in again.output


def test_no_wait_submits_and_status_follows_the_jobs(invoke, results, monkeypatch):
    monkeypatch.setattr("hashbench.cli.run.SUBMITIT_CLUSTER", "local")
    grid = ("--methods", "counting", "--bits", "8", "--results", results)
    submitted = invoke("--plugin", PLUGIN, "run", *grid, "--executor", "slurm", "--time-limit", "5", "--no-wait")
    assert submitted.exit_code == 0, submitted.output
    assert "submitted as job" in submitted.output
    # The job writes its record, then releases the cell's lock: until both have happened,
    # status rightly says pending or running. Wait for that, however loaded the machine is.
    deadline = time.monotonic() + 300
    while True:
        status = invoke("--plugin", PLUGIN, "status", *grid)
        assert status.exit_code == 0, status.output
        counts = _status_counts(status.output)
        assert counts.get("failed", 0) == 0, status.output
        if counts.get("running", 0) == 0 and list(results.glob("runs/*/run.json")):
            break
        assert time.monotonic() < deadline, f"the submitted job never finished:\n{status.output}"
        time.sleep(0.5)
    assert counts["done"] == 1 and counts["pending"] == 0, status.output


def _status_counts(output: str) -> dict[str, int]:
    """The counts line of `hashbench status` (``ok``/``done`` both read as done)."""
    counts = {}
    for state, number in re.findall(r"\b(ok|done|failed|running|pending|stale|damaged|interrupted) (\d+)\b", output):
        counts["done" if state == "ok" else state] = int(number)
    return counts


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    from submitit.slurm import slurm

    # submitit refuses to build a Slurm executor where there is no srun; pretend there is.
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))

    executor = SlurmExecutor(
        folder=tmp_path, partition="gpu", gpus_per_run=1, time_limit=90, mem_gb=16, cpus_per_run=6, array_parallelism=3,
        account="lab", qos="normal",
    )
    parameters = executor.make()._executor.parameters
    script = slurm._make_sbatch_string(command="true", folder=tmp_path, map_count=10, **parameters)
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=90",
        "#SBATCH --mem=16GB",
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --array=0-9%3",
        "#SBATCH --account=lab",
        "#SBATCH --qos=normal",
        "export OMP_NUM_THREADS=6",  # the job's thread share, set before its Python starts
        "export OPENBLAS_NUM_THREADS=6",
    ):
        assert line in script


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a real Slurm is present")
def test_slurm_without_a_cluster_is_one_clear_line(invoke, results):
    result = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results, "--executor", "slurm")
    assert result.exit_code == 2, result.output
    assert 'Could not detect "srun"' in result.output and "--executor slurm" in result.output
    assert "Traceback" not in result.output
    assert not results.exists()  # refused before anything was written


def test_missing_submitit_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit → ImportError
    with pytest.raises(UserError, match=r"pip install 'hashbench\[slurm\]'"):
        _import_submitit()
