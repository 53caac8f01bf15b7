"""True nearest neighbours: the relevance of datasets without labels, computed exactly.

As in the classic hashing papers' SIFT and GIST benchmarks and in ann-benchmarks, an item
of the database is relevant to a query when it is one of the query's K nearest neighbours
in the original feature space (Euclidean, or cosine: Euclidean on unit vectors). Ties are
broken by the lower database position, as in the Hamming ranking.

:func:`exact_neighbours` is exact and bounded in memory: for a chunk of queries, scores
``|y|² − 2 x·y`` (the query's own ``|x|²`` does not change its order) come from one float32
matrix product against the centred database; every item whose score lies within twice a
proven bound on float32's rounding error of the K-th smallest score is a candidate (so the
true K nearest, ties included, always are), and the candidates are ranked by their distance
computed again in float64 from the original vectors (exact for integer-valued data such as
SIFT's; otherwise up to float64's rounding of a sum of d squares). Memory: a float32 copy of the database
plus two (chunk × database) float32 blocks, the chunk sized to ``memory_mb``.

:func:`relevance_for` is what the runner asks of a loaded dataset: per-query neighbour lists
for a split manifest, or None when relevance is shared labels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hashbench.errors import UserError

METRICS = ("euclidean", "cosine")
# Bump when the ground truth computed for the same data changes: cached lists become stale.
NEIGHBOURS_VERSION = 1
_UNIT = 2.0**-24  # float32's unit roundoff
_ROWS = 65536  # rows per block when copying or measuring the database


def _squared_norms(array: Any) -> np.ndarray:
    """Squared row norms in float64, a block of rows at a time (the array may be a memory map)."""
    out = np.empty(array.shape[0])
    for start in range(0, array.shape[0], _ROWS):
        block = np.asarray(array[start : start + _ROWS], dtype=np.float64)
        out[start : start + block.shape[0]] = np.einsum("ij,ij->i", block, block)
    return out


def _scaled_copy(array: Any, shift: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray:
    """float32 copy of (array − shift) / scale, computed in float64 block by block."""
    out = np.empty(array.shape, dtype=np.float32)
    for start in range(0, array.shape[0], _ROWS):
        block = np.array(array[start : start + _ROWS], dtype=np.float64)  # a copy: changed below
        if shift is not None:
            block -= shift
        if scale is not None:
            block /= scale[start : start + block.shape[0], None]
        out[start : start + block.shape[0]] = block
    return out


def _refuse_zero_rows(norms: np.ndarray, what: str) -> None:
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise UserError(
            f"cosine distance is undefined for all-zero vectors: {zero.size} {what} rows are zero "
            f"(the first is row {int(zero[0])}); drop them or use metric = \"euclidean\""
        )


def exact_neighbours(
    queries: Any,
    database: Any,
    k: int,
    *,
    metric: str = "euclidean",
    memory_mb: float = 512,
    out: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The ``k`` nearest database rows of every query: int64 (queries, min(k, N)), nearest
    first, ties broken by the lower database row.

    ``queries`` (q, d) and ``database`` (N, d) are float arrays (memory maps work);
    ``metric`` is ``euclidean`` or ``cosine``; ``memory_mb`` bounds the per-chunk blocks;
    ``out`` receives the result when given; ``progress(done, total)`` is called per chunk.
    """
    if metric not in METRICS:
        raise UserError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    size, dimension = database.shape
    count = queries.shape[0]
    if queries.ndim != 2 or queries.shape[1] != dimension:
        raise UserError(f"queries have shape {queries.shape}, the database {database.shape}: dimensions differ")
    if size == 0:
        raise UserError("the database is empty: there are no neighbours to find")
    k = min(int(k), size)
    result = np.empty((count, k), dtype=np.int64) if out is None else out
    database_squares = _squared_norms(database)
    if metric == "cosine":
        query_norms = np.sqrt(_squared_norms(queries))
        _refuse_zero_rows(query_norms, "query")
        _refuse_zero_rows(database_squares, "database")
        query32 = _scaled_copy(queries, None, query_norms)
        database32 = _scaled_copy(database, None, np.sqrt(database_squares))
    else:
        # Centring changes no distance but shrinks the norms, and with them float32's error.
        centre = np.zeros(dimension)
        for start in range(0, size, _ROWS):
            centre += np.asarray(database[start : start + _ROWS], dtype=np.float64).sum(0)
        centre /= size
        query32 = _scaled_copy(queries, centre, None)
        database32 = _scaled_copy(database, centre, None)
    squared = _squared_norms(database32)
    squares32 = squared.astype(np.float32)
    largest = float(np.sqrt(squared.max()))
    # Bound on |computed − exact| of a score |y|² − 2x·y: the dot product's rounding
    # (gamma_d |x||y|), the copies' and the additions' (a few units of roundoff times |x||y|
    # and |y|²), doubled to cover the second-order terms.
    gamma = dimension * _UNIT / (1 - dimension * _UNIT)
    query_lengths = np.sqrt(_squared_norms(query32))
    bounds = 2 * ((2 * gamma + 8 * _UNIT) * query_lengths * largest + 4 * _UNIT * largest**2)
    chunk = int(max(1, min(count, memory_mb * 2**20 // (8 * size))))
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        scores = query32[start:stop] @ database32.T
        scores *= -2
        scores += squares32
        kth = np.partition(scores, k - 1, axis=1)[:, k - 1]
        limits = kth.astype(np.float64) + 2 * bounds[start:stop]
        for row in range(stop - start):
            candidates = np.flatnonzero(scores[row] <= limits[row])
            query = np.asarray(queries[start + row], dtype=np.float64)
            vectors = np.asarray(database[candidates], dtype=np.float64)
            if metric == "cosine":
                # descending cosine = descending sign(x.y) (x.y)^2 / |y|^2 (|x| is fixed): no
                # square root, so equal cosines of integer vectors stay exactly equal
                dots = vectors @ query
                exact = -np.sign(dots) * dots * dots / database_squares[candidates]
            else:
                vectors -= query
                exact = np.einsum("ij,ij->i", vectors, vectors)
            # candidates are in database order, so a stable sort breaks ties by position
            result[start + row] = candidates[np.argsort(exact, kind="stable")[:k]]
        if progress is not None:
            progress(stop, count)
    return result


class ProgressLine:
    """A line on stderr at most every ``every`` seconds while neighbours are computed."""

    def __init__(self, what: str, every: float = 30.0) -> None:
        self.what = what
        self.every = every
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / done * (total - done) if done else 0.0
        print(f"{self.what}: {done}/{total} queries, {elapsed:.0f} s, about {left:.0f} s left", file=sys.stderr)


def relevance_for(arrays: Any, manifest: Any) -> np.ndarray | None:
    """Per-query relevance lists (database positions) of a split, when the dataset defines
    relevance by nearest neighbours instead of shared labels; None for labels."""
    provider = getattr(arrays, "neighbour_relevance", None)
    return None if provider is None else provider(manifest)
