"""Checked inputs of an evaluation: options, codes, labels and relevance, and the chunk size.

Every entry point (``evaluate``, ``mean_average_precision``, on the CPU or a CUDA device)
goes through :func:`check_options` and :func:`prepare`, so they accept and refuse the same
inputs with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hashbench.codes import to_bits
from hashbench.data.labels import check_class_ids, check_label_shape, to_multi_hot
from hashbench.errors import UserError

UNLABELLED = "give an item without a label an all-zero row of multi-hot labels (never relevant), or leave it out"
REMAP_BOTH = (
    "remap the query and database ids together (e.g. numpy.unique(numpy.concatenate([query, database]), "
    "return_inverse=True)[1], split back at len(query))"
)

# Query x database pairs per chunk when no chunk size is given. On the CPU a chunk holds its
# relevance bits (1/8 byte per pair) and, with the numpy kernels, its distances (1 byte per
# pair up to 255 bits), about 28 MB in all, while per-query buffers are O(database); large
# enough that the per-call overhead is negligible.
CHUNK_PAIRS = 24 * 2**20
# Per-distance tables (items, relevant items, the tie-aware terms) cost about this many pairs'
# worth of memory per query and distance; it matters only for long codes.
GROUP_COST = 16
MAX_CHUNK = 4096

# Ranking keys pack (distance, database index, relevant bit) into one integer; 63 bits so
# that they also fit torch's signed int64.
KEY_BITS = 63


def to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor on any device
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Options:
    """The checked evaluation options (cut-offs are not yet clipped to the database)."""

    topk: int | None
    ks: tuple[int, ...]
    radius: int
    chunk_size: int | None


def check_options(
    topk: Any = None, ks: Any = (), radius: Any = 2, chunk_size: Any = None
) -> Options:
    ks = tuple(check_positive(k, "each k of ks") for k in ks)
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise UserError(f"radius must be a non-negative integer; got {radius!r}")
    return Options(
        topk=None if topk is None else check_positive(topk, "topk"),
        ks=ks,
        radius=int(radius),
        chunk_size=None if chunk_size is None else check_positive(chunk_size, "chunk_size"),
    )


# --------------------------------------------------------------------------------------------
# codes


def packed_codes(codes: Any, bits: int | None, name: str) -> tuple[np.ndarray, int]:
    """Codes as packed bytes (n, 8 * ceil(bits/64)), zero padded to whole uint64 words, and
    the bit length.

    Accepts what :func:`hashbench.codes.to_bits` accepts, or packed uint8 (n, ceil(bits/8))
    when ``bits`` is given.
    """
    array = to_numpy(codes)
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
        if bits is not None and array.dtype == np.uint8 and array.shape[1] != bits:
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
    return padded, int(bits)


# --------------------------------------------------------------------------------------------
# labels


def label_matrices(query_labels: Any, database_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both label sets as multi-hot matrices over the same classes."""
    query = to_numpy(query_labels)
    database = to_numpy(database_labels)
    check_label_shape(query, "query labels")
    check_label_shape(database, "database labels")
    # class ids on either side are checked before any matrix is allocated: the other side's
    # highest id sets the width of both (ids up to 10^9 would take terabytes)
    for array, name in ((query, "query labels"), (database, "database labels")):
        if array.ndim == 1:
            check_class_ids(array, name, UNLABELLED, REMAP_BOTH)
    widths = {array.shape[1] for array in (query, database) if array.ndim == 2}
    if len(widths) > 1:
        raise UserError(
            f"query labels have {query.shape[1]} classes but database labels have "
            f"{database.shape[1]}; pad both multi-hot matrices to the same number of classes"
        )
    num_classes = widths.pop() if widths else None
    if num_classes is None:
        # class ids on both sides: the wider of the two id ranges (bad ids are reported by
        # to_multi_hot)
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


