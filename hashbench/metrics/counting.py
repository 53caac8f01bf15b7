"""Compiled CPU kernels (numba): the exact ranking of each query by counting, O(N).

Distances are small integers (0..bits), so the stable ranking (ties broken by database
index) needs no comparison sort. Per query, in one compiled function:

1. one pass over the database in index order: the XOR + popcount distance d of each item,
   and a per-distance counter packing items (low 32 bits) and relevant items (high 32
   bits). The counter's value before an item's increment is its rank inside its distance
   group (index order is the tie order); a relevant item's (rank in group, d) is appended
   to a list, branch-free (always written, the list's length advanced by the relevant bit);
2. prefix sums over the distances: where each group starts in the ranking and how many
   relevant items come before it;
3. one pass over the relevant items (in index order): the t-th relevant item of group d,
   in index order, is hit number (relevant items before d) + t, at rank (start of d) + its
   rank in the group, so ``positions[hit]`` ends up sorted, as in the numpy kernels;
4. AP@k, AP over the whole ranking and R_k from those positions, with the precision sums
   added exactly as numpy's ``sum`` adds them (pairwise, in rank order), so every value is
   bit for bit the one of :mod:`hashbench.metrics.kernels`.

For mAP@k alone (codes of one word), pass 1 counts only the items within a distance that
holds rank k, guessed from a 1/8 sample and checked (the whole database again where it falls
short): their distances go 64 at a time into a bit mask, and only its set bits are counted.

The tie-aware terms of the distance group cut by k (one per possible number of its relevant
items entering the top k) are computed here too, in the operations and order of
:func:`hashbench.metrics.tie_aware._boundary_terms`, with numpy's exp in between.

Only imported through :mod:`hashbench.metrics.kernel_choice`, which falls back to the numpy
kernels when numba is missing or a kernel does not compile.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

# Per-distance counters pack items (low 32 bits) and relevant items (high 32 bits) in one
# uint64, and ranks are int32: the caller keeps the database within this size.
MAX_SIZE = 2**31 - 1
# unsigned throughout: numba mixes uint64 and int64 into float64, and unsigned indices skip
# the negative-index wraparound
_ONE = np.uint64(1)
_HIGH = np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)


def _jit(function):
    """``numba.njit(cache=True, nogil=True)``; without the on-disk cache where numba finds
    no writable place for it (set NUMBA_CACHE_DIR to give one), so a read-only install
    compiles in memory instead of failing."""
    # error_model="numpy": a division by zero gives inf / nan as in numpy (none is expected),
    # instead of a check before every division
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, error_model="numpy")(function)


@intrinsic
def _popcount(typingctx, value):
    """The popcount instruction (LLVM ctpop) of an integer."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return value(value), codegen


@intrinsic
def _trailing_zeros(typingctx, value):
    """The index of the lowest set bit of a non-zero integer (LLVM cttz)."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return value(value), codegen


@_jit
def _distance(query, database, item, words):
    total = np.uint64(0)
    for w in range(words):
        total += _popcount(query[w] ^ database[item, w])
    return total


@_jit
def _relevant(bit_row, item):
    """Bit ``item`` of a np.packbits row (big-endian bit order), as 0 or 1."""
    return np.uint64((bit_row[item >> 3] >> (7 - (item & 7))) & 1)


@_jit
def _block_sum(values, start, count):
    """numpy's sum of at most 128 values: eight accumulators, then the rest in order."""
    if count < 8:
        total = -0.0
        for i in range(start, start + count):
            total += values[i]
        return total
    r0 = values[start]
    r1 = values[start + 1]
    r2 = values[start + 2]
    r3 = values[start + 3]
    r4 = values[start + 4]
    r5 = values[start + 5]
    r6 = values[start + 6]
    r7 = values[start + 7]
    i = start + 8
    stop = start + count - count % 8
    while i < stop:
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < start + count:
        total += values[i]
        i += 1
    return total


