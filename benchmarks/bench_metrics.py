"""Speed of hashbench.metrics against the per-query argsort evaluation of research code.

Run ``python benchmarks/bench_metrics.py`` for the table at the datasets' scales (MS-COCO and NUS-WIDE
scales at 16/32/64 bits), or ``pytest benchmarks/bench_metrics.py --benchmark-enable`` for
pytest-benchmark timings of the COCO-scale 64-bit case.

The main columns use the kernels HASHBENCH_KERNELS chooses (at these scales: the compiled
counting kernels); the ``numpy kernels`` columns time the same calls with
HASHBENCH_KERNELS=numpy (``--no-numpy-kernels`` skips them).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np

from hashbench.errors import UserError
from hashbench.metrics import DEFAULT_KS, evaluate, kernel_choice, mean_average_precision
from hashbench.metrics.engine import metric_threads


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


def _signs(packed: np.ndarray, bits: int) -> np.ndarray:
    return np.unpackbits(packed, axis=1, count=bits).astype(np.float32) * 2 - 1


def _average_precision(ranked: np.ndarray) -> float:
    """AP of a ranked 0/1 relevance vector: mean of the precision at each relevant item."""
    hits = int(ranked.sum())
    if hits == 0:
        return 0.0
    count = np.linspace(1, hits, hits)
    positions = np.flatnonzero(ranked == 1) + 1.0
    return float(np.mean(count / positions))


def argsort_reference_map(query_packed, database_packed, query_labels, database_labels, bits, topk):
    """mAP@topk the way research code computes it (DeepHash-pytorch's CalcTopMap): float
    Hamming distances from a +-1 inner product, one argsort per query. ``kind="stable"`` so
    ties are broken by database index like hashbench (research code uses the default
    quicksort, whose tie order is implementation-defined). Returns per-query AP."""
    query_signs = _signs(query_packed, bits)
    database_signs = _signs(database_packed, bits)
    query_float = query_labels.astype(np.float32)
    database_float = database_labels.astype(np.float32)
    aps = np.zeros(query_signs.shape[0])
    for i in range(query_signs.shape[0]):
        relevant = (query_float[i] @ database_float.T > 0).astype(np.float32)
        hamming = 0.5 * (bits - query_signs[i] @ database_signs.T)
        ranked = relevant[np.argsort(hamming, kind="stable")][:topk]
        aps[i] = _average_precision(ranked)
    return aps


def metrics_of_rankings(rankings, topk: int, ks, bits: int) -> dict:
    """The metrics of hashbench's ``evaluate`` but the tie-aware ones, straight from each
    query's whole ranking: (sorted distances, relevance in ranked order) pairs."""
    rows = {"map": [], "map_all": [], "precision_at_k": [], "recall_at_k": []}
    rows.update(pr_precision=[], pr_recall=[])
    radii = np.arange(bits + 1)
    for distances, relevance in rankings:
        ranked = relevance.astype(np.int64)  # exact counts (float32 sums round)
        size = ranked.size
        positives = ranked.sum()
        hits = np.cumsum(ranked)
        cut = [min(k, size) for k in ks]
        rows["map"].append(_average_precision(ranked[:topk]))
        rows["map_all"].append(_average_precision(ranked))
        rows["precision_at_k"].append([hits[k - 1] / k for k in cut])
        rows["recall_at_k"].append([hits[k - 1] / positives if positives else 0.0 for k in cut])
        within = np.searchsorted(distances, radii, side="right")
        relevant_within = np.where(within > 0, hits[np.maximum(within, 1) - 1], 0)
        rows["pr_precision"].append(
            np.where(within > 0, relevant_within / np.maximum(within, 1), 0.0)
        )
        rows["pr_recall"].append(relevant_within / positives if positives else np.zeros(bits + 1))
    return {name: np.mean(values, axis=0) for name, values in rows.items()}


def argsort_reference_full(
    query_packed, database_packed, query_labels, database_labels, bits, topk, ks
):
    """The full metric set (but the tie-aware values) from one stable argsort per query."""
    query_signs = _signs(query_packed, bits)
    database_signs = _signs(database_packed, bits)
    query_float = query_labels.astype(np.float32)
    database_float = database_labels.astype(np.float32)

    def rankings():
        for i in range(query_signs.shape[0]):
            relevant = (query_float[i] @ database_float.T > 0).astype(np.float32)
            hamming = 0.5 * (bits - query_signs[i] @ database_signs.T)
            order = np.argsort(hamming, kind="stable")
            yield hamming[order], relevant[order]

    return metrics_of_rankings(rankings(), topk, ks, bits)


def faiss_rankings(query_packed, database_packed, query_labels, database_labels, k, batch):
    """(sorted distances, relevance in ranked order) of the top k of each query, from faiss's
    exhaustive binary index (padding bits of packed codes are zero, so distances agree)."""
    import faiss

    index = faiss.IndexBinaryFlat(8 * database_packed.shape[1])
    index.add(np.ascontiguousarray(database_packed))
    for start in range(0, query_packed.shape[0], batch):
        stop = min(start + batch, query_packed.shape[0])
        distances, ids = index.search(np.ascontiguousarray(query_packed[start:stop]), k)
        relevant = (database_labels[ids] & query_labels[start:stop, None, :]).any(-1)
        for row in range(stop - start):
            yield distances[row], relevant[row].astype(np.float32)


def faiss_map(query_packed, database_packed, query_labels, database_labels, topk):
    """Per-query AP@topk from faiss's top-topk search."""
    rankings = faiss_rankings(
        query_packed, database_packed, query_labels, database_labels, topk, batch=64
    )
    return np.array([_average_precision(ranked) for _, ranked in rankings])


def faiss_full(query_packed, database_packed, query_labels, database_labels, bits, topk, ks):
    """The metrics of :func:`metrics_of_rankings` from faiss's whole rankings (k = database)."""
    rankings = faiss_rankings(
        query_packed,
        database_packed,
        query_labels,
        database_labels,
        database_packed.shape[0],
        batch=8,
    )
    return metrics_of_rankings(rankings, topk, ks, bits)


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def same_metrics(result, reference: dict, ks) -> bool:
    """hashbench's result equals a reference's metrics (to rounding)."""
    values = [
        (result.map, reference["map"]),
        (result.map_all, reference["map_all"]),
        (np.array([result.precision_at_k[k] for k in ks]), reference["precision_at_k"]),
        (np.array([result.recall_at_k[k] for k in ks]), reference["recall_at_k"]),
        (result.pr_precision, reference["pr_precision"]),
        (result.pr_recall, reference["pr_recall"]),
    ]
    return all(np.allclose(ours, theirs, rtol=0, atol=1e-9) for ours, theirs in values)


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


class kernels_set_to:
    """HASHBENCH_KERNELS set to ``value`` inside the block."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __enter__(self) -> None:
        self.saved = os.environ.get("HASHBENCH_KERNELS")
        os.environ["HASHBENCH_KERNELS"] = self.value

    def __exit__(self, *exc) -> None:
        if self.saved is None:
            del os.environ["HASHBENCH_KERNELS"]
        else:
            os.environ["HASHBENCH_KERNELS"] = self.saved


def kernel_start() -> str:
    """Which kernels the main columns use, and what their first use in this process cost
    (importing numba and loading the cached kernels, or compiling them)."""
    size = 1_000
    rng = np.random.default_rng(0)
    codes = rng.random((size, 64)) < 0.5
    labels = rng.integers(0, 10, size)
    start = time.perf_counter()
    use = kernel_choice.enabled(kernel_choice.MIN_PAIRS)
    if not use:
        return "CPU kernels: numpy (" + (kernel_choice._module.get("reason") or "HASHBENCH_KERNELS") + ")"
    import numba

    try:
        with kernels_set_to("numba"):
            evaluate(codes[:10], codes, labels[:10], labels)
    except UserError as error:  # a kernel did not compile: the numpy kernels rank
        return f"CPU kernels: numpy ({error})"
    seconds = time.perf_counter() - start
    return (
        f"CPU kernels: compiled (numba {numba.__version__}); importing numba and loading or "
        f"compiling the kernels took {seconds:.2f} s before the timings"
    )


def run_case(
    scale: Scale,
    bits: int,
    repeat: int,
    reference_queries: int,
    use_faiss: bool,
    gpu: bool,
    numpy_kernels: bool,
) -> dict:
    query, database, query_labels, database_labels = synthetic(scale, bits)
    args = (query, database, query_labels, database_labels)
    seconds_map, value_map = timed(
        lambda: mean_average_precision(*args, bits=bits, topk=scale.topk), repeat
    )
    seconds_full, result = timed(lambda: evaluate(*args, bits=bits, topk=scale.topk), repeat)
    same = {"mAP-only path": abs(value_map - result.map) < 1e-12}
    numpy_times = {}
    if numpy_kernels:
        with kernels_set_to("numpy"):
            numpy_times["numpy_map"], numpy_map = timed(
                lambda: mean_average_precision(*args, bits=bits, topk=scale.topk), repeat
            )
            numpy_times["numpy_full"], numpy_result = timed(
                lambda: evaluate(*args, bits=bits, topk=scale.topk), repeat
            )
        # the two kernels agree bit for bit
        same["numpy kernels"] = numpy_map == value_map and numpy_result.to_dict() == result.to_dict()
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
        "same": same,
        **numpy_times,
    }
    if reference_queries:
        count = min(reference_queries, scale.queries)
        subset = (query[:count], database, query_labels[:count], database_labels)
        ours = evaluate(*subset, bits=bits, topk=scale.topk)
        scaled = scale.queries / count  # reference times are per query, for all queries
        references = {
            "argsort": (
                lambda: argsort_reference_map(*subset, bits, scale.topk),
                lambda: argsort_reference_full(*subset, bits, scale.topk, DEFAULT_KS),
            )
        }
        if use_faiss:
            references["faiss"] = (
                lambda: faiss_map(*subset, scale.topk),
                lambda: faiss_full(*subset, bits, scale.topk, DEFAULT_KS),
            )
        for name, (map_only, full) in references.items():
            start = time.perf_counter()
            aps = map_only()
            row[f"{name}_map"] = (time.perf_counter() - start) * scaled
            start = time.perf_counter()
            metrics = full()
            row[f"{name}_full"] = (time.perf_counter() - start) * scaled
            row["same"][name] = bool(
                np.allclose(ours.per_query_ap, aps, rtol=0, atol=1e-9)
                and same_metrics(ours, metrics, DEFAULT_KS)
            )
        row["reference_queries"] = count
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
        row["same"]["gpu"] = all(
            np.isclose(gpu_result.to_dict()[key], result.to_dict()[key], rtol=0, atol=1e-9)
            for key in ("map", "map_all", "map_tie_aware", "map_optimistic", "map_pessimistic")
        )
    return row


def _seconds(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def format_row(row: dict, references: bool, gpu: bool, numpy_kernels: bool) -> str:
    text = (
        f"| {row['scale']} | {row['bits']} | {row['map']:.4f} | {row['map_tie_aware']:.4f} | "
        f"{row['span']:.4f} | {row['seconds_map']:.2f} |"
    )
    if numpy_kernels:
        text += f" {_seconds(row, 'numpy_map')} |"
    if references:
        text += f" {_seconds(row, 'argsort_map')} | {_seconds(row, 'faiss_map')} |"
    text += f" {row['seconds_full']:.2f} |"
    if numpy_kernels:
        text += f" {_seconds(row, 'numpy_full')} |"
    if references:
        text += f" {_seconds(row, 'argsort_full')} | {_seconds(row, 'faiss_full')} |"
    if gpu:
        text += f" {row['seconds_gpu']:.3f} |"
    same = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in row["same"].items())
    return text + f" {row['peak_mib']:.0f} | {same} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="coco,nuswide")
    parser.add_argument("--bits", default="16,32,64")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case; best is shown")
    parser.add_argument(
        "--reference-queries",
        type=int,
        default=300,
        help="queries timed with the argsort reference and faiss (their times are scaled to "
        "all queries); 0 skips them",
    )
    parser.add_argument("--no-faiss", action="store_true", help="skip faiss even when importable")
    parser.add_argument("--gpu", action="store_true", help="also time CUDA tensors")
    parser.add_argument(
        "--no-numpy-kernels",
        action="store_true",
        help="skip the columns timed with HASHBENCH_KERNELS=numpy",
    )
    options = parser.parse_args(argv)
    references = options.reference_queries > 0
    numpy_kernels = not options.no_numpy_kernels
    use_faiss = references and not options.no_faiss and faiss_available()
    if use_faiss:
        import faiss

        faiss.omp_set_num_threads(metric_threads())  # the threads hashbench uses
    print(
        f"{os.cpu_count()} cores, {metric_threads()} threads; load average "
        + " ".join(f"{load:.2f}" for load in os.getloadavg())
    )
    print(kernel_start())
    header = "| scale | bits | mAP@k | tie-aware | opt-pess span | s mAP only |"
    if numpy_kernels:
        header += " numpy kernels |"
    if references:
        header += " argsort | faiss |"
    header += " s full |"
    if numpy_kernels:
        header += " numpy kernels |"
    if references:
        header += " argsort | faiss |"
    if options.gpu:
        header += " s full on GPU |"
    header += " peak MiB | same metrics |"
    if references:
        print(
            f"argsort and faiss columns: timed on the first {options.reference_queries} queries "
            "and scaled to all queries"
            + ("" if use_faiss else "; faiss is not importable (pip install faiss-cpu), so -")
        )
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for scale_name in options.scales.split(","):
        for bits in (int(b) for b in options.bits.split(",")):
            row = run_case(
                SCALES[scale_name],
                bits,
                options.repeat,
                options.reference_queries,
                use_faiss,
                options.gpu,
                numpy_kernels,
            )
            print(format_row(row, references, options.gpu, numpy_kernels), flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"process peak RSS {usage.ru_maxrss / 2**10:.0f} MiB")
    print("load average " + " ".join(f"{load:.2f}" for load in os.getloadavg()))


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
