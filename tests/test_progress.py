"""What a log gets: plain, time-stamped lines per cell and while training; nothing with --quiet."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from hashbench.run.runner import GridSpec, run_grid
from hashbench.run.status import directory_status


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # stderr is a pipe here, as in `hashbench run ... > log 2>&1`: not a terminal.
    environment = {key: value for key, value in os.environ.items() if not key.startswith("HASHBENCH_PROGRESS")}
    return subprocess.run(
        [sys.executable, "-m", "hashbench", "run", *args],
        capture_output=True, text=True, timeout=300, env={**environment, **(env or {})},
    )


def test_a_log_gets_a_line_per_cell_and_per_training_interval(tmp_path):
    results = tmp_path / "results"
    done = _run(
        "--methods", "lsh,greedyhash", "--bits", "8", "--results", str(results), "--set", "greedyhash.epochs=30",
        env={"HASHBENCH_PROGRESS_SECONDS": "0"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    stamp = r"^\[\d\d:\d\d:\d\d\] "
    assert re.match(stamp + r"start 1/2: lsh digits 8b seed 0$", lines[0])
    assert any(re.match(stamp + r"ok: mAP@100 0\.\d{4}, \d+\.\d s \(1/2\): lsh digits 8b seed 0$", line) for line in lines)
    training = [line for line in lines if "greedyhash epoch" in line]
    assert training and re.search(r"step \d+/\d+ · \d+:\d\d elapsed", training[0])
    assert "step 150/150" in training[-1]  # 30 epochs of 5 batches: the last step is always shown
    assert "\x1b[" not in done.stderr  # no terminal control codes in a log

    again = _run("--methods", "lsh,greedyhash", "--bits", "8", "--results", str(results), "--set", "greedyhash.epochs=30")
    assert again.returncode == 0 and again.stderr.count("already done") == 2


def test_quiet_prints_only_the_summary(tmp_path):
    done = _run("--methods", "lsh", "--bits", "8", "--results", str(tmp_path / "results"), "--quiet")
    assert done.returncode == 0 and done.stderr == ""
    assert "lsh" in done.stdout and "mAP@100" in done.stdout


def test_status_orders_bits_as_numbers(tmp_path):
    results = tmp_path / "results"
    run_grid(GridSpec(methods=["lsh"], bits=[24, 8, 128], results=results))
    statuses, _ = directory_status(results)
    assert [status.bits for status in statuses] == [8, 24, 128]
