"""The result type, and how per-chunk rankings add up to it.

Each chunk of queries yields a :class:`Ranking` (per-distance histograms and the AP values
that need the exact ranking); :class:`Summary` turns it into the tie-aware values and the
per-radius precision and recall, and adds them up over all queries. Per-radius values are
summed as they come, query after query, so memory does not grow with queries x bits and the
sums do not depend on the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hashbench.metrics.tie_aware import Tables, tie_aware


@dataclass
class RetrievalResult:
    """All metrics of one evaluation. Means are over all queries.

    ``map`` is mAP at ``map_k`` with ties broken by database index; ``map_tie_aware`` is its
    exact expectation over random orders inside equal-distance groups, and
    ``map_optimistic`` / ``map_pessimistic`` are its best and worst value over those orders
    (relevant items first / last inside ties; when the cut-off splits a group, the best and
    worst number of relevant items from that group entering the top k).
    """

    map: float
    map_k: int
    map_all: float
    map_hits: float  # mean AP@k over the queries with a relevant item in the top k (NaN: none has)
    map_tie_aware: float
    map_optimistic: float
    map_pessimistic: float
    precision_at_k: dict[int, float]
    recall_at_k: dict[int, float]
    radius: int
    precision_radius: float
    recall_radius: float
    pr_radius: np.ndarray
    pr_precision: np.ndarray
    pr_recall: np.ndarray
    num_queries: int
    num_database: int
    bits: int
    topk: int | None = None
    per_query_ap: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    # Each query's own values, for confidence intervals and paired tests: "ap" (AP@k), "ap_all",
    # "ap_tie_aware" (each (queries,)) and "precision_at_k" ((queries, len(ks)), columns as ks).
    per_query: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats, ints, lists, string keys)."""
        return {
            "map": float(self.map),
            "map_k": int(self.map_k),
            "topk": None if self.topk is None else int(self.topk),
            "map_all": float(self.map_all),
            "map_hits": float(self.map_hits),
            "map_tie_aware": float(self.map_tie_aware),
            "map_optimistic": float(self.map_optimistic),
            "map_pessimistic": float(self.map_pessimistic),
            "precision_at_k": {str(k): float(v) for k, v in self.precision_at_k.items()},
            "recall_at_k": {str(k): float(v) for k, v in self.recall_at_k.items()},
            f"precision_radius{self.radius}": float(self.precision_radius),
            f"recall_radius{self.radius}": float(self.recall_radius),
            "pr_curve": {
                "radius": [int(r) for r in self.pr_radius],
                "precision": [float(p) for p in self.pr_precision],
                "recall": [float(r) for r in self.pr_recall],
            },
            "num_queries": int(self.num_queries),
            "num_database": int(self.num_database),
            "bits": int(self.bits),
        }

    def to_frame(self):
        """One-row pandas DataFrame of the scalar metrics (P@k / R@k as ``P@k`` / ``R@k``)."""
        import pandas as pd

        row = {k: v for k, v in self.to_dict().items() if not isinstance(v, dict)}
        row.update({f"P@{k}": v for k, v in self.precision_at_k.items()})
        row.update({f"R@{k}": v for k, v in self.recall_at_k.items()})
        return pd.DataFrame([row])


@dataclass
class Ranking:
    """What one query chunk's rankings give (ties broken by database index)."""

    counts: np.ndarray  # (c, groups) items at each distance
    relevant_counts: np.ndarray  # (c, groups) relevant items at each distance
    ap: np.ndarray  # (c,) AP@map_k
    ap_all: np.ndarray  # (c,) AP over the whole ranking
    r_at_k: np.ndarray  # (c, len(ks)) relevant items in the top k


@dataclass
class ChunkResult:
    """Per-query values of one chunk, and its per-radius values still per query."""

    ap: np.ndarray  # (c,) AP@map_k, ties by index
    ap_all: np.ndarray  # (c,) AP over the whole ranking, ties by index
    tie: np.ndarray  # (c,) expected AP@map_k over orders inside ties
    optimistic: np.ndarray
    pessimistic: np.ndarray
    r_at_k: np.ndarray  # (c, len(ks))
    positives: np.ndarray  # (c,) N+
    precision_radius: np.ndarray  # (c, groups) precision within each radius
    recall_radius: np.ndarray  # (c, groups)


