"""Retrieval metrics for binary codes, exact to the definitions of PROTOCOLS.md ("Metrics").

Ranking: the database is ranked for each query by Hamming distance, ties broken by database
index (a stable order). An item is relevant when it shares at least one label with the query.

Everything is computed per chunk of queries on bit-packed codes (XOR + popcount), so memory is
bounded by the chunk size and never holds a queries x database float matrix. Relevance rows
are ORs of per-class bitmaps of the database. Distances are small integers, so one sort of
packed integer keys (distance, database index, relevant bit) per query gives the exact
stable ranking; from it:

* the group boundaries give, per distance, the number of items and of relevant items: N+,
  the Hamming-radius precision/recall for every radius (the PR curve) and the tie-aware mAP
  with its bounds in closed form (He et al., CVPR 2018, plus an exact hypergeometric
  treatment of the group that the cut-off k splits);
* the positions of the relevant items give mAP@k, mAP over the whole ranking and R_k.

:func:`mean_average_precision` (mAP@k alone, for per-epoch monitoring) sorts only the items
within the distance of the k-th item, found from a 1/8 sample of the distances.

Conventions (also in PROTOCOLS.md): AP@k = (1/R_k) sum_{i<=k} rel_i P@i, and a query with
R_k = 0 counts as 0 in the mean over all queries; a cut-off k larger than the database is
clipped to the database size (for mAP@k, P@k and R@k alike, so P@k divides by the database
size there); recall is 0 for a query with no relevant item (N+ = 0); precision within a
radius is 0 when no item lies within it (the query stays in the mean).

Optimistic / pessimistic mAP@k are the best and worst AP@k over all orders inside ties. With
k = all they are "relevant first / last inside ties". With a cut-off inside a tie group they
are not always that: AP@k divides by R_k, so letting one more relevant item of the cut group
into the top k can lower AP@k (it enters near position k with a low precision). The bounds
therefore also choose how many relevant items of the cut group enter the top k; this keeps
optimistic >= tie-aware >= pessimistic, which the plain relevant-first/last orders violate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hashbench.codes import to_bits
from hashbench.errors import UserError
from hashbench.labels import to_multi_hot

__all__ = ["DEFAULT_KS", "RetrievalResult", "evaluate", "mean_average_precision"]

DEFAULT_KS: tuple[int, ...] = (1, 10, 100, 1000)

# Query x database pairs per chunk when no chunk size is given. A chunk holds its distances
# (1 byte per pair) and relevance bits (1/8 byte), about 28 MB, while per-query buffers are
# O(database); large enough that numpy's per-call overhead is negligible.
_CHUNK_PAIRS = 24 * 2**20


# --------------------------------------------------------------------------------------------
# result


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (plain floats, ints, lists, string keys)."""
        return {
            "map": float(self.map),
            "map_k": int(self.map_k),
            "topk": None if self.topk is None else int(self.topk),
            "map_all": float(self.map_all),
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


# --------------------------------------------------------------------------------------------
# input preparation


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor on any device
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _packed_words(codes: Any, bits: int | None, name: str) -> tuple[np.ndarray, int]:
    """Codes as uint64 words (n, ceil(bits/64)) with zero padding, and the bit length."""
    array = _to_numpy(codes)
    if array.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (n, bits); got shape {array.shape}")
    packed_bytes = None if bits is None else (bits + 7) // 8
    is_packed = (
        array.dtype == np.uint8
        and bits is not None
        and array.shape[1] == packed_bytes
        # bits == 1: one column is both layouts; packed codes hold 0/128, unpacked 0/1
        and (array.shape[1] != bits or not np.isin(array, (0, 1)).all() or not array.any())
    )
    if is_packed:
        packed = np.ascontiguousarray(array)
        if bits % 8:
            # Padding bits must not count in distances; np.packbits leaves them zero but
            # packed codes from elsewhere might not.
            packed = packed.copy()
            packed[:, -1] &= np.uint8((0xFF << (8 - bits % 8)) & 0xFF)
    else:
        if bits is not None and array.dtype == np.uint8 and array.shape[1] not in (bits,):
            raise UserError(
                f"{name} has {array.shape[1]} columns: neither {bits} bits nor "
                f"{packed_bytes} packed bytes (uint8) for bits={bits}"
            )
        if bits is None and array.dtype == np.uint8 and array.size and array.max() > 1:
            raise UserError(
                f"{name} looks bit-packed (uint8 values above 1); give the code length "
                "(bits=..., or --bits on the command line)"
            )
        unpacked = to_bits(array, bits, name=name)
        bits = unpacked.shape[1]
        packed = np.packbits(unpacked, axis=1)
    if bits < 1:
        raise UserError(f"{name} has no bits")
    words = -(-packed.shape[1] // 8)
    padded = np.zeros((packed.shape[0], words * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64), int(bits)


def _label_matrices(query_labels: Any, database_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    query = _to_numpy(query_labels)
    database = _to_numpy(database_labels)

    def width(array: np.ndarray) -> int | None:
        # class ids (n,) / (n, 1) give no width of their own; a multi-hot matrix does
        if array.ndim == 2 and not (
            array.shape[1] == 1 and array.dtype.kind in "iu" and array.max(initial=0) > 1
        ):
            return array.shape[1]
        return None

    widths = {width(query), width(database)} - {None}
    if len(widths) > 1:
        raise UserError(
            f"query labels have {width(query)} classes but database labels have "
            f"{width(database)}; pad both multi-hot matrices to the same number of classes"
        )
    num_classes = widths.pop() if widths else None
    if num_classes is None:
        # the wider of the two id ranges (bad ids are reported by to_multi_hot)
        ids_max = [
            int(np.max(a))
            for a in (query, database)
            if a.size and (a.dtype.kind in "iu" or (a.dtype.kind == "f" and np.isfinite(a).all()))
        ]
        num_classes = max(ids_max) + 1 if ids_max and max(ids_max) >= 0 else None
    return (
        to_multi_hot(query, num_classes, name="query labels"),
        to_multi_hot(database, num_classes, name="database labels"),
    )


class _Relevance:
    """Relevance (share >= 1 label) of database items to queries, as bit rows.

    The database side is kept as one bitmap over the database per class; a query's relevance
    row is the OR of the bitmaps of its classes (one for single-label data), so a whole chunk
    costs (labels per query) x N / 8 byte operations instead of N x classes.
    """

    def __init__(self, query_multi_hot: np.ndarray, database_multi_hot: np.ndarray) -> None:
        self.size = database_multi_hot.shape[0]
        self.row_bytes = -(-self.size // 8)
        # one bitmap per class, padded to whole uint64 words so ORs run 8 bytes at a time
        words = -(-self.row_bytes // 8)
        bitmaps = np.zeros((database_multi_hot.shape[1], words * 8), dtype=np.uint8)
        bitmaps[:, : self.row_bytes] = np.packbits(database_multi_hot.T, axis=1)
        self.bitmaps = bitmaps.view(np.uint64)
        self.label_count = query_multi_hot.sum(1)
        # each query's classes first, in a (queries, max labels) table
        self.query_classes = np.argsort(~query_multi_hot, axis=1, kind="stable")[
            :, : max(1, int(self.label_count.max(initial=0)))
        ]

    def bit_rows(self, rows: slice) -> np.ndarray:
        """Relevance of every database item to the queries ``rows``: packed bits (c, N/8)."""
        classes = self.query_classes[rows]
        label_count = self.label_count[rows]
        out = np.zeros((classes.shape[0], self.bitmaps.shape[1]), dtype=np.uint64)
        for slot in range(int(label_count.max(initial=0))):
            members = label_count > slot
            if members.all():
                out |= self.bitmaps[classes[:, slot]]
            else:
                out[members] |= self.bitmaps[classes[members, slot]]
        return out.view(np.uint8)[:, : self.row_bytes]


@dataclass
class _Inputs:
    query_words: np.ndarray
    database_words: np.ndarray
    bits: int
    relevance: _Relevance

    @property
    def num_queries(self) -> int:
        return self.query_words.shape[0]

    @property
    def num_database(self) -> int:
        return self.database_words.shape[0]


def _checked_labels(
    query_rows: int, database_rows: int, query_bits: int, database_bits: int, query_labels: Any, database_labels: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot labels, after checking that codes and labels agree (for the CPU and GPU paths)."""
    if query_bits != database_bits:
        raise UserError(
            f"query codes have {query_bits} bits but database codes have {database_bits}; "
            "both must come from the same model and code length"
        )
    query_multi_hot, database_multi_hot = _label_matrices(query_labels, database_labels)
    for what, rows, labels in (("query", query_rows, query_multi_hot), ("database", database_rows, database_multi_hot)):
        if rows != labels.shape[0]:
            raise UserError(
                f"{what} codes have {rows} rows but {what} labels have "
                f"{labels.shape[0]}; each item needs one code and one label row"
            )
    if query_rows == 0:
        raise UserError("there are no queries (query codes have 0 rows)")
    if database_rows == 0:
        raise UserError("the database is empty (database codes have 0 rows)")
    return query_multi_hot, database_multi_hot


def _prepare(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    bits: int | None,
) -> _Inputs:
    if bits is not None and (
        isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1
    ):
        raise UserError(f"bits must be a positive integer; got {bits!r}")
    query_words, query_bits = _packed_words(query_codes, bits, "query codes")
    database_words, database_bits = _packed_words(database_codes, bits, "database codes")
    query_multi_hot, database_multi_hot = _checked_labels(
        query_words.shape[0], database_words.shape[0], query_bits, database_bits, query_labels, database_labels
    )
    return _Inputs(
        query_words, database_words, query_bits, _Relevance(query_multi_hot, database_multi_hot)
    )


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# building blocks


def _hamming(query_words: np.ndarray, database_words: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Hamming distances (c, N) into ``out`` (uint8 or uint16) by XOR and popcount.

    Tiled so that the uint64 XOR buffer stays in cache; the popcount writes straight into
    the small-integer output.
    """
    count, words = query_words.shape
    size = database_words.shape[0]
    tile, rows = 16384, 4
    buffer = np.empty((rows, min(tile, size)), dtype=np.uint64)
    direct = words == 1 and out.dtype == np.uint8
    popcount = None if direct else np.empty(buffer.shape, dtype=np.uint8)
    for row in range(0, count, rows):
        row_stop = min(row + rows, count)
        for start in range(0, size, tile):
            stop = min(start + tile, size)
            buf = buffer[: row_stop - row, : stop - start]
            target = out[row:row_stop, start:stop]
            for w in range(words):
                np.bitwise_xor(
                    query_words[row:row_stop, w, None], database_words[None, start:stop, w], out=buf
                )
                if direct:
                    np.bitwise_count(buf, out=target)
                    continue
                counts = popcount[: row_stop - row, : stop - start]
                np.bitwise_count(buf, out=counts)
                if w == 0:
                    np.copyto(target, counts)
                else:
                    np.add(target, counts, out=target)
    return out


def _distance_dtype(bits: int) -> type:
    return np.uint8 if bits <= 255 else np.uint16


def _row_histograms(values: np.ndarray, bins: int) -> np.ndarray:
    """Per-row counts of small non-negative integers: (c, bins) int64.

    One bincount per row: the intp copy bincount makes of one row stays in cache, which is
    faster than one bincount over the chunk with row offsets.
    """
    out = np.empty((values.shape[0], bins), dtype=np.int64)
    for row in range(values.shape[0]):
        out[row] = np.bincount(values[row], minlength=bins)
    return out


def _guess_thresholds(distances: np.ndarray, depth: int, groups: int) -> np.ndarray:
    """A distance per query that very likely has >= depth items at or below it.

    From the histogram of a systematic 1/8 sample, with a margin of about four standard
    deviations; a query where the guess falls short is redone exactly by the caller.
    """
    size = distances.shape[1]
    stride = 8 if size >= 64 * 8 else 1
    sample = np.ascontiguousarray(distances[:, ::stride])
    cumulative = np.cumsum(_row_histograms(sample, groups), axis=1)
    expected = sample.shape[1] * depth / size
    needed = expected + 4.0 * math.sqrt(expected) + 1.0
    guess = np.argmax(cumulative >= needed, axis=1)
    guess[cumulative[:, -1] < needed] = groups - 1
    return guess


def _key_layout(size: int, groups: int) -> tuple[type, int]:
    """Sort keys hold (distance, database index, relevant bit) in one unsigned integer:
    the dtype that fits and the shift of the distance."""
    shift = max(1, (size - 1).bit_length()) + 1
    key_type = np.uint32 if shift + max(1, (groups - 1).bit_length()) <= 32 else np.uint64
    return key_type, shift


def _head_average_precision(
    distances: np.ndarray, bit_rows: np.ndarray, thresholds: np.ndarray, depth: int, groups: int
) -> np.ndarray:
    """AP@depth per query (c,) from the items within each query's threshold distance only.

    A threshold with fewer than ``depth`` items within it (a sampled guess that fell short)
    is replaced by the exact one for that query.
    """
    count, size = distances.shape
    key_type, shift = _key_layout(size, groups)
    base = np.arange(size, dtype=key_type) << key_type(1)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    flags = np.empty(depth, dtype=bool)
    out = np.zeros(count)
    # same dtype as the distances: comparing with an int64 would convert every distance
    thresholds = np.minimum(thresholds, np.iinfo(distances.dtype).max).astype(distances.dtype)
    for row in range(count):
        row_distances = distances[row]
        index = np.flatnonzero(row_distances <= thresholds[row])
        if index.size < depth:
            cumulative = np.cumsum(np.bincount(row_distances))
            exact = int(np.argmax(cumulative >= depth))
            index = np.flatnonzero(row_distances <= exact)
        relevant = np.unpackbits(bit_rows[row], count=size)
        # sort keys (distance, index, relevant) of the candidates only
        keys = np.left_shift(row_distances[index], shift, dtype=key_type)
        keys |= base[index]
        keys |= relevant[index]
        keys.sort()
        np.bitwise_and(keys[:depth], 1, out=flags, casting="unsafe")
        positions = np.flatnonzero(flags)
        if positions.size:
            precision = positions + 1.0
            np.divide(ranks[: positions.size], precision, out=precision)
            out[row] = precision.sum() / positions.size
    return out


@dataclass
class _Ranking:
    """What one query chunk's whole rankings give (ties by database index)."""

    counts: np.ndarray  # (c, groups) items at each distance
    relevant_counts: np.ndarray  # (c, groups) relevant items at each distance
    ap: np.ndarray  # (c,) AP@map_k
    ap_all: np.ndarray  # (c,) AP over the whole ranking
    r_at_k: np.ndarray  # (c, len(ks)) relevant items in the top k


def _whole_ranking(
    distances: np.ndarray,
    bit_rows: np.ndarray,
    groups: int,
    map_k: int,
    ks: Sequence[int],
) -> _Ranking:
    """Rank the whole database for each query of a chunk, one sort per query.

    The sort key of item i is (distance, i, relevant) packed into one unsigned integer, so a
    plain (SIMD) sort of distinct keys yields the stable ranking with the relevance bit
    riding along. From the sorted keys, the group boundaries (searchsorted on distance) give
    the per-distance counts and the positions of the relevant items give AP@k, AP@all and
    R_k, all without a per-item Python loop.
    """
    count, size = distances.shape
    key_type, shift = _key_layout(size, groups)
    base = np.arange(size, dtype=key_type) << key_type(1)
    group_keys = np.arange(groups + 1, dtype=key_type) << key_type(shift)
    ranks = np.arange(1, size + 1, dtype=np.float64)
    ks_array = np.asarray(ks, dtype=np.intp)
    keys = np.empty(size, dtype=key_type)
    flags = np.empty(size, dtype=bool)
    counts = np.empty((count, groups), dtype=np.int64)
    relevant_counts = np.empty((count, groups), dtype=np.int64)
    ap = np.zeros(count)
    ap_all = np.zeros(count)
    r_at_k = np.empty((count, ks_array.size), dtype=np.int64)
    for row in range(count):
        np.left_shift(distances[row], shift, out=keys, dtype=key_type)
        np.bitwise_or(keys, base, out=keys)
        np.bitwise_or(keys, np.unpackbits(bit_rows[row], count=size), out=keys)
        keys.sort()
        starts = np.searchsorted(keys, group_keys)
        counts[row] = np.diff(starts)
        np.bitwise_and(keys, 1, out=flags, casting="unsafe")
        positions = np.flatnonzero(flags)  # 0-based ranks of the relevant items
        relevant_counts[row] = np.diff(np.searchsorted(positions, starts))
        r_at_k[row] = np.searchsorted(positions, ks_array)
        if positions.size:
            # precision at the t-th relevant item: t / (its rank)
            precision = positions + 1.0
            np.divide(ranks[: positions.size], precision, out=precision)
            ap_all[row] = precision.sum() / positions.size
            found = int(np.searchsorted(positions, map_k))
            if found:
                ap[row] = precision[:found].sum() / found
    return _Ranking(counts, relevant_counts, ap, ap_all, r_at_k)


class _Tables:
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


def _tie_aware(
    counts: np.ndarray, relevant_counts: np.ndarray, depth: int, tables: _Tables
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected, best and worst AP@depth per query over random orders inside distance ties.

    counts / relevant_counts: (c, groups) items and relevant items at each distance.
    Groups entirely inside the top ``depth`` contribute the closed form of He et al. (CVPR
    2018); for the group cut by the boundary, the number X of its relevant items entering the
    top ``depth`` is hypergeometric, and since AP@k divides by R_k = R_before + X the
    expectation is taken exactly by conditioning on every value of X.
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
    tie_aware = np.bincount(query, probability * expected_ap, minlength=count)
    optimistic = np.maximum.reduceat(first_ap, offsets)
    pessimistic = np.minimum.reduceat(last_ap, offsets)
    return tie_aware, optimistic, pessimistic


# --------------------------------------------------------------------------------------------
# evaluation


# evaluation


@dataclass
class _ChunkResult:
    ap: np.ndarray  # (c,) AP@map_k, ties by index
    ap_all: np.ndarray  # (c,) AP over the whole ranking, ties by index
    tie: np.ndarray
    optimistic: np.ndarray
    pessimistic: np.ndarray
    r_at_k: np.ndarray  # (c, len(ks))
    positives: np.ndarray  # (c,) N+
    within: np.ndarray  # (c, groups) items at distance <= r
    relevant_within: np.ndarray  # (c, groups)


def _default_chunk(size: int) -> int:
    return max(1, min(4096, _CHUNK_PAIRS // max(size, 1)))


def _workers() -> int:
    """Threads for query chunks: HASHBENCH_THREADS if set, else the usable cores, at most 4.

    numpy releases the GIL inside its loops and sorts, so threads use several cores; each
    holds one chunk (about 30 MB at the default size), so memory stays bounded.
    """
    setting = os.environ.get("HASHBENCH_THREADS", "").strip()
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            raise UserError(f"HASHBENCH_THREADS must be a positive integer; got {setting!r}")
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def _chunks(count: int, chunk_size: int) -> list[slice]:
    return [slice(start, min(start + chunk_size, count)) for start in range(0, count, chunk_size)]


def _run_chunks(function: Any, slices: Iterable[slice]) -> list[Any]:
    slices = list(slices)
    workers = min(_workers(), len(slices))
    if workers <= 1:
        return [function(part) for part in slices]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, slices))


def evaluate(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    *,
    bits: int | None = None,
    topk: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    radius: int = 2,
    chunk_size: int | None = None,
) -> RetrievalResult:
    """Evaluate Hamming ranking of ``database_codes`` for every query.

    Codes: bool, {0,1} or {-1,+1} matrices (n, bits), numpy or torch, or packed uint8
    (n, ceil(bits/8)) as produced by :func:`hashbench.codes.pack` together with ``bits``.
    Labels: class ids (n,) or multi-hot (n, classes); query and database must use the same
    classes. ``topk`` is the mAP cut-off (None: the whole database); ``ks`` the cut-offs of
    P@k / R@k; any cut-off larger than the database is clipped to the database size (so
    P@k divides by the database size there). ``radius`` is the headline Hamming radius;
    ``chunk_size`` the number of queries handled at once (memory grows with it; results do
    not depend on it). When both code matrices are torch tensors on a CUDA device, the
    same metrics are computed there.
    """
    ks = tuple(_check_positive(k, "each k of ks") for k in ks)
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise UserError(f"radius must be a non-negative integer; got {radius!r}")
    if topk is not None:
        _check_positive(topk, "topk")
    if chunk_size is not None:
        _check_positive(chunk_size, "chunk_size")
    if _on_cuda(query_codes, database_codes):
        parts, bits_used, size = _evaluate_parts_torch(
            query_codes, database_codes, query_labels, database_labels, bits, topk, ks, chunk_size
        )
        return _summarise(parts, bits_used, size, topk, ks, int(radius))

    inputs = _prepare(query_codes, database_codes, query_labels, database_labels, bits)
    size = inputs.num_database
    map_k = size if topk is None else min(int(topk), size)
    chunk = _default_chunk(size) if chunk_size is None else int(chunk_size)
    ks_clipped = tuple(min(k, size) for k in ks)
    groups = inputs.bits + 1
    tables = _Tables(size)
    dtype = _distance_dtype(inputs.bits)

    def run(rows: slice) -> _ChunkResult:
        query_words = inputs.query_words[rows]
        count = query_words.shape[0]
        distances = _hamming(
            query_words, inputs.database_words, np.empty((count, size), dtype=dtype)
        )
        ranking = _whole_ranking(
            distances, inputs.relevance.bit_rows(rows), groups, map_k, ks_clipped
        )
        return _chunk_result(ranking, map_k, tables)

    parts = _run_chunks(run, _chunks(inputs.num_queries, chunk))
    return _summarise(parts, inputs.bits, size, topk, ks, int(radius))


def _chunk_result(ranking: _Ranking, map_k: int, tables: _Tables) -> _ChunkResult:
    tie, optimistic, pessimistic = _tie_aware(
        ranking.counts, ranking.relevant_counts, map_k, tables
    )
    return _ChunkResult(
        ap=ranking.ap,
        ap_all=ranking.ap_all,
        tie=tie,
        optimistic=optimistic,
        pessimistic=pessimistic,
        r_at_k=ranking.r_at_k,
        positives=ranking.relevant_counts.sum(1),
        within=np.cumsum(ranking.counts, axis=1),
        relevant_within=np.cumsum(ranking.relevant_counts, axis=1),
    )


def _summarise(
    parts: Sequence[_ChunkResult],
    bits: int,
    size: int,
    topk: int | None,
    ks: Sequence[int],
    radius: int,
) -> RetrievalResult:
    """Means over all queries of the per-query values of every chunk."""

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(part, name) for part in parts])

    map_k = size if topk is None else min(int(topk), size)
    ks_clipped = tuple(min(k, size) for k in ks)
    positives = joined("positives").astype(np.float64)[:, None]
    within = joined("within").astype(np.float64)
    relevant_within = joined("relevant_within").astype(np.float64)
    r_at_k = joined("r_at_k").astype(np.float64)
    recall_radius = np.divide(
        relevant_within, positives, out=np.zeros_like(relevant_within), where=positives > 0
    )
    precision_radius = np.divide(
        relevant_within, within, out=np.zeros_like(within), where=within > 0
    )
    recall_k = np.divide(r_at_k, positives, out=np.zeros_like(r_at_k), where=positives > 0)
    precision_k = r_at_k / np.array(ks_clipped, dtype=np.float64)[None, :] if ks else r_at_k
    headline = min(radius, bits)
    ap = joined("ap")
    return RetrievalResult(
        map=float(ap.mean()),
        map_k=map_k,
        map_all=float(joined("ap_all").mean()),
        map_tie_aware=float(joined("tie").mean()),
        map_optimistic=float(joined("optimistic").mean()),
        map_pessimistic=float(joined("pessimistic").mean()),
        precision_at_k={k: float(v) for k, v in zip(ks, precision_k.mean(0), strict=True)},
        recall_at_k={k: float(v) for k, v in zip(ks, recall_k.mean(0), strict=True)},
        radius=radius,
        precision_radius=float(precision_radius[:, headline].mean()),
        recall_radius=float(recall_radius[:, headline].mean()),
        pr_radius=np.arange(bits + 1),
        pr_precision=precision_radius.mean(0),
        pr_recall=recall_radius.mean(0),
        num_queries=ap.size,
        num_database=size,
        bits=bits,
        topk=None if topk is None else int(topk),
        per_query_ap=ap,
    )


def _on_cuda(*arrays: Any) -> bool:
    """True when every array is a torch tensor on a CUDA device (without importing torch)."""
    return all(getattr(getattr(a, "device", None), "type", None) == "cuda" for a in arrays)


def mean_average_precision(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    *,
    bits: int | None = None,
    topk: int | None = None,
    chunk_size: int | None = None,
) -> float:
    """mAP@topk only (ties by database index), the cheap metric for per-epoch monitoring.

    Same inputs and conventions as :func:`evaluate`; equal to ``evaluate(...).map``.
    Relevance is looked up only for the items that enter the top ``topk``, and the distance
    of the topk-th item is found from a sample of the distances instead of a full histogram.
    """
    if _on_cuda(query_codes, database_codes):
        return evaluate(
            query_codes,
            database_codes,
            query_labels,
            database_labels,
            bits=bits,
            topk=topk,
            ks=(),
            chunk_size=chunk_size,
        ).map
    inputs = _prepare(query_codes, database_codes, query_labels, database_labels, bits)
    size = inputs.num_database
    map_k = size if topk is None else min(_check_positive(topk, "topk"), size)
    chunk = (
        _default_chunk(size) if chunk_size is None else _check_positive(chunk_size, "chunk_size")
    )
    groups = inputs.bits + 1
    dtype = _distance_dtype(inputs.bits)

    def run(rows: slice) -> np.ndarray:
        query_words = inputs.query_words[rows]
        count = query_words.shape[0]
        distances = _hamming(
            query_words, inputs.database_words, np.empty((count, size), dtype=dtype)
        )
        bit_rows = inputs.relevance.bit_rows(rows)
        if map_k == size:
            return _whole_ranking(distances, bit_rows, groups, map_k, ()).ap
        thresholds = _guess_thresholds(distances, map_k, groups)
        return _head_average_precision(distances, bit_rows, thresholds, map_k, groups)

    return float(np.concatenate(_run_chunks(run, _chunks(inputs.num_queries, chunk))).mean())


# --------------------------------------------------------------------------------------------
# the same metrics with torch on a CUDA device


def _torch_bits(codes: Any, bits: int | None, name: str) -> Any:
    """CUDA codes -> bool tensor (n, bits) on the same device, with the checks of to_bits."""
    import torch

    if codes.ndim != 2:
        raise UserError(f"{name} must be a 2-D array (n, bits); got shape {tuple(codes.shape)}")
    if (
        codes.dtype == torch.uint8
        and bits is not None
        and codes.shape[1] == (bits + 7) // 8
        and codes.shape[1] != bits
    ):
        shifts = torch.arange(7, -1, -1, device=codes.device, dtype=torch.uint8)
        unpacked = (codes.unsqueeze(-1) >> shifts) & 1
        return unpacked.reshape(codes.shape[0], -1)[:, :bits].bool()
    if bits is not None and codes.shape[1] != bits:
        raise UserError(f"{name} has {codes.shape[1]} bits per row, expected {bits}")
    if codes.dtype == torch.bool:
        return codes
    if codes.is_floating_point() and not bool(torch.isfinite(codes).all()):
        raise UserError(f"{name} contains NaN or infinite values")
    if codes.is_complex():
        raise UserError(f"{name} has dtype {codes.dtype}; expected bool, {{0,1}} or {{-1,+1}}")
    values = set(torch.unique(codes).tolist())
    if values <= {0, 1} or values <= {-1, 1}:
        return codes == 1
    if values <= {-1, 0, 1}:
        zeros = int((codes == 0).sum())
        raise UserError(
            f"{name} mixes -1, 0 and +1 ({zeros} zeros): a zero from sign() is not a bit; "
            "binarise with x >= 0 (or x > 0) instead"
        )
    shown = ", ".join(str(v) for v in sorted(values)[:5])
    raise UserError(f"{name} must hold only {{0,1}} or {{-1,+1}} values; found {shown}...")


def _evaluate_parts_torch(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    bits: int | None,
    topk: int | None,
    ks: Sequence[int],
    chunk_size: int | None,
) -> tuple[list[_ChunkResult], int, int]:
    """Per-chunk results like the CPU path, computed on the codes' CUDA device.

    Distances come from a +-1 matmul (exact: every partial sum is an integer of magnitude
    <= bits, representable in float16 up to 2048 bits), relevance from a multi-hot matmul,
    the stable ranking from one sort of int64 keys (distance, index, relevant) per query;
    only the (queries x groups) histograms go back to the CPU for the tie-aware closed form.
    """
    import torch

    query_bits = _torch_bits(query_codes, bits, "query codes")
    database_bits = _torch_bits(database_codes, bits, "database codes")
    code_bits = int(query_bits.shape[1])
    query_multi_hot, database_multi_hot = _checked_labels(
        query_bits.shape[0], database_bits.shape[0], code_bits, int(database_bits.shape[1]), query_labels, database_labels
    )

    device = query_bits.device
    size = int(database_bits.shape[0])
    map_k = size if topk is None else min(int(topk), size)
    ks_clipped = [min(k, size) for k in ks]
    groups = code_bits + 1
    # integers up to 2048 are exact in float16
    code_type = torch.float16 if code_bits <= 2048 else torch.float32
    label_type = torch.float16 if query_multi_hot.shape[1] <= 2048 else torch.float32
    query_signs = query_bits.to(code_type) * 2 - 1
    database_signs = (database_bits.to(code_type) * 2 - 1).T.contiguous()
    query_hot = torch.as_tensor(query_multi_hot, device=device).to(label_type)
    database_hot = torch.as_tensor(database_multi_hot, device=device).to(label_type).T.contiguous()
    shift = max(1, (size - 1).bit_length()) + 1
    base = torch.arange(size, device=device, dtype=torch.int64) << 1
    ranks = torch.arange(1, size + 1, device=device, dtype=torch.float64)
    chunk = chunk_size or max(1, min(4096, 2**25 // size))
    tables = _Tables(size)
    parts = []
    for start in range(0, query_bits.shape[0], chunk):
        rows = slice(start, min(start + chunk, query_bits.shape[0]))
        dot = (query_signs[rows] @ database_signs).float()
        distances = torch.round((code_bits - dot) / 2).to(torch.int64)
        del dot
        relevant = (query_hot[rows] @ database_hot) > 0
        keys = (distances << shift) | base | relevant.to(torch.int64)
        del distances, relevant
        keys = torch.sort(keys, dim=1).values
        flags = (keys & 1).bool()
        sorted_distances = keys >> shift
        del keys
        count = flags.shape[0]
        counts = torch.zeros((count, groups), device=device, dtype=torch.int64)
        counts.scatter_add_(1, sorted_distances, torch.ones_like(sorted_distances))
        relevant_counts = torch.zeros_like(counts)
        relevant_counts.scatter_add_(1, sorted_distances, flags.to(torch.int64))
        del sorted_distances
        hits = torch.cumsum(flags, dim=1)
        precision = torch.where(flags, hits / ranks, 0.0)
        del flags
        positives = hits[:, -1]
        ap_all = torch.where(positives > 0, precision.sum(1) / positives.clamp(min=1), 0.0)
        found = hits[:, map_k - 1]
        ap = torch.where(found > 0, precision[:, :map_k].sum(1) / found.clamp(min=1), 0.0)
        r_at_k = (
            hits[:, [k - 1 for k in ks_clipped]]
            if ks_clipped
            else torch.zeros((count, 0), device=device, dtype=torch.int64)
        )
        del hits, precision
        ranking = _Ranking(
            counts=counts.cpu().numpy(),
            relevant_counts=relevant_counts.cpu().numpy(),
            ap=ap.cpu().numpy(),
            ap_all=ap_all.cpu().numpy(),
            r_at_k=r_at_k.cpu().numpy(),
        )
        parts.append(_chunk_result(ranking, map_k, tables))
    return parts, code_bits, size
