"""A process SIGKILLed in the middle of a large atomic write leaves the old file whole.

A child process rewrites a real run record through ``hashbench.storage.atomic`` with tens of
megabytes of padding; as soon as the write has visibly started (its temporary file exists,
or the record itself changed), the test kills it with SIGKILL: no Python cleanup runs. So
that a slow test process cannot miss the moment on a loaded machine, the child pauses
before it syncs the written data (a profiling hook that only watches for ``os.fsync``; the
code under test is not replaced): the kill lands during the data write or, at the latest,
between the write and the rename. The record must still be the old one, byte for byte, and
whatever the write left behind must not be taken for data: status, report and a rerun see
exactly the one finished run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashbench.run.runner import GridSpec, run_grid
from hashbench.storage.store import LOCK_NAME

PADDING = 64 * 2**20  # characters: writing them takes a while

CHILD = """
import json, os, sys, time
from pathlib import Path
from hashbench.storage import atomic


def pause_before_sync(frame, event, function):
    if event == "c_call" and function is os.fsync:
        time.sleep(3600)


target = Path(sys.argv[1])
record = json.loads(target.read_text())
record["padding"] = "x" * int(sys.argv[2])
print("writing", flush=True)
sys.setprofile(pause_before_sync)
atomic.write_json(target, record)
sys.setprofile(None)
print("written", flush=True)
"""


def _leftovers(folder: Path) -> list[Path]:
    """The dot-files a write left (the run's lock file aside)."""
    return [path for path in folder.iterdir() if path.name.startswith(".") and path.name != LOCK_NAME]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_a_large_write_leaves_the_old_record(tmp_path, invoke):
    results = tmp_path / "results"
    (outcome,) = run_grid(GridSpec(methods=["lsh"], bits=[8], results=results, device="cpu"))
    assert outcome.status == "ok"
    (record_path,) = results.glob("runs/*/run.json")
    old = record_path.read_bytes()
    old_stat = record_path.stat()

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(record_path), str(PADDING)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()
        deadline = time.monotonic() + 300
        while True:
            current = record_path.stat()
            started = _leftovers(record_path.parent) or (current.st_size, current.st_mtime_ns) != (
                old_stat.st_size, old_stat.st_mtime_ns
            )
            if started or child.poll() is not None:
                break
            assert time.monotonic() < deadline, "the write never started"
            time.sleep(0.001)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL, "the child finished its write before it could be killed"
    assert "written" not in child.stdout.read()

    # The old record, whole; what the killed write left is a dot-file beside it.
    assert record_path.read_bytes() == old
    assert json.loads(old)["status"] == "ok"
    leftovers = _leftovers(record_path.parent)
    assert leftovers and all(path.name.endswith(".tmp") for path in leftovers), leftovers
    assert all(path.stat().st_size <= PADDING + len(old) + 64 for path in leftovers)

    # Nothing reads the leftover as a run: one finished run, reported and not redone.
    status = invoke("status", "--results", results)
    assert status.exit_code == 0, status.output
    counts = dict(re.findall(r"\b(ok|done|failed|running|pending|stale|damaged|interrupted) (\d+)\b", status.output))
    done = counts.pop("ok", None) or counts.pop("done", None)
    assert done == "1", status.output
    assert set(counts.values()) <= {"0"}, status.output
    again = invoke("run", "--methods", "lsh", "--bits", "8", "--results", results, "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert record_path.read_bytes() == old  # done before: not rewritten
    report = invoke("report", "--results", results, "--out", tmp_path / "report", "--no-plots")
    assert report.exit_code == 0, report.output
    rows = [line for line in report.output.splitlines() if line.startswith("| lsh")]
    assert len(rows) == 1, report.output
