"""CPU kernels: Hamming distances by XOR and popcount, and exact rankings by one sort per query.

Distances are small integers, so one sort of packed integer keys (distance, database index,
relevant bit) per query gives the exact stable ranking (ties broken by database index) with
the relevance riding along; the group boundaries and the positions of the relevant items
then give every metric without a per-item Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hashbench.metrics.inputs import key_shift
from hashbench.metrics.result import Ranking


def hamming(query_words: np.ndarray, database_words: np.ndarray, bits: int) -> np.ndarray:
    """Hamming distances (c, N) in :func:`distance_dtype` by XOR and popcount.

    Tiled so that the uint64 XOR buffer stays in cache; the popcount writes straight into
    the small-integer output.
    """
    out = np.empty((query_words.shape[0], database_words.shape[0]), dtype=distance_dtype(bits))
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


def distance_dtype(bits: int) -> type:
    """The smallest unsigned integer type that holds every distance 0..bits."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if bits <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def row_histograms(values: np.ndarray, bins: int) -> np.ndarray:
    """Per-row counts of small non-negative integers: (c, bins) int64.

    One bincount per row: the intp copy bincount makes of one row stays in cache, which is
    faster than one bincount over the chunk with row offsets.
    """
    out = np.empty((values.shape[0], bins), dtype=np.int64)
    for row in range(values.shape[0]):
        out[row] = np.bincount(values[row], minlength=bins)
    return out


def guess_thresholds(distances: np.ndarray, depth: int, groups: int) -> np.ndarray:
    """A distance per query that very likely has >= depth items at or below it.

    From the histogram of a systematic 1/8 sample, with a margin of about four standard
    deviations; a query where the guess falls short is redone exactly by the caller.
    """
    size = distances.shape[1]
    stride = 8 if size >= 64 * 8 else 1
    sample = np.ascontiguousarray(distances[:, ::stride])
    cumulative = np.cumsum(row_histograms(sample, groups), axis=1)
    expected = sample.shape[1] * depth / size
    needed = expected + 4.0 * math.sqrt(expected) + 1.0
    guess = np.argmax(cumulative >= needed, axis=1)
    guess[cumulative[:, -1] < needed] = groups - 1
    return guess


def key_layout(size: int, groups: int) -> tuple[type, int]:
    """Sort keys hold (distance, database index, relevant bit) in one unsigned integer:
    the dtype that fits and the shift of the distance (checked to fit 63 bits by prepare)."""
    shift = key_shift(size)
    # groups << shift, the end of the last group, must fit too
    key_type = np.uint32 if shift + groups.bit_length() <= 32 else np.uint64
    return key_type, shift


def head_average_precision(
    distances: np.ndarray, bit_rows: np.ndarray, thresholds: np.ndarray, depth: int, groups: int
) -> np.ndarray:
    """AP@depth per query (c,) from the items within each query's threshold distance only.

    A threshold with fewer than ``depth`` items within it (a sampled guess that fell short)
    is replaced by the exact one for that query.
    """
    count, size = distances.shape
    key_type, shift = key_layout(size, groups)
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


def whole_ranking(
    distances: np.ndarray,
    bit_rows: np.ndarray,
    groups: int,
    map_k: int,
    ks: Sequence[int],
) -> Ranking:
    """Rank the whole database for each query of a chunk, one sort per query.

    The sort key of item i is (distance, i, relevant) packed into one unsigned integer, so a
    plain (SIMD) sort of distinct keys yields the stable ranking with the relevance bit
    riding along. From the sorted keys, the group boundaries (searchsorted on distance) give
    the per-distance counts and the positions of the relevant items give AP@k, AP@all and
    R_k, all without a per-item Python loop.
    """
    count, size = distances.shape
    key_type, shift = key_layout(size, groups)
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
    return Ranking(counts, relevant_counts, ap, ap_all, r_at_k)