@_jit
def _pairwise_sum(values, count):
    """values[:count].sum() exactly as numpy adds it, so the result is bit for bit numpy's:
    blocks of up to 128 values (:func:`_block_sum`), each longer run split in two halves (the
    first a multiple of 8 long) whose sums are added. The recursion runs on an explicit stack
    (numba's cache does not load recursive functions reliably)."""
    # frames: start, count, stage (0: new, 1: left half done, 2: both done), left half's sum
    starts = np.empty(64, dtype=np.int64)
    counts = np.empty(64, dtype=np.int64)
    stages = np.zeros(64, dtype=np.int64)
    lefts = np.empty(64)
    starts[0] = 0
    counts[0] = count
    depth = 1
    result = 0.0
    while depth:
        top = depth - 1
        size = counts[top]
        if size <= 128:
            result = _block_sum(values, starts[top], size)
            depth -= 1
            continue
        half = size // 2
        half -= half % 8
        if stages[top] == 0:
            stages[top] = 1
            starts[depth] = starts[top]
            counts[depth] = half
        elif stages[top] == 1:
            lefts[top] = result
            stages[top] = 2
            starts[depth] = starts[top] + half
            counts[depth] = size - half
        else:
            result = lefts[top] + result
            depth -= 1
            continue
        stages[depth] = 0
        depth += 1
    return result


@_jit
def _first_at_or_above(positions, count, value):
    """How many of the sorted positions[:count] are below ``value`` (np.searchsorted)."""
    low = 0
    high = count
    while low < high:
        middle = (low + high) // 2
        if positions[middle] < value:
            low = middle + 1
        else:
            high = middle
    return low


@_jit
def _tally(table, records, count, d, relevant):
    """Count one item at distance d; a relevant one's (rank inside its group) + (d << 32)
    goes to records[count], and the new count is returned (branch-free: the record is
    always written, the count advanced by the relevant bit)."""
    value = table[d]
    table[d] = value + _ONE + (relevant << _HIGH)
    records[count] = (value & _LOW) | (d << _HIGH)
    return count + relevant


@_jit
def _count(query, database, bit_row, table, records):
    """Pass 1: per distance, items + (relevant items << 32) in ``table``; each relevant
    item's (rank inside its group) + (distance << 32) appended to ``records`` in index
    order. Returns the number of relevant items. Items go eight at a time, one byte of the
    packed relevance row, for codes of one or two words."""
    size, words = database.shape
    table[:] = 0
    full = size // 8
    count = np.uint64(0)
    if words == 1:
        word = query[0]
        for byte in range(full):
            flags = np.uint64(bit_row[byte])
            base = byte * 8
            for k in range(8):
                d = _popcount(word ^ database[base + k, 0])
                count = _tally(table, records, count, d, (flags >> np.uint64(7 - k)) & _ONE)
    elif words == 2:
        first = query[0]
        second = query[1]
        for byte in range(full):
            flags = np.uint64(bit_row[byte])
            base = byte * 8
            for k in range(8):
                d = _popcount(first ^ database[base + k, 0]) + _popcount(
                    second ^ database[base + k, 1]
                )
                count = _tally(table, records, count, d, (flags >> np.uint64(7 - k)) & _ONE)
    else:  # item by item: an unrolled loop of word loops runs slower
        full = 0
    for i in range(8 * full, size):
        d = _distance(query, database, i, words)
        count = _tally(table, records, count, d, _relevant(bit_row, i))
    return count


