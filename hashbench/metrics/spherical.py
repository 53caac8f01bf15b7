"""mAP with the database ranked by the spherical Hamming distance of Spherical Hashing.

Heo, Lee, He, Chang and Yoon (CVPR 2012) rank binary codes b (1 = inside a hypersphere) by

    d(b_q, b_x) = |b_q XOR b_x| / (|b_q AND b_x| + 0.1)

as their released C++ code computes it (``Compute_SHD`` in ``Src_CPP/BinaryHash.h``: the
paper writes |XOR| / |AND|, and the released code adds 0.1 to the divisor, so a pair with no
common 1-bit has the finite distance 10 · |XOR|, and two all-zero codes have distance 0).
The distance is not symmetric in the roles of 0 and 1: flipping every bit changes it, so it
needs the codes as the method emits them (1 inside a sphere).

Exactness. Every distance is the rational number 10x / (10a + 1) with x = |XOR| and
a = |AND| (x + a ≤ bits), so the ranking is decided exactly on those values, not on rounded
floats: :func:`distance_ranks` gives every (x, a) the rank of its value among all values
possible at the code length, equal values (0/1 = 0/11, 1/1.1 = 11/12.1, ...) sharing a rank.
Ties are broken by database position, as in :func:`hashbench.metrics.evaluate`, and the same
conventions hold: AP@k = (1/R_k) Σ_{i≤k} rel_i P@i, a query with R_k = 0 counts 0 and stays in
the mean, a cut-off above the database size is clipped to it; relevance is "shares a label"
or the per-query lists of ``relevance``, checked and built by the harness's own
:func:`hashbench.metrics.inputs.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hashbench.errors import UserError
from hashbench.metrics.inputs import Inputs, check_options, prepare

# The released divisor is |AND| + 0.1: distances are 10x / (10a + 1) exactly.
SMOOTHING_TENTHS = 1
DISTANCE_TEXT = "|b_q XOR b_x| / (|b_q AND b_x| + 0.1)"
PAIRS_PER_CHUNK = 1 << 22  # query × database pairs per chunk (each a few int64 buffers)
_KEY_LIMIT = 2**62


@dataclass(frozen=True)
class SphericalResult:
    """mAP at ``map_k`` and over the whole ranking, by spherical Hamming distance."""

    map: float
    map_k: int
    map_all: float
    num_queries: int
    num_database: int
    bits: int


def distance_ranks(bits: int) -> np.ndarray:
    """``(bits + 1, bits + 1)`` int64 table: entry (x, a) is the rank (0 = nearest) of the
    distance 10x / (10a + 1) among all distances of ``bits``-bit codes (x + a ≤ bits); equal
    distances share a rank. Entries with x + a > bits cannot occur and are -1.

    The values are ordered by their float64 quotients, then checked exactly with integer
    cross-multiplication (members of one group equal, consecutive groups increasing), so the
    table is exact or this raises (it never does below about 16,000 bits).
    """
    x, a = (grid.ravel() for grid in np.meshgrid(np.arange(bits + 1), np.arange(bits + 1), indexing="ij"))
    possible = x + a <= bits
    x, a = x[possible].astype(np.int64), a[possible].astype(np.int64)
    numerator, denominator = 10 * x, 10 * a + SMOOTHING_TENTHS
    _, first, group = np.unique(numerator / denominator, return_index=True, return_inverse=True)
    # every member equals its group's first member, exactly
    lead_n, lead_d = numerator[first][group], denominator[first][group]
    if not np.array_equal(numerator * lead_d, lead_n * denominator):
        raise RuntimeError(f"spherical distances of {bits}-bit codes are not separable in float64")
    # consecutive groups strictly increase, exactly
    n, d = numerator[first], denominator[first]
    if not np.all(n[:-1] * d[1:] < n[1:] * d[:-1]):
        raise RuntimeError(f"spherical distances of {bits}-bit codes are not separable in float64")
    table = np.full((bits + 1, bits + 1), -1, dtype=np.int64)
    table[x, a] = group
    return table


def _popcounts(query_words: np.ndarray, database_words: np.ndarray, operation: Any) -> np.ndarray:
    """(c, N) int64: popcount of ``operation(query word, database word)`` summed over words."""
    total = np.zeros((query_words.shape[0], database_words.shape[0]), dtype=np.int64)
    for word in range(query_words.shape[1]):
        total += np.bitwise_count(operation(query_words[:, word, None], database_words[None, :, word]))
    return total


def _average_precision(relevant: np.ndarray, depth: int) -> np.ndarray:
    """AP@depth of each row of a ranked 0/1 relevance matrix (0 where nothing relevant)."""
    head = relevant[:, :depth].astype(np.int64)
    hits = np.cumsum(head, axis=1)
    precision_sum = (head * hits / np.arange(1, depth + 1)).sum(axis=1)
    found = hits[:, -1]
    return np.where(found > 0, precision_sum / np.maximum(found, 1), 0.0)


def _chunk_ap(inputs: Inputs, rows: slice, ranks: np.ndarray, map_k: int) -> tuple[np.ndarray, np.ndarray]:
    size = inputs.num_database
    query_words, database_words = inputs.query_words[rows], inputs.database_words
    common = _popcounts(query_words, database_words, np.bitwise_and)
    differing = _popcounts(query_words, database_words, np.bitwise_xor)
    relevant = np.unpackbits(inputs.relevance.bit_rows(rows), axis=1, count=size).astype(np.int64)
    # one key per pair: (distance rank, database position, relevant bit); a sort ranks them
    keys = (ranks[differing, common] * size + np.arange(size)) * 2 + relevant
    ranked = np.sort(keys, axis=1) & 1
    return _average_precision(ranked, map_k), _average_precision(ranked, size)


def spherical_map(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any = None,
    database_labels: Any = None,
    *,
    relevance: Any = None,
    bits: int | None = None,
    topk: int | None = None,
    chunk_size: int | None = None,
) -> SphericalResult:
    """mAP@topk and mAP over the whole ranking, the database ranked by spherical Hamming
    distance (ties by database position). Inputs as for :func:`hashbench.metrics.evaluate`:
    codes bool / {0,1} / {-1,+1} (+1 = 1 = inside) or packed uint8 with ``bits``; labels or
    per-query ``relevance`` lists; ``topk`` None for the whole database."""
    options = check_options(topk=topk, chunk_size=chunk_size)
    inputs = prepare(query_codes, database_codes, query_labels, database_labels, bits, relevance)
    size = inputs.num_database
    ranks = distance_ranks(inputs.bits)
    if (int(ranks.max()) + 1) * size * 2 >= _KEY_LIMIT:
        raise UserError(f"{size} database items with {inputs.bits}-bit codes are too many to rank by spherical distance")
    map_k = inputs.map_k(options.topk)
    step = options.chunk_size or max(1, PAIRS_PER_CHUNK // size)
    ap, ap_all = [], []
    for start in range(0, inputs.num_queries, step):
        part, part_all = _chunk_ap(inputs, slice(start, min(start + step, inputs.num_queries)), ranks, map_k)
        ap.append(part)
        ap_all.append(part_all)
    return SphericalResult(
        float(np.concatenate(ap).mean()),
        map_k,
        float(np.concatenate(ap_all).mean()),
        inputs.num_queries,
        size,
        inputs.bits,
    )
