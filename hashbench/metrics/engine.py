"""``evaluate`` and ``mean_average_precision``: checked inputs, chunks of queries on threads
(or on the codes' CUDA device), and the summary over all queries."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from hashbench.errors import UserError
from hashbench.metrics import cuda, kernel_choice, kernels
from hashbench.metrics.inputs import Inputs, Options, check_options, prepare
from hashbench.metrics.result import ChunkResult, RetrievalResult, Summary

DEFAULT_KS: tuple[int, ...] = (1, 10, 100, 1000)
MAX_THREADS = 1024  # of HASHBENCH_THREADS: more is a typo (threads are capped by the chunks anyway)

T = TypeVar("T")


def metric_threads() -> int:
    """Threads for query chunks: HASHBENCH_THREADS if set, else the usable cores, at most 4.

    The compiled kernels run without the GIL, as numpy does inside its loops and sorts, so
    threads use several cores; each holds one chunk (about 30 MB at the default size), so
    memory stays bounded.
    """
    setting = os.environ.get("HASHBENCH_THREADS", "").strip()
    if setting:
        number = setting.isascii() and setting.isdigit() and len(setting) <= len(str(MAX_THREADS))
        if not number or not 1 <= int(setting) <= MAX_THREADS:
            shown = repr(setting) if len(setting) <= 24 else f"{setting[:12]!r}… ({len(setting)} characters)"
            raise UserError(
                f"HASHBENCH_THREADS must be a positive integer, at most {MAX_THREADS}; got {shown}: "
                "set it to the threads the metrics may use (e.g. HASHBENCH_THREADS=4), or unset it for the default"
            )
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def check_environment() -> None:
    """Refuse a bad HASHBENCH_THREADS or HASHBENCH_KERNELS at once: the commands that compute
    metrics call this before they run or write anything (else every evaluation fails)."""
    metric_threads()
    kernel_choice.choice()


def map_in_order(function: Callable[[slice], T], chunks: Sequence[slice]) -> Iterator[T]:
    """``function`` of every chunk, on threads, yielded in chunk order."""
    workers = min(metric_threads(), len(chunks))
    if workers <= 1:
        yield from map(function, chunks)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(function, chunks)


def evaluate(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any = None,
    database_labels: Any = None,
    *,
    relevance: Any = None,
    bits: int | None = None,
    topk: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    radius: int = 2,
    chunk_size: int | None = None,
) -> RetrievalResult:
    """Evaluate Hamming ranking of ``database_codes`` for every query.

    Codes: bool, {0,1} or {-1,+1} matrices (n, bits), numpy or torch, or packed uint8
    (n, ceil(bits/8)) as produced by :func:`hashbench.codes.pack` together with ``bits``.
    Labels: class ids (n,) or multi-hot (n, classes) with at least two classes; query and
    database must use the same classes; an item is relevant when it shares a label with the
    query. Instead of labels, ``relevance`` gives each query its own set of relevant database
    positions (rows of the database codes), e.g. its K true nearest neighbours: a (queries, K)
    integer matrix (negative entries pad short rows) or one integer array per query. ``topk`` is the mAP cut-off (None: the whole
    database); ``ks`` the cut-offs of P@k / R@k; any cut-off larger than the database is
    clipped to the database size (so P@k divides by the database size there). ``radius`` is
    the headline Hamming radius; ``chunk_size`` the number of queries handled at once
    (memory grows with it; results do not depend on it). When both code matrices are torch
    tensors on a CUDA device, the same metrics are computed there.
    """
    return evaluate_on(
        cuda.device_of(query_codes, database_codes),
        query_codes,
        database_codes,
        query_labels,
        database_labels,
        relevance=relevance,
        bits=bits,
        topk=topk,
        ks=ks,
        radius=radius,
        chunk_size=chunk_size,
    )


def evaluate_on(
    device: Any,
    query_codes: Any,
    database_codes: Any,
    query_labels: Any = None,
    database_labels: Any = None,
    *,
    relevance: Any = None,
    bits: int | None = None,
    topk: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    radius: int = 2,
    chunk_size: int | None = None,
) -> RetrievalResult:
    """:func:`evaluate` with the rankings computed by torch on ``device``, or by the CPU
    kernels (compiled or numpy, see :mod:`hashbench.metrics.kernel_choice`) when ``device`` is
    None."""
    options = check_options(topk, ks, radius, chunk_size)
    inputs = prepare(query_codes, database_codes, query_labels, database_labels, bits, relevance)
    map_k = inputs.map_k(options.topk)
    use_compiled = device is None and kernel_choice.enabled(inputs.num_queries * inputs.num_database)
    summary = Summary(
        inputs.bits,
        inputs.num_database,
        map_k,
        options.topk,
        options.ks,
        options.radius,
        kernel_choice.boundary_terms if use_compiled else None,
    )
    chunks = inputs.chunks(options.chunk_size)
    if device is not None:
        parts: Iterator[ChunkResult] = (
            summary.chunk_result(ranking)
            for ranking in cuda.rankings(inputs, map_k, options.ks, chunks, device)
        )
    else:
        parts = map_in_order(_cpu_chunk(inputs, options, summary, use_compiled), chunks)
    for part in parts:
        summary.add(part)
    return summary.result()


def _cpu_chunk(
    inputs: Inputs, options: Options, summary: Summary, use_compiled: bool
) -> Callable[[slice], ChunkResult]:
    map_k = inputs.map_k(options.topk)
    ks_clipped = tuple(min(k, inputs.num_database) for k in options.ks)

    def run(rows: slice) -> ChunkResult:
        query_words = inputs.query_words[rows]
        bit_rows = inputs.relevance.bit_rows(rows)
        ranking = None
        if use_compiled:
            ranking = kernel_choice.whole_ranking(
                query_words, inputs.database_words, bit_rows, inputs.bits, map_k, ks_clipped
            )
        if ranking is None:
            distances = kernels.hamming(query_words, inputs.database_words, inputs.bits)
            ranking = kernels.whole_ranking(distances, bit_rows, inputs.groups, map_k, ks_clipped)
        return summary.chunk_result(ranking)

    return run


def mean_average_precision(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any = None,
    database_labels: Any = None,
    *,
    relevance: Any = None,
    bits: int | None = None,
    topk: int | None = None,
    chunk_size: int | None = None,
) -> float:
    """mAP@topk only (ties by database index), the cheap metric for per-epoch monitoring.

    Same inputs and conventions as :func:`evaluate`; equal to ``evaluate(...).map``.
    Relevance is looked up only for the items that enter the top ``topk``, and the distance
    of the topk-th item is found from a sample of the distances instead of a full histogram.
    """
    device = cuda.device_of(query_codes, database_codes)
    if device is not None:
        return evaluate_on(
            device,
            query_codes,
            database_codes,
            query_labels,
            database_labels,
            relevance=relevance,
            bits=bits,
            topk=topk,
            ks=(),
            chunk_size=chunk_size,
        ).map
    options = check_options(topk=topk, chunk_size=chunk_size)
    inputs = prepare(query_codes, database_codes, query_labels, database_labels, bits, relevance)
    size = inputs.num_database
    map_k = inputs.map_k(options.topk)
    groups = inputs.groups
    use_compiled = kernel_choice.enabled(inputs.num_queries * size)

    def run(rows: slice) -> np.ndarray:
        query_words = inputs.query_words[rows]
        bit_rows = inputs.relevance.bit_rows(rows)
        if use_compiled:
            ap = kernel_choice.head_average_precision(
                query_words, inputs.database_words, bit_rows, inputs.bits, map_k
            )
            if ap is not None:
                return ap
        distances = kernels.hamming(query_words, inputs.database_words, inputs.bits)
        if map_k == size:
            return kernels.whole_ranking(distances, bit_rows, groups, map_k, ()).ap
        thresholds = kernels.guess_thresholds(distances, map_k, groups)
        return kernels.head_average_precision(distances, bit_rows, thresholds, map_k, groups)

    chunks = inputs.chunks(options.chunk_size)
    return float(np.concatenate(list(map_in_order(run, chunks))).mean())
