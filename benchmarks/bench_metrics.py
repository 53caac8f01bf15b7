"""Speed of hashbench.metrics against the per-query argsort evaluation of research code.

Run ``python benchmarks/bench_metrics.py`` for the table of the issue (MS-COCO and NUS-WIDE
scales at 16/32/64 bits), or ``pytest benchmarks/bench_metrics.py --benchmark-enable`` for
pytest-benchmark timings of the COCO-scale 64-bit case.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from hashbench.metrics import evaluate, mean_average_precision


@dataclass(frozen=True)
class Scale:
    name: str
    queries: int
    database: int
    classes: int
    labels_per_item: float
    topk: int


SCALES = {
    "coco": Scale("MS-COCO", 5_000, 117_218, 80, 2.9, 5_000),
    "nuswide": Scale("NUS-WIDE", 2_100, 193_734, 21, 1.9, 5_000),
    "small": Scale("small", 300, 20_000, 10, 1.5, 1_000),  # a quick check of the script
}


def synthetic(scale: Scale, bits: int, seed: int = 0):
    """Multi-hot labels with skewed class frequencies, and codes that depend on the labels.

    Each class has a random prototype code; an item's code is the majority vote of its
    classes' prototypes with 20% of the bits flipped, so relevant items tend to be near (as
    with trained hash codes) and many distances tie.
    """
    rng = np.random.default_rng(seed)
    total = scale.queries + scale.database
    popularity = 1.0 / np.arange(1, scale.classes + 1) ** 0.8
    popularity /= popularity.sum()
    per_item = np.clip(rng.poisson(scale.labels_per_item - 1, total) + 1, 1, scale.classes)
    # weighted sampling without replacement by the Gumbel top-k trick
    scores = np.log(popularity)[None, :] + rng.gumbel(size=(total, scale.classes))
    rank = np.argsort(np.argsort(-scores, axis=1), axis=1)
    labels = rank < per_item[:, None]
    prototypes = rng.random((scale.classes, bits)) < 0.5
    votes = labels.astype(np.float32) @ (prototypes.astype(np.float32) * 2 - 1)
    votes += rng.standard_normal(votes.shape).astype(np.float32) * 0.01  # break even votes
    codes = votes > 0
    codes ^= rng.random(codes.shape) < 0.2
    packed = np.packbits(codes, axis=1)
    return (
        packed[: scale.queries],
        packed[scale.queries :],
        labels[: scale.queries],
        labels[scale.queries :],
    )


def argsort_reference_map(query_packed, database_packed, query_labels, database_labels, bits, topk):
    """mAP@topk the way research code computes it (DeepHash-pytorch's CalcTopMap): float
    Hamming distances from a +-1 inner product, one argsort per query. ``kind="stable"`` so
    ties are broken by database index like hashbench (research code uses the default
    quicksort, whose tie order is implementation-defined). Returns per-query AP."""
    query_signs = np.unpackbits(query_packed, axis=1, count=bits).astype(np.float32) * 2 - 1
    database_signs = np.unpackbits(database_packed, axis=1, count=bits).astype(np.float32) * 2 - 1
    query_float = query_labels.astype(np.float32)
    database_float = database_labels.astype(np.float32)
    aps = np.zeros(query_signs.shape[0])
    for i in range(query_signs.shape[0]):
        relevant = (query_float[i] @ database_float.T > 0).astype(np.float32)
        hamming = 0.5 * (bits - query_signs[i] @ database_signs.T)
        ranked = relevant[np.argsort(hamming, kind="stable")][:topk]
        hits = int(ranked.sum())
        if hits == 0:
            continue
        count = np.linspace(1, hits, hits)
        positions = np.flatnonzero(ranked == 1) + 1.0
        aps[i] = np.mean(count / positions)
    return aps


def timed(function, repeat: int):
    best = float("inf")
    value = None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def peak_bytes(function) -> int:
    """Peak of the memory allocated during the call (numpy reports to tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    function()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def run_case(scale: Scale, bits: int, repeat: int, reference_queries: int, gpu: bool) -> dict:
    query, database, query_labels, database_labels = synthetic(scale, bits)
    args = (query, database, query_labels, database_labels)
    seconds_map, value_map = timed(
        lambda: mean_average_precision(*args, bits=bits, topk=scale.topk), repeat
    )
    seconds_full, result = timed(lambda: evaluate(*args, bits=bits, topk=scale.topk), repeat)
    peak = max(
        peak_bytes(lambda: mean_average_precision(*args, bits=bits, topk=scale.topk)),
        peak_bytes(lambda: evaluate(*args, bits=bits, topk=scale.topk)),
    )
    row = {
        "scale": f"{scale.name} {scale.queries}x{scale.database} k={scale.topk}",
        "bits": bits,
        "map": value_map,
        "map_tie_aware": result.map_tie_aware,
        "span": result.map_optimistic - result.map_pessimistic,
        "seconds_map": seconds_map,
        "seconds_full": seconds_full,
        "peak_mib": peak / 2**20,
        "same_map_paths": abs(value_map - result.map) < 1e-12,
    }
    if reference_queries:
        count = min(reference_queries, scale.queries)
        start = time.perf_counter()
        reference = argsort_reference_map(
            query[:count], database, query_labels[:count], database_labels, bits, scale.topk
        )
        per_query = (time.perf_counter() - start) / count
        row["reference_seconds"] = per_query * scale.queries
        row["reference_queries"] = count
        row["ratio"] = row["reference_seconds"] / seconds_map
        ours = result.per_query_ap[:count]
        row["same_map"] = bool(np.allclose(ours, reference, rtol=0, atol=1e-9))
    if gpu:
        import torch

        device = torch.device("cuda")
        tensors = [torch.from_numpy(a).to(device) for a in (query, database)]
        labels = [torch.from_numpy(a).to(device) for a in (query_labels, database_labels)]

        def on_gpu():
            out = evaluate(*tensors, *labels, bits=bits, topk=scale.topk)
            torch.cuda.synchronize()
            return out

        on_gpu()  # warm-up: CUDA context, kernels
        row["seconds_gpu"], gpu_result = timed(on_gpu, repeat)
        row["same_gpu"] = all(
            np.isclose(gpu_result.to_dict()[key], result.to_dict()[key], rtol=0, atol=1e-9)
            for key in ("map", "map_all", "map_tie_aware", "map_optimistic", "map_pessimistic")
        )
    return row


def format_row(row: dict) -> str:
    text = (
        f"| {row['scale']} | {row['bits']} | {row['map']:.4f} | {row['map_tie_aware']:.4f} | "
        f"{row['span']:.4f} | {row['seconds_map']:.2f} | {row['seconds_full']:.2f} | "
        f"{row['peak_mib']:.0f} |"
    )
    if "ratio" in row:
        text += (
            f" {row['reference_seconds']:.1f} ({row['reference_queries']} q) | "
            f"{row['ratio']:.0f}x | {row['same_map'] and row['same_map_paths']} |"
        )
    if "seconds_gpu" in row:
        text += f" {row['seconds_gpu']:.3f} | {row['same_gpu']} |"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="coco,nuswide")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case; best is shown")
    parser.add_argument(
        "--reference-queries",
        type=int,
        default=300,
        help="queries timed with the argsort reference (its time is scaled to all queries); "
        "0 skips it",
    )
    parser.add_argument("--gpu", action="store_true", help="also time CUDA tensors")
    options = parser.parse_args(argv)
    header = "| scale | bits | mAP@k | tie-aware | opt-pess span | s mAP only | s full | peak MiB |"
    if options.reference_queries:
        header += " s argsort reference | ratio | same mAP |"
    if options.gpu:
        header += " s full on GPU | same on GPU |"
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for scale_name in options.scales.split(","):
        for bits in (int(b) for b in options.bits.split(",")):
            row = run_case(
                SCALES[scale_name], bits, options.repeat, options.reference_queries, options.gpu
            )
            print(format_row(row), flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process peak RSS {usage.ru_maxrss / 2**10:.0f} MiB")


# pytest-benchmark: pytest benchmarks/bench_metrics.py --benchmark-enable


def _coco64():
    return synthetic(SCALES["coco"], 64)


def test_bench_map_coco64(benchmark):
    args = _coco64()
    benchmark(lambda: mean_average_precision(*args, bits=64, topk=5000))


def test_bench_full_coco64(benchmark):
    args = _coco64()
    benchmark(lambda: evaluate(*args, bits=64, topk=5000))


if __name__ == "__main__":
    main()
