"""`hashbench status`: ok, running (lock held), failed with the reason, pending."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashbench.run.runner import GridSpec
from hashbench.run.status import counts, directory_status, grid_status

LEAD_PLUGINS = Path(__file__).resolve().parent / "plugins.py"


@pytest.fixture
def planted(invoke, results):
    """lsh ok, exploding failed (a planted failure); pcah never run."""
    result = invoke("--plugin", LEAD_PLUGINS, "run", "--methods", "exploding,lsh", "--bits", "8", "--results", results)
    assert result.exit_code == 1, result.output
    return results


def test_status_reflects_a_planted_failure(invoke, planted):
    statuses = {s.method: s for s in grid_status(GridSpec(methods=["exploding", "lsh", "pcah"], bits=[8], results=planted))}
    assert statuses["lsh"].state == "ok"
    assert statuses["exploding"].state == "failed"
    assert statuses["exploding"].reason == "RuntimeError: this method always fails"
    assert statuses["pcah"].state == "pending"
    result = invoke("--plugin", LEAD_PLUGINS, "status", "--methods", "exploding,lsh,pcah", "--bits", "8", "--results", planted)
    assert result.exit_code == 0, result.output
    assert "RuntimeError: this method always fails" in result.output
    assert "ok 1 · failed 1 · running 0 · pending 1  (of 3)" in result.output
    only = invoke("--plugin", LEAD_PLUGINS, "status", "--methods", "exploding,lsh,pcah", "--bits", "8", "--results", planted, "--only", "failed")
    assert "exploding" in only.output and "│ lsh" not in only.output and "pcah" not in only.output
    assert "(of 3)" in only.output  # the counts still cover the whole grid


def test_without_a_grid_status_lists_the_recorded_runs(invoke, planted):
    statuses, warnings = directory_status(planted)
    assert warnings == []
    assert sorted((s.method, s.state) for s in statuses) == [("exploding", "failed"), ("lsh", "ok")]
    result = invoke("status", "--results", planted)
    assert result.exit_code == 0, result.output
    assert "ok 1 · failed 1 · running 0 · pending 0  (of 2)" in result.output


def test_a_held_lock_shows_as_running_and_status_writes_nothing(invoke, results, tmp_path):
    spec = GridSpec(methods=["lsh", "itq"], bits=[8], results=results)
    assert {state: n for state, n in counts(grid_status(spec)).items() if n} == {"pending": 2}
    assert not results.exists()  # probing created nothing
    (cell,) = [s for s in grid_status(spec) if s.method == "itq"]
    lock_path = results / "runs" / cell.key / ".lock"
    lock_path.parent.mkdir(parents=True)
    held = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
         "pathlib.Path(sys.argv[2]).write_text('held'); time.sleep(120)",
         str(lock_path), str(held)],
    )
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert time.monotonic() < deadline and holder.poll() is None, "the holder never took the lock"
            time.sleep(0.05)
        states = {s.method: s.state for s in grid_status(spec)}
        assert states == {"lsh": "pending", "itq": "running"}
        result = invoke("status", "--methods", "lsh,itq", "--bits", "8", "--results", results)
        assert "lock held by a runner" in result.output and "running 1" in result.output
        # A runner meanwhile leaves that cell to its holder and does the other.
        run = invoke("run", "--methods", "lsh,itq", "--bits", "8", "--results", results)
        assert "running elsewhere" in run.output
        assert {s.method: s.state for s in grid_status(spec)} == {"lsh": "ok", "itq": "running"}
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The holder died without a record: the cell is pending again, not failed.
    assert {s.method: s.state for s in grid_status(spec)} == {"lsh": "ok", "itq": "pending"}


def test_status_errors(invoke, tmp_path):
    result = invoke("status", "--results", tmp_path / "missing")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke("status", "--methods", "lshh", "--results", tmp_path)
    assert result.exit_code == 2 and "unknown method 'lshh'" in result.output
