"""An embedding set of SIFT1M's shape through the whole features pipeline: time and memory.

    python benchmarks/bench_features_scale.py                  # 1,000,000 x 128 database, 10,000 queries
    python benchmarks/bench_features_scale.py --smoke          # 20,000 x 128, 500 queries, in seconds

Synthetic SIFT-like data (integer values 0..255 around 1,000 random centres, float32) is
written as an ann-benchmarks HDF5 file (``train`` = database, ``test`` = queries, no
``neighbors``), then taken through what ``hashbench run --datasets features:FILE`` does:
the file's SHA-256, loading and checking it, the declared split, the exact K nearest
neighbours of every query (computed, written to the cache, then read back as a second run
would), and for each method and code length the fit on the whole database, the encoding
of queries and database, and the full metric set against the neighbours. Each stage gives
its wall time and the peak resident memory of the process during that stage (Linux resets
the peak between stages through /proc/self/clear_refs; elsewhere the figure is the peak
so far). A sample of queries is checked against float64 brute force.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hashbench.codes import pack
from hashbench.data import DataSplit
from hashbench.data.splits import draw_split
from hashbench.datasets.features import Features, file_sha256
from hashbench.method import RunContext
from hashbench.run.runner import evaluate_codes

STAGES: list[tuple[str, float, float]] = []


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def stage(name: str):
    _reset_peak()
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    STAGES.append((name, seconds, _peak_mib()))
    print(f"{name}: {seconds:.1f} s, peak RSS {STAGES[-1][2]:,.0f} MiB", file=sys.stderr, flush=True)


def write_synthetic(path: Path, database: int, queries: int, dimension: int, seed: int = 0) -> None:
    """SIFT-like vectors: integers 0..255 scattered around 1,000 centres (exact ties happen)."""
    import h5py

    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 120, size=(1000, dimension)).astype(np.float32)

    def block(count: int) -> np.ndarray:
        points = centres[rng.integers(0, len(centres), count)] + rng.normal(0, 12, (count, dimension)).astype(np.float32)
        return np.clip(np.rint(points), 0, 255).astype(np.float32)

    with h5py.File(path, "w") as handle:
        handle.attrs["distance"] = "euclidean"
        train = handle.create_dataset("train", (database, dimension), dtype=np.float32)
        for start in range(0, database, 100_000):
            train[start : start + 100_000] = block(min(100_000, database - start))
        handle["test"] = block(queries)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else float("nan")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{model}, {cores} usable cores, {memory:.0f} GiB; load average {load}; numpy {np.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dimension", type=int, default=128)
    parser.add_argument("--neighbours", type=int, default=100)
    parser.add_argument("--bits", default="32", help="comma-separated code lengths")
    parser.add_argument("--methods", default="lsh,itq")
    parser.add_argument("--folder", type=Path, help="where the file and the cache go (default: a temporary folder)")
    parser.add_argument("--check", type=int, default=20, help="queries checked against float64 brute force")
    parser.add_argument("--smoke", action="store_true", help="20,000 x 128 and 500 queries")
    args = parser.parse_args()
    if args.smoke:
        args.database, args.queries = 20_000, 500
    from hashbench.methods.itq import ITQ
    from hashbench.methods.lsh import LSH

    methods = {"lsh": LSH, "itq": ITQ}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"synthetic-{args.database}x{args.dimension}.hdf5"
        print(f"writing {path} ...", file=sys.stderr)
        write_synthetic(path, args.database, args.queries, args.dimension)
        plugin = Features.configured("synthetic", {"path": str(path), "neighbours": args.neighbours}, "benchmark")()
        with stage("SHA-256 of the file"):
            file_sha256(str(path))
        with stage("load and check (NaN/inf rows)"):
            arrays = plugin.load(folder, cache_dir=folder / "cache")
            arrays.dataset = "synthetic"
        with stage("declared split"):
            manifest = draw_split("synthetic", plugin.protocol(None), arrays, 0)
        with stage(f"exact {args.neighbours}-NN ground truth, computed and cached"):
            neighbours = arrays.neighbour_relevance(manifest)
        with stage("ground truth read back from the cache"):
            again = plugin.load(folder, cache_dir=folder / "cache")
            again.dataset = "synthetic"
            cached = again.neighbour_relevance(manifest)
            assert np.array_equal(cached, neighbours)
            del again, cached
        query_rows, database_rows = manifest.splits["query"], manifest.splits["database"]
        sample = np.linspace(0, query_rows.size - 1, num=min(args.check, query_rows.size)).astype(np.int64)
        database64 = np.asarray(arrays.features[database_rows], dtype=np.float64)
        agree = 0
        for row in sample:
            query = np.asarray(arrays.features[query_rows[row]], dtype=np.float64)
            distances = ((database64 - query) ** 2).sum(1)
            agree += np.array_equal(np.argsort(distances, kind="stable")[: args.neighbours], neighbours[row])
        del database64
        print(f"ground truth: {agree} of {sample.size} sampled queries equal float64 brute force", file=sys.stderr)
        splits = {name: DataSplit(name, manifest.splits[name], arrays, manifest.protocol) for name in ("train", "query", "database")}
        results = []
        for bits in (int(b) for b in args.bits.split(",")):
            for name in args.methods.split(","):
                method = methods[name](bits, None, RunContext(seed=0))
                with stage(f"{name} {bits} bits: fit on {len(splits['train']):,} vectors"):
                    method.fit(splits["train"])
                with stage(f"{name} {bits} bits: encode queries and database"):
                    query_codes = pack(method.encode(splits["query"]), bits)
                    database_codes = pack(method.encode(splits["database"]), bits)
                with stage(f"{name} {bits} bits: full metric set"):
                    result = evaluate_codes(manifest, query_codes, database_codes, None, None, bits, neighbours)
                results.append((name, bits, result))
    print()
    print(f"{args.database:,} x {args.dimension} database, {args.queries:,} queries, K = {args.neighbours}; {machine()}")
    print()
    print("| stage | seconds | peak RSS (MiB) |")
    print("| --- | ---: | ---: |")
    for name, seconds, peak in STAGES:
        print(f"| {name} | {seconds:,.1f} | {peak:,.0f} |")
    print()
    print(f"ground truth: {agree} of {sample.size} sampled queries equal float64 brute force")
    print()
    print("| method | bits | mAP@1000 | tie-aware | R@1 | R@10 | R@100 | R@1000 | P(r≤2) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, bits, result in results:
        recall = result.recall_at_k
        print(
            f"| {name} | {bits} | {result.map:.4f} | {result.map_tie_aware:.4f} | {recall.get(1, 0):.4f} | "
            f"{recall.get(10, 0):.4f} | {recall.get(100, 0):.4f} | {recall.get(1000, 0):.4f} | {result.precision_radius:.4f} |"
        )


if __name__ == "__main__":
    main()
