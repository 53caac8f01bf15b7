"""Start-up time of the command line: wall seconds from process start to exit.

Each command runs as a fresh process (as a user types it), ``--repeat`` times; the median is
printed beside the target and beside a bare ``python -c pass`` measured in the same run (the
floor any command pays). ``status`` reads a results directory of a few real runs made first.

    python benchmarks/bench_cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {
    "--help": 1.0,
    "list": 1.0,
    "status --results RESULTS": 1.5,
    "report --help": 1.5,
}


def _time(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "hashbench"]
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results"
        subprocess.run(
            [*cli, "run", "--methods", "lsh,itq", "--bits", "8,16", "--results", str(results), "--quiet"],
            check=True, stdout=subprocess.DEVNULL, env={**os.environ, "HASHBENCH_PROGRESS": "quiet"},
        )
        floor = _time([sys.executable, "-c", "pass"], args.repeat)
        print(f"machine: {os.cpu_count()} cores; median of {args.repeat} runs; python -c pass: {floor:.3f} s")
        print(f"{'command':<28} {'seconds':>8} {'target':>7} {'minus python':>13}  met")
        for command, target in TARGETS.items():
            words = [word if word != "RESULTS" else str(results) for word in command.split()]
            seconds = _time([*cli, *words], args.repeat)
            print(f"hashbench {command:<18} {seconds:8.3f} {target:7.1f} {seconds - floor:13.3f}  {'yes' if seconds <= target else 'NO'}")


if __name__ == "__main__":
    main()
