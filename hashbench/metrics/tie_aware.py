"""The tie-aware formula: expected, best and worst AP@k over random orders inside distance ties.

Only the per-query histograms of items and relevant items at each distance are needed, so
the same code serves the CPU and the CUDA paths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# expected (tie-aware), best and worst AP@k per query
Terms = tuple[np.ndarray, np.ndarray, np.ndarray]


class Tables:
    """Harmonic numbers and log-factorials up to the database size (for closed forms)."""

    def __init__(self, size: int) -> None:
        steps = np.arange(1, size + 2, dtype=np.float64)
        self.harmonic = np.concatenate(([0.0], np.cumsum(1.0 / steps)))
        self.log_factorial = np.concatenate(([0.0], np.cumsum(np.log(steps))))

    def harmonic_span(self, before: np.ndarray, length: np.ndarray) -> np.ndarray:
        """sum_{j=1..length} 1 / (before + j)."""
        return self.harmonic[before + length] - self.harmonic[before]

    def log_choose(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        return self.log_factorial[n] - self.log_factorial[k] - self.log_factorial[n - k]


def tie_aware(
    counts: np.ndarray,
    relevant_counts: np.ndarray,
    depth: int,
    tables: Tables,
    boundary_terms: Callable[..., Terms | None] | None = None,
) -> Terms:
    """Expected, best and worst AP@depth per query over random orders inside distance ties.

    counts / relevant_counts: (c, groups) items and relevant items at each distance.
    Groups entirely inside the top ``depth`` contribute the closed form of He et al. (CVPR
    2018); for the group cut by the boundary, the number X of its relevant items entering the
    top ``depth`` is hypergeometric, and since AP@k divides by R_k = R_before + X the
    expectation is taken exactly by conditioning on every value of X.

    ``boundary_terms`` (:func:`hashbench.metrics.kernel_choice.boundary_terms`) computes the
    terms of every value of X with the compiled kernels, the same values bit for bit; when
    it is None or returns None, numpy does.
    """
    count, groups = counts.shape
    n = counts.astype(np.int64)
    r = relevant_counts.astype(np.int64)
    before = np.cumsum(n, axis=1) - n  # items ranked before each group
    relevant_before = np.cumsum(r, axis=1) - r
    boundary = np.argmax(before + n >= depth, axis=1)
    full = (np.arange(groups)[None, :] < boundary[:, None]) & (n > 0)

    # expected sum of precisions at relevant positions for groups fully inside the top depth:
    # position j of the group is relevant w.p. r/n, and then holds 1 + (j-1)(r-1)/(n-1)
    # relevant items of its group in expectation
    span = tables.harmonic_span(before, n)
    weighted = n - (before + 1) * span  # sum_{j=1..n} (j-1)/(before+j)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
        expected = np.where(
            full, r / np.maximum(n, 1) * ((relevant_before + 1) * span + spread * weighted), 0.0
        )
    expected_full = expected.sum(1)
    # relevant first / last in every full group: sum_{j=1..r} (R0 + j) / (P0 + j)
    first = np.where(
        full, r + (relevant_before - before) * tables.harmonic_span(before, r), 0.0
    ).sum(1)
    last_before = before + n - r
    last = np.where(
        full, r + (relevant_before - last_before) * tables.harmonic_span(last_before, r), 0.0
    ).sum(1)

    index = np.arange(count)
    size_b = n[index, boundary]
    relevant_b = r[index, boundary]
    before_b = before[index, boundary]
    relevant_before_b = relevant_before[index, boundary]
    taken = depth - before_b  # positions of the boundary group inside the top depth (>= 1)
    low = np.maximum(0, taken - (size_b - relevant_b))
    high = np.minimum(taken, relevant_b)
    per_query = (low, high, size_b, relevant_b, taken, before_b, relevant_before_b)
    if boundary_terms is not None:
        values = boundary_terms(*per_query, expected_full, first, last, tables)
        if values is not None:
            return values
    return _boundary_terms(*per_query, expected_full, first, last, tables)


def _boundary_terms(
    low: np.ndarray,
    high: np.ndarray,
    size_b: np.ndarray,
    relevant_b: np.ndarray,
    taken: np.ndarray,
    before_b: np.ndarray,
    relevant_before_b: np.ndarray,
    expected_full: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    tables: Tables,
) -> Terms:
    """Expected, best and worst AP per query from every number X in low..high of the boundary
    group's relevant items that enter the top k, given the full groups' sums."""
    count = low.size
    index = np.arange(count)
    spans = high - low + 1
    query = np.repeat(index, spans)
    offsets = np.concatenate(([0], np.cumsum(spans)[:-1]))
    x = low[query] + np.arange(spans.sum()) - offsets[query]
    nb, rb, m, pb, rbb = (
        size_b[query],
        relevant_b[query],
        taken[query],
        before_b[query],
        relevant_before_b[query],
    )

    log_p = tables.log_choose(rb, x) + tables.log_choose(nb - rb, m - x) - tables.log_choose(nb, m)
    probability = np.exp(log_p)
    probability /= np.bincount(query, probability, minlength=count)[query]  # remove rounding drift

    span_b = tables.harmonic_span(pb, m)
    weighted_b = m - (pb + 1) * span_b
    with np.errstate(invalid="ignore", divide="ignore"):
        spread_b = np.where(m > 1, (x - 1) / np.maximum(m - 1, 1), 0.0)
        boundary_sum = x / m * ((rbb + 1) * span_b + spread_b * weighted_b)
        hits = rbb + x
        safe = np.maximum(hits, 1)
        expected_ap = np.where(hits > 0, (expected_full[query] + boundary_sum) / safe, 0.0)
        first_ap = np.where(
            hits > 0, (first[query] + x + (rbb - pb) * tables.harmonic_span(pb, x)) / safe, 0.0
        )
        late = pb + m - x
        last_ap = np.where(
            hits > 0, (last[query] + x + (rbb - late) * tables.harmonic_span(late, x)) / safe, 0.0
        )
    tie = np.bincount(query, probability * expected_ap, minlength=count)
    optimistic = np.maximum.reduceat(first_ap, offsets)
    pessimistic = np.minimum.reduceat(last_ap, offsets)
    return tie, optimistic, pessimistic

