"""Ctrl-C, cell time limits and the heartbeat: a grid never hangs and never runs silently.

The Ctrl-C tests send SIGINT to a real process group, as a terminal does: the runner and
its spawned workers all get it at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashbench.errors import UserError
from hashbench.run.config import load_config
from hashbench.run.executors import SlurmExecutor, _import_submitit

PLUGIN = Path(__file__).resolve().parent / "plugins.py"


def _records(results: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(results.glob("runs/*/run.json"))]


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (zombies of this test's own child aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _start(results: Path, marker: Path, *extra: str, sleep: str = "600") -> subprocess.Popen:
    env = {**os.environ, "HASHBENCH_TEST_MARKER": str(marker), "HASHBENCH_TEST_SLEEP": sleep}
    return subprocess.Popen(
        [sys.executable, "-m", "hashbench", "--plugin", str(PLUGIN), "run", "--methods", "slow",
         "--bits", "4,6,8,10,12", "--results", str(results), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip


def _interrupt_when_fitting(runner: subprocess.Popen, marker: Path) -> tuple[str, str, float]:
    """Ctrl-C to the whole group once a cell is fitting; returns stdout, stderr and the
    seconds from the signal to the runner's exit."""
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "no cell started fitting"
        time.sleep(0.1)
    time.sleep(1.0)  # the other worker is up too
    os.killpg(runner.pid, signal.SIGINT)
    start = time.monotonic()
    try:
        out, err = runner.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.communicate()
        pytest.fail("the runner hung after Ctrl-C")
    return out, err, time.monotonic() - start


@pytest.mark.slow  # two spawned workers import torch and scikit-learn afresh
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the process group through /proc")
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_stops_the_grid_at_once_and_the_next_run_goes_on(tmp_path, jobs):
    results, marker = tmp_path / "results", tmp_path / "fitting"
    runner = _start(results, marker, "--jobs", jobs)
    try:
        out, err, seconds = _interrupt_when_fitting(runner, marker)
        assert seconds < 15, f"took {seconds:.1f} s to stop"
        assert runner.returncode == 130, err
        assert "Traceback" not in err and "Traceback" not in out
        (last,) = [line for line in err.splitlines() if line.startswith("interrupted")]
        running = int(jobs)
        assert last == (
            f"interrupted: 0 of 5 cells finished, {running} stopped midway (resumable), {5 - running} not started; "
            "run the same command again to go on"
        )
        assert err.strip().splitlines()[-1] == last  # the last word, after no other message
        time.sleep(2)  # nothing of the group is left to start a queued cell later
        assert not _group_alive(runner.pid)
        assert _records(results) == []  # no queued cell started after the interrupt
        status = subprocess.run(
            [sys.executable, "-m", "hashbench", "--plugin", str(PLUGIN), "status", "--methods", "slow",
             "--bits", "4,6,8,10,12", "--results", str(results)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        # Nothing holds a cell: all are to do again (a deep method's show `interrupted`, with its epoch).
        assert "ok 0 · failed 0 · running 0 · pending 5" in status.stdout, status.stdout
    finally:
        if runner.poll() is None or _group_alive(runner.pid):
            os.killpg(runner.pid, signal.SIGKILL)
    # The same command goes on: every cell is done, the stopped ones included.
    again = _start(results, tmp_path / "again", "--jobs", jobs, sleep="0")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert sorted(record["status"] for record in _records(results)) == ["ok"] * 5


@pytest.mark.slow  # a spawned worker imports torch afresh
def test_cell_timeout_stops_a_silent_cell_and_records_why(invoke, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHBENCH_TEST_SLEEP", "600")
    results = tmp_path / "results"
    start = time.monotonic()
    result = invoke("--plugin", PLUGIN, "run", "--methods", "slow,lsh", "--bits", "8", "--results", results, "--cell-timeout", "3")
    assert time.monotonic() - start < 120
    assert result.exit_code == 1, result.output
    records = {record["method"]: record for record in _records(results)}
    assert records["lsh"]["status"] == "ok"  # the limit stops the silent cell, not the grid
    assert records["slow"]["status"] == "failed"
    assert records["slow"]["error"].startswith("stopped after the cell time limit of 3 s (--cell-timeout")
    assert records["slow"]["execution"]["cell_timeout_s"] == 3.0
    assert "1 of 2 runs failed" in result.output


@pytest.mark.slow  # a spawned worker imports torch afresh
def test_heartbeat_names_the_silent_cell_in_a_log(invoke, tmp_path, monkeypatch):
    monkeypatch.setenv("HASHBENCH_TEST_SLEEP", "4")
    monkeypatch.setenv("HASHBENCH_HEARTBEAT_SECONDS", "1")
    result = invoke("--plugin", PLUGIN, "run", "--methods", "slow", "--bits", "8", "--results", tmp_path / "results")
    assert result.exit_code == 0, result.output
    beats = [line for line in result.output.splitlines() if "still running: slow" in line]
    assert beats and "nothing reported for 0:0" in beats[0]


def test_cell_timeout_in_an_experiment_file(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["lsh"]\ncell_timeout = 90\n')
    assert load_config(config)["cell_timeout"] == 90.0
    for bad in ("0", "-5", "nan", "1e30", '"soon"'):
        config.write_text(f'methods = ["lsh"]\ncell_timeout = {bad}\n')
        with pytest.raises(UserError, match="cell_timeout"):
            load_config(config)


def test_cell_timeout_option_is_checked_before_anything_runs(invoke, tmp_path):
    result = invoke("run", "--methods", "lsh", "--results", tmp_path / "results", "--cell-timeout", "0")
    assert result.exit_code == 2 and "--cell-timeout" in result.output
    assert not (tmp_path / "results").exists()


def test_slurm_time_limit_is_the_cell_timeout_rounded_up_to_minutes(tmp_path):
    pytest.importorskip("submitit")
    _import_submitit()
    executor = SlurmExecutor(folder=tmp_path, cluster="local", time_limit=60, cell_timeout=61)
    assert executor.parameters()["timeout_min"] == 2
    assert executor.describe()["cell_timeout_s"] == 61
    longer = SlurmExecutor(folder=tmp_path, cluster="local", time_limit=60, cell_timeout=7200)
    assert longer.parameters()["timeout_min"] == 60  # --time-limit is the ceiling
