"""Confidence intervals and paired tests on per-query values, over queries and seeds.

A cell of a results table is the mean over seeds of a mean over queries. Both sources of
variation are resampled:

* :func:`bootstrap_interval`: a two-level bootstrap — seeds drawn with replacement, then
  queries drawn with replacement (the same query draw for every seed, since the seeds of a
  cell share one split) — giving a percentile interval of the cell's mean.
* :func:`paired_test`: two methods on the same queries. Each query's value is averaged over
  the seeds the methods share (over each method's own seeds when they share none); the
  per-query differences are tested with a sign-flip permutation test (the null hypothesis:
  the two methods are exchangeable on every query), and their mean gets a bootstrap interval
  over queries.

Every draw comes from a generator with a fixed seed, so a report is the same each time it
is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 2000
PERMUTATIONS = 5000
LEVEL = 0.95
SEED = 0
_CHUNK = 250  # draws per block, so memory stays at block × queries


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    difference: float  # mean over queries of (a − b)
    interval: Interval  # bootstrap interval of that difference
    p_value: float  # two-sided sign-flip permutation test
    queries: int
    seeds: int  # matched seeds averaged per query (0: no common seed, each method's own)


def _matrix(per_seed: list[np.ndarray]) -> np.ndarray:
    values = np.asarray(np.stack([np.asarray(v, dtype=np.float64) for v in per_seed]))
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError("per-seed values must be equal-length, non-empty vectors")
    return values


def bootstrap_interval(
    per_seed: list[np.ndarray], draws: int = BOOTSTRAP_DRAWS, level: float = LEVEL, seed: int = SEED
) -> Interval:
    """Percentile interval of mean-over-seeds(mean-over-queries) resampling seeds and queries."""
    values = _matrix(per_seed)  # seeds × queries
    seeds, queries = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty(draws)
    for start in range(0, draws, _CHUNK):
        count = min(_CHUNK, draws - start)
        chosen_queries = rng.integers(0, queries, size=(count, queries))
        chosen_seeds = rng.integers(0, seeds, size=(count, seeds))
        per_seed_means = values[:, chosen_queries].mean(axis=2).T  # count × seeds
        means[start : start + count] = np.take_along_axis(per_seed_means, chosen_seeds, axis=1).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(float(low), float(high))


def _paired_values(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    common = sorted(set(a) & set(b))
    if common:
        return _matrix([a[s] for s in common]).mean(0), _matrix([b[s] for s in common]).mean(0), len(common)
    return _matrix(list(a.values())).mean(0), _matrix(list(b.values())).mean(0), 0


def paired_test(
    a: Mapping[int, np.ndarray],
    b: Mapping[int, np.ndarray],
    permutations: int = PERMUTATIONS,
    draws: int = BOOTSTRAP_DRAWS,
    level: float = LEVEL,
    seed: int = SEED,
) -> Comparison:
    """Compare methods ``a`` and ``b`` given as ``{run seed: per-query values}`` on the same
    queries in the same order."""
    first, second, matched = _paired_values(a, b)
    if first.shape != second.shape:
        raise ValueError("the two methods were evaluated on different queries")
    differences = first - second
    observed = float(differences.mean())
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, permutations, _CHUNK):
        count = min(_CHUNK, permutations - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(count, differences.size))
        flipped = np.abs((signs * differences).mean(axis=1))
        # A small tolerance: sums in another order may differ from |observed| in the last bits.
        extreme += int(np.count_nonzero(flipped >= abs(observed) - 1e-12))
    p_value = (extreme + 1) / (permutations + 1)
    means = np.empty(draws)
    for start in range(0, draws, _CHUNK):
        count = min(_CHUNK, draws - start)
        means[start : start + count] = differences[rng.integers(0, differences.size, size=(count, differences.size))].mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Comparison(observed, Interval(float(low), float(high)), float(p_value), int(differences.size), matched)