@_jit
def _guess_limit(word, database, table, depth):
    """For codes of one word: a distance that very likely has >= depth items at or below
    it, from the histogram of a 1/8 sample (the first 8 items of every 64: whole cache
    lines) with a margin of about four standard deviations, as the numpy kernels'
    guess_thresholds; the caller checks it and counts again where it falls short."""
    size = database.shape[0]
    groups = table.shape[0]
    table[:] = 0
    sampled = 0
    step = 64 if size >= 64 * 8 else 8
    for base in range(0, size - 7, step):
        for k in range(8):
            table[_popcount(word ^ database[base + k, 0])] += _ONE
        sampled += 8
    expected = sampled * depth / size
    needed = expected + 4.0 * np.sqrt(expected) + 1.0
    seen = 0.0
    for d in range(groups):
        seen += table[d]
        if seen >= needed:
            return d
    return groups - 1


@_jit
def _count_within(word, database, bit_row, table, records, limit):
    """Pass 1 (:func:`_count`) for codes of one word, and the items at distance <= limit
    only; returns the number of relevant items among them. Few items are that near, so
    the distances of 64 items at a time go into a bit mask first (no branch) and only its
    set bits are counted."""
    size = database.shape[0]
    table[:] = 0
    count = np.uint64(0)
    blocks = size // 64
    for block in range(blocks):
        base = block * 64
        mask = np.uint64(0)
        for k in range(64):
            near = _popcount(word ^ database[base + k, 0]) <= limit
            mask |= np.uint64(near) << np.uint64(k)
        while mask:
            i = base + _trailing_zeros(mask)
            mask &= mask - _ONE
            d = _popcount(word ^ database[i, 0])
            count = _tally(table, records, count, d, _relevant(bit_row, i))
    for i in range(64 * blocks, size):
        d = _popcount(word ^ database[i, 0])
        if d <= limit:
            count = _tally(table, records, count, d, _relevant(bit_row, i))
    return count


@_jit
def _starts(table, starts, hit_starts, counts, relevant_counts):
    """Pass 2: per distance, the items and relevant items (into counts / relevant_counts),
    the group's first rank (starts) and its first hit number (hit_starts)."""
    position = np.uint64(0)
    hits = np.uint64(0)
    for d in range(table.shape[0]):
        value = table[d]
        starts[d] = position
        hit_starts[d] = hits
        items = value & _LOW
        relevant = value >> _HIGH
        counts[d] = items
        relevant_counts[d] = relevant
        position += items
        hits += relevant


@_jit
def _place(records, count, starts, hit_starts, positions, last_group):
    """Pass 3: the rank of every relevant item at distances up to ``last_group`` into
    positions[its hit number]."""
    for j in range(count):
        record = records[j]
        d = record >> _HIGH
        if d <= last_group:
            hit = hit_starts[d]
            hit_starts[d] = hit + _ONE
            positions[hit] = starts[d] + (record & _LOW)


@_jit
def rank_chunk(
    query_words,
    database_words,
    bit_rows,
    map_k,
    ks,
    whole,
    ranks,
    records,
    positions,
    precision,
    tables,
    counts,
    relevant_counts,
    ap,
    ap_all,
    r_at_k,
):
    """Rank the database for every query of a chunk and write its values into the outputs.

    whole: rank the whole database (counts, relevant_counts, ap, ap_all and r_at_k); else
    only the items within a distance that holds rank map_k, guessed from a sample of the
    distances (checked), for ap (mAP@k) alone. ``ranks`` is 1.0, 2.0, ..., size;
    ``records`` (size,) uint64, ``positions`` (size,) int32, ``precision`` (size,) float64
    and ``tables`` (3, groups) uint64 are scratch.
    """
    groups = tables.shape[1]
    table = tables[0]
    starts = tables[1]
    hit_starts = tables[2]
    for row in range(query_words.shape[0]):
        query = query_words[row]
        bit_row = bit_rows[row]
        last_group = groups - 1
        if whole or map_k >= database_words.shape[0] or database_words.shape[1] > 1:
            count = _count(query, database_words, bit_row, table, records)
        else:
            # only the items within a guessed distance; all of them when it falls short
            limit = _guess_limit(query[0], database_words, table, map_k)
            count = _count_within(query[0], database_words, bit_row, table, records, limit)
            within = np.uint64(0)
            for d in range(limit + 1):
                within += table[d] & _LOW
            if within < map_k:
                count = _count(query, database_words, bit_row, table, records)
        _starts(table, starts, hit_starts, counts[row], relevant_counts[row])
        if not whole:  # the group that holds rank map_k
            while last_group > 0 and starts[last_group] >= map_k:
                last_group -= 1
        hits = np.int64(hit_starts[last_group] + (table[last_group] >> _HIGH))
        _place(records, count, starts, hit_starts, positions, last_group)
        found = _first_at_or_above(positions, hits, map_k)
        total = hits if whole else found
        # precision at the t-th relevant item: t / (its rank), divided as the numpy kernels do
        for t in range(total):
            precision[t] = ranks[t] / (positions[t] + 1.0)
        ap[row] = _pairwise_sum(precision, found) / found if found else 0.0
        if whole:
            ap_all[row] = _pairwise_sum(precision, hits) / hits if hits else 0.0
            for j in range(ks.shape[0]):
                r_at_k[row, j] = _first_at_or_above(positions, hits, ks[j])


