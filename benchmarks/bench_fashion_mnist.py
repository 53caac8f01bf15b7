"""Every method of hashbench on the real Fashion-MNIST, on a CPU, written into benchmarks/README.md.

Fashion-MNIST (70,000 28×28 grey images of clothing, 10 classes) is read from Debian's
``dataset-fashion-mnist`` package, whose IDX files lie in /usr/share/datasets/fashion-mnist
(``dpkg -L dataset-fashion-mnist``); ``--install`` installs the package with apt-get first.
The grid is run through the real harness (``hashbench run``): every registered method (or
``--methods``) at 16, 32 and 64 bits, seeds 0, 1 and 2, under fashion-mnist's ``standard``
protocol (1,000 queries, 69,000 database images, 5,000 training images, mAP@1000), each deep
method on its tiny profile (what ``auto`` picks for Fashion-MNIST). ``hashbench report`` then
makes the table with its intervals, and with ``--write-readme`` the table, the machine, its
load and the run's wall time replace the section between the markers in benchmarks/README.md.

Runs already in the results folder are reused (as ``hashbench run`` always does), so the grid
can be grown a method at a time; the wall time printed is that of this invocation's runs,
and the README states the sum of the fit and encode times the records hold, which does not
depend on what was reused.

    python benchmarks/bench_fashion_mnist.py --install --write-readme
    python benchmarks/bench_fashion_mnist.py --methods lsh,itq,cibhash --jobs 2
    python benchmarks/bench_fashion_mnist.py --no-run --write-readme     # the table of what has run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "benchmarks" / "README.md"
PACKAGE = "dataset-fashion-mnist"
BEGIN, END = "<!-- fashion-mnist table: begin -->", "<!-- fashion-mnist table: end -->"
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def data_root(install: bool) -> Path:
    """The folder holding fashion-mnist/ with the package's four IDX files."""
    if install and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", PACKAGE], check=True, stdout=subprocess.DEVNULL)
    listed = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True)
    folders = {Path(line).parent for line in listed.stdout.splitlines() if line.endswith(FILES[0])}
    for folder in folders:
        if all((folder / name).is_file() for name in FILES):
            return folder.parent
    sys.exit(f"{PACKAGE} is not installed: run `apt-get install {PACKAGE}` (or this script with --install)")


def hashbench(*args: str) -> None:
    command = [str(Path(sys.executable).with_name("hashbench")), *args]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def registered_methods() -> list[str]:
    from hashbench import registry

    return sorted(registry.methods.names())


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def recorded_seconds(results: Path, methods: list[str]) -> dict[str, float]:
    """Fit + encode seconds summed over each method's ok runs in ``results``."""
    totals: dict[str, float] = {}
    for path in sorted(results.glob("runs/*/run.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "ok" and record.get("method") in methods and record.get("dataset") == "fashion-mnist":
            timings = record.get("timings") or {}
            spent = sum(float(timings.get(stage) or 0.0) for stage in ("fit", "encode"))
            totals[record["method"]] = totals.get(record["method"], 0.0) + spent
    return totals


def seeds_run(results: Path, methods: list[str]) -> dict[str, set[int]]:
    """The seeds of each method's ok runs on fashion-mnist."""
    seeds: dict[str, set[int]] = {}
    for path in sorted(results.glob("runs/*/run.json")):
        record = json.loads(path.read_text())
        if record.get("status") == "ok" and record.get("method") in methods and record.get("dataset") == "fashion-mnist":
            seeds.setdefault(record["method"], set()).add(int(record["seed"]))
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", default="1", help="cells at a time (hashbench run --jobs)")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "bench-fashion-mnist")
    parser.add_argument("--install", action="store_true", help=f"apt-get install {PACKAGE} first")
    parser.add_argument("--write-readme", action="store_true", help="write the table into benchmarks/README.md")
    parser.add_argument("--no-run", action="store_true", help="only report what the results folder holds")
    args = parser.parse_args()

    methods = args.methods.split(",") if args.methods else registered_methods()
    before = load()
    start = time.perf_counter()
    if not args.no_run:
        hashbench(
            "run", "--methods", ",".join(methods), "--datasets", "fashion-mnist", "--protocol", "standard",
            "--bits", args.bits, "--seeds", args.seeds, "--data-root", str(data_root(args.install)),
            "--results", str(args.results), "--jobs", args.jobs,
        )
    wall = time.perf_counter() - start
    after = load()
    out = args.results / "report"
    hashbench("report", "--results", str(args.results), "--out", str(out))
    table = (out / "map.md").read_text().strip()
    spent = recorded_seconds(args.results, methods)
    print(table)
    print(f"\nthis invocation: {wall:.0f} s wall; load average {before} before, {after} after")
    if not args.write_readme:
        return
    by_method = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in sorted(spent.items()))
    seeds = seeds_run(args.results, methods)
    fewer = sorted(name for name in methods if len(seeds.get(name, ())) < 3)
    not_run = [name for name in fewer if name not in seeds]
    partial = [f"{name} (seeds {', '.join(map(str, sorted(seeds[name])))})" for name in fewer if name in seeds]
    section = "\n".join([
        BEGIN,
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, no GPU; load average {after} when this table was written (the runs shared the machine with other training runs, load average 4–8, so fit times are inflated).",
        f"Every run's fit and encode time, summed: {sum(spent.values()) / 60:.0f} minutes "
        f"(per method, minutes: {by_method}).",
        *([f"Fewer than three seeds so far: {', '.join(partial)}."] if partial else []),
        *([f"Not run yet: {', '.join(not_run)}."] if not_run else []),
        "",
        "```",
        f"python benchmarks/bench_fashion_mnist.py --install --write-readme --jobs {args.jobs}",
        "```",
        "",
        table,
        END,
    ])
    text = README.read_text()
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Every method on the real Fashion-MNIST (`bench_fashion_mnist.py`)\n\n" + section + "\n"
    README.write_text(text)
    print(f"wrote {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
