"""How long `hashbench run` takes to stop after Ctrl-C, in process and with --jobs 2.

Ctrl-C is sent as a terminal sends it, to the whole process group, once a cell is training
(the test plugin's ``slow`` method sleeps in ``fit``). Prints, per trial, the exit status,
the seconds from the signal to the runner's exit and its last line.

    .venv/bin/python benchmarks/interrupt_latency.py [TRIALS]
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins.py"


def trial(jobs: str, folder: Path) -> tuple[int, float, str]:
    marker = folder / "fitting"
    env = {**os.environ, "HASHBENCH_TEST_MARKER": str(marker), "HASHBENCH_TEST_SLEEP": "600"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "hashbench", "--plugin", str(PLUGIN), "run", "--methods", "slow",
         "--bits", "4,6,8,10,12", "--results", str(folder / "results"), "--jobs", jobs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    while not marker.exists():
        if runner.poll() is not None:
            raise SystemExit(f"the runner ended before a cell started: {runner.communicate()[1]}")
        time.sleep(0.05)
    time.sleep(1.0)  # every worker is up
    os.killpg(runner.pid, signal.SIGINT)
    start = time.monotonic()
    _, err = runner.communicate(timeout=120)
    return runner.returncode, time.monotonic() - start, err.strip().splitlines()[-1]


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    for jobs in ("1", "2"):
        for index in range(trials):
            with tempfile.TemporaryDirectory() as folder:
                code, seconds, last = trial(jobs, Path(folder))
            print(f"--jobs {jobs} trial {index}: exit {code} after {seconds:.2f} s: {last}")


if __name__ == "__main__":
    main()
