"""Worker processes exit when the runner that started them is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parent / "orphan_plugin.py"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow  # two spawned workers import torch and scikit-learn afresh
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers' parents through /proc")
def test_workers_exit_when_the_runner_is_killed(tmp_path):
    markers = tmp_path / "fitting"
    markers.mkdir()
    env = {**os.environ, "HASHBENCH_TEST_MARKER": str(markers), "HASHBENCH_TEST_SLEEP": "600"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "hashbench", "--plugin", str(PLUGIN), "run", "--methods", "pidsleeper",
         "--bits", "4,6", "--results", str(tmp_path / "results"), "--jobs", "2", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    workers: list[int] = []
    try:
        _wait_until(lambda: len(list(markers.iterdir())) == 2 or runner.poll() is not None, 240, "the workers never started")
        assert runner.poll() is None, "the runner ended before its workers fitted"
        workers = [int(path.name) for path in markers.iterdir()]
        assert all(_parent_of(pid) == runner.pid for pid in workers)  # two workers of this runner
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        _wait_until(lambda: not any(_alive(pid) for pid in workers), 30, "the workers outlived their runner")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
        for pid in workers:  # only if the test failed: never leave them behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_exit_with_parent_exits_once_reparented(tmp_path):
    """The watch itself, in a process whose 'parent' is a pid that is not its parent."""
    code = (
        "import os, sys, time\n"
        "from hashbench.run.executors import exit_with_parent\n"
        "exit_with_parent(int(sys.argv[1]), poll_seconds=0.05)\n"
        "time.sleep(60)\n"
        "sys.exit(0)\n"
    )
    start = time.monotonic()
    finished = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)], timeout=60)
    assert finished.returncode == 1 and time.monotonic() - start < 30
    # While the parent is there the watch stays quiet.
    quiet = subprocess.run([sys.executable, "-c", code.replace("time.sleep(60)", "time.sleep(0.5)"), str(os.getpid())], timeout=60)
    assert quiet.returncode == 0