class Relevance:
    """Relevance (share >= 1 label) of database items to queries, as bit rows.

    The database side is kept as one bitmap over the database per class; a query's relevance
    row is the OR of the bitmaps of its classes (one for single-label data), so a whole chunk
    costs (labels per query) x N / 8 byte operations instead of N x classes.
    """

    def __init__(self, query_multi_hot: np.ndarray, database_multi_hot: np.ndarray) -> None:
        self.query_multi_hot = query_multi_hot
        self.database_multi_hot = database_multi_hot
        self.size = database_multi_hot.shape[0]
        self.row_bytes = -(-self.size // 8)
        # one bitmap per class, padded to whole uint64 words so ORs run 8 bytes at a time
        words = -(-self.row_bytes // 8)
        bitmaps = np.zeros((database_multi_hot.shape[1], words * 8), dtype=np.uint8)
        # packbits along contiguous rows: twice as fast as along the transposed view
        by_class = np.ascontiguousarray(database_multi_hot.T)
        bitmaps[:, : self.row_bytes] = np.packbits(by_class, axis=1)
        self.bitmaps = bitmaps.view(np.uint64)
        self.label_count = query_multi_hot.sum(1)
        # each query's classes first, in a (queries, max labels) table
        self.query_classes = np.argsort(~query_multi_hot, axis=1, kind="stable")[
            :, : max(1, int(self.label_count.max(initial=0)))
        ]

    def bit_rows(self, rows: slice) -> np.ndarray:
        """Relevance of every database item to the queries ``rows``: packed bits, C-contiguous
        (c, at least N/8 bytes; the bits past item N - 1 are zero)."""
        classes = self.query_classes[rows]
        label_count = self.label_count[rows]
        out = np.zeros((classes.shape[0], self.bitmaps.shape[1]), dtype=np.uint64)
        for slot in range(int(label_count.max(initial=0))):
            members = label_count > slot
            if members.all():
                out |= self.bitmaps[classes[:, slot]]
            else:
                out[members] |= self.bitmaps[classes[members, slot]]
        return out.view(np.uint8)  # whole words: no copy to make the rows contiguous


def neighbour_lists(neighbours: Any, num_queries: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query lists of relevant database positions as (indptr, indices), CSR style.

    Accepts an integer matrix (queries, K), negative entries being padding (for a query with
    fewer relevant items), or a sequence of one integer array per query.
    """
    shape_hint = "a (queries, K) matrix of database positions or one list per query"
    if hasattr(neighbours, "detach") or isinstance(neighbours, np.ndarray):
        matrix = to_numpy(neighbours)
        if matrix.ndim != 2:
            raise UserError(f"relevance must be {shape_hint}; got shape {matrix.shape}")
        rows = [matrix]  # one block: every row at once
        counts = [matrix.shape[0]]
    else:
        try:
            rows = [to_numpy(row).reshape(1, -1) for row in neighbours]
        except (TypeError, ValueError):
            raise UserError(f"relevance must be {shape_hint}") from None
        counts = [1] * len(rows)
    if sum(counts) != num_queries:
        raise UserError(
            f"relevance has {sum(counts)} rows but there are {num_queries} queries; give one list "
            "of relevant database positions per query"
        )
    lengths, parts = [np.zeros(1, dtype=np.int64)], []
    for block in rows:
        if block.size and block.dtype.kind not in "iu":
            raise UserError(f"relevance: database positions must be integers; got dtype {block.dtype}")
        block = block.astype(np.int64, copy=False)
        kept = block >= 0  # negative entries pad short rows
        lengths.append(kept.sum(1))
        parts.append(block[kept])
    indptr = np.cumsum(np.concatenate(lengths))
    indices = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if indices.size and indices.max() >= size:
        raise UserError(
            f"relevance names database position {int(indices.max())}, but the database has {size} items"
        )
    owner = np.repeat(np.arange(num_queries, dtype=np.int64), np.diff(indptr))
    if np.unique(owner * size + indices).size != indices.size:
        raise UserError("relevance lists one database item twice for the same query")
    return indptr, indices


class NeighbourRelevance:
    """Relevance given per query as a set of database positions (its true nearest neighbours,
    say), as bit rows built chunk by chunk from the lists: the same interface as
    :class:`Relevance`, without labels shared between items."""

    def __init__(self, neighbours: Any, num_queries: int, size: int) -> None:
        self.indptr, self.indices = neighbour_lists(neighbours, num_queries, size)
        self.size = size
        self.row_bytes = -(-size // 8)

    def bit_rows(self, rows: slice) -> np.ndarray:
        """Relevance of every database item to the queries ``rows``: packed bits, C-contiguous
        (c, ceil(N/8))."""
        start, stop, _ = rows.indices(self.indptr.size - 1)
        count = max(0, stop - start)
        ids = self.indices[self.indptr[start] : self.indptr[stop]] if count else self.indices[:0]
        owner = np.repeat(np.arange(count, dtype=np.int64), np.diff(self.indptr[start : stop + 1]))
        out = np.zeros(count * self.row_bytes, dtype=np.uint8)
        # np.packbits order: item i is bit 7 - i % 8 of byte i // 8; several ids share a byte
        np.bitwise_or.at(out, owner * self.row_bytes + (ids >> 3), (0x80 >> (ids & 7)).astype(np.uint8))
        return out.reshape(count, self.row_bytes)


# --------------------------------------------------------------------------------------------
# everything together


def key_shift(size: int) -> int:
    """Where the distance starts in a ranking key: above the database index and the
    relevant bit."""
    return max(1, (size - 1).bit_length()) + 1


def chunk_queries(size: int, groups: int) -> int:
    """Queries per chunk when none is given: the one rule of every path."""
    return max(1, min(MAX_CHUNK, CHUNK_PAIRS // (size + GROUP_COST * groups)))


@dataclass
class Inputs:
    """Checked, packed codes and the relevance of one evaluation."""

    query_bytes: np.ndarray  # (queries, 8 * words) uint8, zero padding
    database_bytes: np.ndarray  # (database, 8 * words) uint8
    bits: int
    relevance: Relevance | NeighbourRelevance

    @property
    def query_words(self) -> np.ndarray:
        return self.query_bytes.view(np.uint64)

    @property
    def database_words(self) -> np.ndarray:
        return self.database_bytes.view(np.uint64)

    @property
    def num_queries(self) -> int:
        return self.query_bytes.shape[0]

    @property
    def num_database(self) -> int:
        return self.database_bytes.shape[0]

    @property
    def groups(self) -> int:
        """Distinct distances: 0..bits."""
        return self.bits + 1

    def map_k(self, topk: int | None) -> int:
        """The mAP cut-off, clipped to the database size."""
        return self.num_database if topk is None else min(topk, self.num_database)

    def chunks(self, chunk_size: int | None) -> list[slice]:
        step = chunk_size or chunk_queries(self.num_database, self.groups)
        count = self.num_queries
        return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def prepare(
    query_codes: Any,
    database_codes: Any,
    query_labels: Any,
    database_labels: Any,
    bits: int | None,
    relevance: Any = None,
) -> Inputs:
    """Check codes and labels (or per-query ``relevance`` lists) against each other; pack
    codes and build relevance bitmaps."""
    if bits is not None and (
        isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1
    ):
        raise UserError(f"bits must be a positive integer; got {bits!r}")
    query_bytes, query_bits = packed_codes(query_codes, bits, "query codes")
    database_bytes, database_bits = packed_codes(database_codes, bits, "database codes")
    if query_bits != database_bits:
        raise UserError(
            f"query codes have {query_bits} bits but database codes have {database_bits}; "
            "both must come from the same model and code length"
        )
    if relevance is not None:
        if query_labels is not None or database_labels is not None:
            raise UserError(
                "give either labels (relevant: shares a label) or relevance (per-query lists of "
                "relevant database positions), not both"
            )
    elif query_labels is None or database_labels is None:
        raise UserError(
            "query and database labels are needed, or relevance: per-query lists of relevant "
            "database positions (e.g. true nearest neighbours)"
        )
    else:
        query_multi_hot, database_multi_hot = label_matrices(query_labels, database_labels)
        for what, rows, labels in (
            ("query", query_bytes.shape[0], query_multi_hot),
            ("database", database_bytes.shape[0], database_multi_hot),
        ):
            if rows != labels.shape[0]:
                raise UserError(
                    f"{what} codes have {rows} rows but {what} labels have "
                    f"{labels.shape[0]}; each item needs one code and one label row"
                )
    if query_bytes.shape[0] == 0:
        raise UserError("there are no queries (query codes have 0 rows)")
    size = database_bytes.shape[0]
    if size == 0:
        raise UserError("the database is empty (database codes have 0 rows)")
    if key_shift(size) + query_bits.bit_length() > KEY_BITS:
        raise UserError(
            f"{size} database items with {query_bits}-bit codes are too many to rank: "
            f"distance and database index must fit together in {KEY_BITS} bits"
        )
    if relevance is not None:
        rows = NeighbourRelevance(relevance, query_bytes.shape[0], size)
    else:
        rows = Relevance(query_multi_hot, database_multi_hot)
    return Inputs(query_bytes, database_bytes, query_bits, rows)