def chunk_result(
    ranking: Ranking, map_k: int, tables: Tables, boundary_terms: Callable | None = None
) -> ChunkResult:
    tie, optimistic, pessimistic = tie_aware(
        ranking.counts, ranking.relevant_counts, map_k, tables, boundary_terms
    )
    positives = ranking.relevant_counts.sum(1)
    within = np.cumsum(ranking.counts, axis=1).astype(np.float64)
    relevant_within = np.cumsum(ranking.relevant_counts, axis=1).astype(np.float64)
    positives_column = positives.astype(np.float64)[:, None]
    return ChunkResult(
        ap=ranking.ap,
        ap_all=ranking.ap_all,
        tie=tie,
        optimistic=optimistic,
        pessimistic=pessimistic,
        r_at_k=ranking.r_at_k,
        positives=positives,
        precision_radius=np.divide(
            relevant_within, within, out=np.zeros_like(within), where=within > 0
        ),
        recall_radius=np.divide(
            relevant_within,
            positives_column,
            out=np.zeros_like(relevant_within),
            where=positives_column > 0,
        ),
    )


PER_QUERY = ("ap", "ap_all", "tie", "optimistic", "pessimistic", "r_at_k", "positives")


def _add_rows(total: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """total + rows[0] + rows[1] + ...: numpy reduces over the first axis one row after
    another, so a sum over all queries is the same however they were chunked."""
    return np.add.reduce(np.concatenate((total[None, :], rows)), axis=0)


class Summary:
    """Means over all queries of the per-query values of every chunk, added in query order."""

    def __init__(
        self,
        bits: int,
        size: int,
        map_k: int,
        topk: int | None,
        ks: Sequence[int],
        radius: int,
        boundary_terms: Callable | None = None,
    ) -> None:
        """``boundary_terms``: the compiled tie-aware terms (see :func:`tie_aware`), or None."""
        self.bits = bits
        self.boundary_terms = boundary_terms
        self.size = size
        self.map_k = map_k
        self.topk = topk
        self.ks = tuple(ks)
        self.radius = radius
        self.tables = Tables(size)
        # per-query values of the chunks so far; per-radius values only as running sums
        self.per_query: dict[str, list[np.ndarray]] = {name: [] for name in PER_QUERY}
        self.precision_total = np.zeros(bits + 1)
        self.recall_total = np.zeros(bits + 1)

    def chunk_result(self, ranking: Ranking) -> ChunkResult:
        return chunk_result(ranking, self.map_k, self.tables, self.boundary_terms)

    def add(self, part: ChunkResult) -> None:
        """Add the next chunk (chunks must come in query order)."""
        self.precision_total = _add_rows(self.precision_total, part.precision_radius)
        self.recall_total = _add_rows(self.recall_total, part.recall_radius)
        for name, values in self.per_query.items():
            values.append(getattr(part, name))

    def result(self) -> RetrievalResult:
        def joined(name: str) -> np.ndarray:
            return np.concatenate(self.per_query[name])

        ks_clipped = tuple(min(k, self.size) for k in self.ks)
        positives = joined("positives").astype(np.float64)[:, None]
        r_at_k = joined("r_at_k").astype(np.float64)
        recall_k = np.divide(r_at_k, positives, out=np.zeros_like(r_at_k), where=positives > 0)
        precision_k = r_at_k / np.array(ks_clipped, dtype=np.float64)[None, :]
        ap = joined("ap")
        pr_precision = self.precision_total / ap.size
        pr_recall = self.recall_total / ap.size
        headline = min(self.radius, self.bits)
        return RetrievalResult(
            map=float(ap.mean()),
            map_k=self.map_k,
            map_all=float(joined("ap_all").mean()),
            # AP@k > 0 exactly when the top k holds a relevant item.
            map_hits=float(ap[ap > 0].mean()) if np.any(ap > 0) else float("nan"),
            map_tie_aware=float(joined("tie").mean()),
            map_optimistic=float(joined("optimistic").mean()),
            map_pessimistic=float(joined("pessimistic").mean()),
            precision_at_k={
                k: float(v) for k, v in zip(self.ks, precision_k.mean(0), strict=True)
            },
            recall_at_k={k: float(v) for k, v in zip(self.ks, recall_k.mean(0), strict=True)},
            radius=self.radius,
            precision_radius=float(pr_precision[headline]),
            recall_radius=float(pr_recall[headline]),
            pr_radius=np.arange(self.bits + 1),
            pr_precision=pr_precision,
            pr_recall=pr_recall,
            num_queries=ap.size,
            num_database=self.size,
            bits=self.bits,
            topk=self.topk,
            per_query_ap=ap,
            per_query={
                "ap": ap,
                "ap_all": joined("ap_all"),
                "ap_tie_aware": joined("tie"),
                "precision_at_k": precision_k,
            },
        )