# --------------------------------------------------------------------------------------------
# the tie-aware terms of the distance group that the cut-off k splits
# (hashbench.metrics.tie_aware._boundary_terms, term by term in the same operations and order)


@_jit
def boundary_log_probabilities(low, high, size_b, relevant_b, taken, log_factorial, out):
    """log P(X = x) for x in low[q]..high[q] of every query q, one after another into out:
    X, the boundary group's relevant items among its ``taken`` first, is hypergeometric."""
    j = 0
    for q in range(low.shape[0]):
        nb = size_b[q]
        rb = relevant_b[q]
        m = taken[q]
        whole = log_factorial[nb] - log_factorial[m] - log_factorial[nb - m]
        for x in range(low[q], high[q] + 1):
            n = nb - rb
            k = m - x
            out[j] = (
                log_factorial[rb] - log_factorial[x] - log_factorial[rb - x]
                + (log_factorial[n] - log_factorial[k] - log_factorial[n - k])
                - whole
            )
            j += 1


@_jit
def boundary_values(
    probability,
    low,
    high,
    taken,
    before_b,
    relevant_before_b,
    expected_full,
    first,
    last,
    harmonic,
    tie,
    optimistic,
    pessimistic,
):
    """Expected, best and worst AP per query from P(X = x) (``probability``, not yet
    normalised) and the full groups' sums."""
    j = 0
    for q in range(low.shape[0]):
        start = j
        total = 0.0
        for _ in range(low[q], high[q] + 1):
            total += probability[j]
            j += 1
        m = taken[q]
        pb = before_b[q]
        rbb = relevant_before_b[q]
        span_b = harmonic[pb + m] - harmonic[pb]
        weighted_b = m - (pb + 1) * span_b
        expected_sum = 0.0
        j = start
        for x in range(low[q], high[q] + 1):
            spread_b = (x - 1) / max(m - 1, 1) if m > 1 else 0.0
            boundary_sum = x / m * ((rbb + 1) * span_b + spread_b * weighted_b)
            hits = rbb + x
            expected_ap = 0.0
            first_ap = 0.0
            last_ap = 0.0
            if hits > 0:
                expected_ap = (expected_full[q] + boundary_sum) / hits
                first_ap = (first[q] + x + (rbb - pb) * (harmonic[pb + x] - harmonic[pb])) / hits
                late = pb + m - x
                last_ap = (last[q] + x + (rbb - late) * (harmonic[late + x] - harmonic[late])) / hits
            expected_sum += probability[j] / total * expected_ap
            if j == start or first_ap > optimistic[q]:
                optimistic[q] = first_ap
            if j == start or last_ap < pessimistic[q]:
                pessimistic[q] = last_ap
            j += 1
        tie[q] = expected_sum
