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

The float32 pass never overflows or underflows silently: Euclidean data are centred and then
scaled by a power of two (exact: it changes no order) so that every coordinate lies in
[−1, 1], and cosine data are unit vectors, so the scores stay within a few times the dimension
whatever the magnitude of the vectors (1e20 is finite in float32, its square is not); the bound
holds an absolute term for the values that the scaling leaves below float32's normal range.
Vectors with NaN or infinite values, or whose float64 distances would overflow, are refused
(UserError), never ranked.

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
# 2: Euclidean data scaled by a power of two before the float32 pass (version 1 overflowed on
# vectors beyond about 1e19, and ranked them wrongly without an error).
NEIGHBOURS_VERSION = 2
_UNIT = 2.0**-24  # float32's unit roundoff
_TINY = 2.0**-149  # float32's smallest subnormal: the absolute error of values below the normal range
_ROWS = 65536  # rows per block when copying or measuring the database


def _squared_norms(array: Any) -> np.ndarray:
    """Squared row norms in float64, a block of rows at a time (the array may be a memory map)."""
    out = np.empty(array.shape[0])
    for start in range(0, array.shape[0], _ROWS):
        block = np.asarray(array[start : start + _ROWS], dtype=np.float64)
        out[start : start + block.shape[0]] = np.einsum("ij,ij->i", block, block)
    return out


def _scaled_copy(array: Any, shift: np.ndarray | None, scale: np.ndarray | None, factor: float = 1.0) -> np.ndarray:
    """float32 copy of (array − shift) / scale · factor, computed in float64 block by block."""
    out = np.empty(array.shape, dtype=np.float32)
    for start in range(0, array.shape[0], _ROWS):
        block = np.array(array[start : start + _ROWS], dtype=np.float64)  # a copy: changed below
        if shift is not None:
            block -= shift
        if scale is not None:
            block /= scale[start : start + block.shape[0], None]
        if factor != 1.0:
            block *= factor
        out[start : start + block.shape[0]] = block
    return out


def _largest_deviation(array: Any, shift: np.ndarray) -> float:
    """max |array − shift| over every coordinate, in float64."""
    largest = 0.0
    for start in range(0, array.shape[0], _ROWS):
        block = np.asarray(array[start : start + _ROWS], dtype=np.float64)
        if block.size:
            largest = max(largest, float(np.abs(block - shift).max()))
    return largest


def _refuse_non_finite(squares: np.ndarray, what: str) -> None:
    """Squared norms that are NaN or infinite: a NaN or infinite value, or one whose square overflows float64."""
    bad = np.flatnonzero(~np.isfinite(squares))
    if bad.size:
        raise UserError(
            f"exact neighbours cannot be computed: {bad.size} {what} vectors hold NaN or infinite values, or values "
            f"too large to square in float64 (the first is row {int(bad[0])}); drop or rescale them"
        )


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
    query_squares = _squared_norms(queries)
    _refuse_non_finite(query_squares, "query")
    _refuse_non_finite(database_squares, "database")
    if metric == "cosine":
        query_norms = np.sqrt(query_squares)
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
        # A power of two (exact) that brings every centred coordinate into [-1, 1]: the float32
        # products below can then neither overflow nor lose the data to underflow.
        largest_value = max(_largest_deviation(database, centre), _largest_deviation(queries, centre))
        factor = float(np.ldexp(1.0, -np.clip(np.frexp(largest_value)[1], -1000, 1000))) if largest_value > 0 else 1.0
        query32 = _scaled_copy(queries, centre, None, factor)
        database32 = _scaled_copy(database, centre, None, factor)
    squared = _squared_norms(database32)
    squares32 = squared.astype(np.float32)
    largest = float(np.sqrt(squared.max()))
    # Bound on |computed − exact| of a score |y|² − 2x·y: the dot product's rounding
    # (gamma_d |x||y|), the copies' and the additions' (a few units of roundoff times |x||y|
    # and |y|²), doubled to cover the second-order terms; plus, for values below float32's
    # normal range (absolute rounding errors up to _TINY), a few _TINY per coordinate (the
    # coordinates are at most 1 after the scaling).
    gamma = dimension * _UNIT / (1 - dimension * _UNIT)
    query_lengths = np.sqrt(_squared_norms(query32))
    bounds = 2 * ((2 * gamma + 8 * _UNIT) * query_lengths * largest + 4 * _UNIT * largest**2 + 8 * dimension * _TINY)
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
            if not np.isfinite(exact).all():
                raise UserError(
                    f"exact neighbours cannot be computed: the {metric} distances of query {start + row} overflow "
                    "float64 (its values or the database's are too large); rescale the vectors"
                )
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
