"""End-to-end time of ``hashbench eval`` at MS-COCO scale: wall seconds of the whole command,
from process start (interpreter, imports, reading the .npy files) to the printed table.

Writes codes and labels of the synthetic MS-COCO-scale data of bench_metrics.py (5,000
queries x 117,218 database items, 80 classes, multi-hot) as the .npy files ``hashbench eval``
reads (codes bit-packed, with --bits), then times the command as a person types it:

* cold numba cache: NUMBA_CACHE_DIR set to an empty folder, so the kernels compile;
* warm numba cache: the same folder again (the usual case: only the first evaluation after
  an install compiles); the median of ``--repeat`` runs;
* the numpy kernels (HASHBENCH_KERNELS=numpy), for comparison;

beside ``python -c pass`` and ``hashbench --help`` (what any command pays) and the target.
The JSON output of the compiled and numpy kernels is checked to be identical.

    python benchmarks/bench_eval_cli.py [--bits 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import SCALES, synthetic  # noqa: E402

TARGET_WARM = 3.0  # seconds, warm numba cache, quiet 2-core machine


def _hashbench() -> list[str]:
    """The console script next to this interpreter (as a person runs it), else -m."""
    script = Path(sys.executable).parent / "hashbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hashbench"]


def _run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return seconds, done.stdout


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each warm case (median)")
    options = parser.parse_args()
    scale = SCALES["coco"]
    base_env = {key: value for key, value in os.environ.items() if key != "HASHBENCH_KERNELS"}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        arrays = dict(
            zip(
                ("query_codes", "database_codes", "query_labels", "database_labels"),
                synthetic(scale, options.bits),
                strict=True,
            )
        )
        for name, array in arrays.items():
            np.save(root / f"{name}.npy", array)
        evaluate = [*_hashbench(), "eval", "--bits", str(options.bits), "--topk", str(scale.topk)]
        for name in arrays:
            evaluate += ["--" + name.replace("_", "-"), str(root / f"{name}.npy")]
        cache = root / "numba-cache"
        compiled_env = {**base_env, "NUMBA_CACHE_DIR": str(cache)}
        numpy_env = {**base_env, "HASHBENCH_KERNELS": "numpy"}

        print(f"{os.cpu_count()} cores; load average {_load()}")
        print(
            f"hashbench eval of {scale.queries} x {scale.database} items, {options.bits} bits, "
            f"mAP@{scale.topk} and the full metric set; median of {options.repeat} runs"
        )
        floor = statistics.median(
            _run([sys.executable, "-c", "pass"], base_env)[0] for _ in range(options.repeat)
        )
        helped = statistics.median(
            _run([*_hashbench(), "--help"], base_env)[0] for _ in range(options.repeat)
        )
        shutil.rmtree(cache, ignore_errors=True)
        cold, _ = _run(evaluate, compiled_env)
        warm = statistics.median(_run(evaluate, compiled_env)[0] for _ in range(options.repeat))
        numpy_seconds = statistics.median(
            _run(evaluate, numpy_env)[0] for _ in range(options.repeat)
        )
        same = _run([*evaluate, "--json"], compiled_env)[1] == _run([*evaluate, "--json"], numpy_env)[1]

        rows = [
            ("python -c pass", floor, None),
            ("hashbench --help", helped, None),
            ("hashbench eval, cold numba cache (compiles)", cold, None),
            ("hashbench eval, warm numba cache", warm, TARGET_WARM),
            ("hashbench eval, HASHBENCH_KERNELS=numpy", numpy_seconds, None),
        ]
        print(f"{'command':<46} {'seconds':>8} {'target':>7}  met")
        for name, seconds, target in rows:
            goal = "" if target is None else f"{target:7.1f}  {'yes' if seconds <= target else 'NO'}"
            print(f"{name:<46} {seconds:8.2f} {goal}")
        print(f"same JSON output from the compiled and numpy kernels: {'yes' if same else 'NO'}")
        print(f"load average {_load()}")


if __name__ == "__main__":
    main()
