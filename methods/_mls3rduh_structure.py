"""MLS3RDUH's reconstructed similarity matrix S (:mod:`hashbench.methods.mls3rduh`), as the
released ``MLS3RDUH.py`` builds it (lines 146-230) from the training images' features.

With N training items, ``nnk = int(N · 0.06)`` and ``nno = int(N · 0.06 · 1.5)``:

1. C = the cosine similarities of the features; ``sim = C − I``.
2. Each row of ``sim`` keeps its ``nnk`` largest entries (the others become 0).
3. A = mutual pairs of that kNN graph whose kept value exceeds 1e-4, weighted by it. Items
   without any such pair ("isolated") leave the graph; the others are put in a random order.
4. On the graph of the remaining items, each row of the kept ``sim`` again gives its ``nnk``
   largest entries (the kNN list; where a row has fewer than ``nnk`` positive entries left,
   the rest of the list is filled with zero entries), and A is formed as in 3.
5. The manifold similarity M = (1 − α)(I − α D^−½ A D^−½)^−1 with α = 0.99 (a random walk
   with restart on the graph); each row gives its ``nno`` largest entries (the manifold list).
6. Starting from C: for each remaining item i and j in i's kNN list, entry (i, j) becomes 1
   when j is also in i's manifold list, and 0 when it is not.
7. +1 where an entry exceeds 0.999 in either direction (this includes the diagonal and
   near-duplicates), else −1 where an entry is below 1e-4 in either direction, else the
   entry as it is; then S = 2·entry − 1. So S holds +1 (kNN and manifold agree), −1 (kNN
   neighbours the manifold rejects, and pairs of cosine below 1e-4) and, for every other
   pair, 2·cos − 1 (the released code's third kind of entry: not 0).

Sorting: the released ``torch.sort`` (a quicksort in the PyTorch of the time) leaves ties in
arbitrary order; here every top-k takes, among equal values, the higher index (what a stable
ascending sort gives when its last k are taken). Ties matter mostly for the zero entries that
fill a kNN list in step 4, which is where the random order of step 3 enters.

numpy only (float64); imported by the method when it trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Released constants (MLS3RDUH.py): nnk = int(N * 0.06), nno = int(N * 0.06 * 1.5),
# alpha = 0.99, and the thresholds of lines 161, 188 and 224-227.
KNN_RATIO = 0.06
MANIFOLD_FACTOR = 1.5
ALPHA = 0.99
EDGE_THRESHOLD = 1e-4  # sim > 0.0001: a kNN entry that makes an edge
POSITIVE_THRESHOLD = 0.999  # final_sim > 0.999: +1
NEGATIVE_THRESHOLD = 1e-4  # final_sim < 0.0001: −1
ROW_CHUNK = 1024


def neighbour_counts(n: int, knn_ratio: float = KNN_RATIO, manifold_factor: float = MANIFOLD_FACTOR) -> tuple[int, int]:
    """(nnk, nno) for ``n`` training items: ``int(n·r)`` and ``int(n·r·f)`` as released,
    each at least 1 and at most n (the released formula gives 0 below 17 items)."""
    nnk = int(n * knn_ratio)
    nno = int(n * knn_ratio * manifold_factor)
    return min(max(nnk, 1), n), min(max(nno, 1), n)


def top_mask(values: np.ndarray, count: int) -> np.ndarray:
    """Bool mask of each row's ``count`` largest entries; among equal values the higher
    column wins (a stable ascending sort's last ``count``)."""
    mask = np.zeros(values.shape, dtype=bool)
    for start in range(0, values.shape[0], ROW_CHUNK):
        chunk = values[start : start + ROW_CHUNK]
        chosen = np.argsort(chunk, axis=1, kind="stable")[:, chunk.shape[1] - count :]
        np.put_along_axis(mask[start : start + ROW_CHUNK], chosen, True, axis=1)
    return mask


def _weighted_mutual(kept: np.ndarray) -> np.ndarray:
    """A = [kept > 1e-4] ∘ [kept > 1e-4]ᵀ ∘ kept (lines 161-163 and 188-191)."""
    edges = kept > EDGE_THRESHOLD
    return np.where(edges & edges.T, kept, 0.0)


@dataclass
class Structure:
    """S and what the construction found, for the run record."""

    similarity: np.ndarray  # (N, N) float32
    nnk: int
    nno: int
    isolated: int  # items without a mutual kNN edge (left out of the manifold)

    def summary(self) -> dict[str, float | int]:
        s = self.similarity
        n = s.shape[0]
        off = ~np.eye(n, dtype=bool)
        return {
            "nnk": self.nnk,
            "nno": self.nno,
            "isolated": self.isolated,
            "positive_per_item": float((s[off] == 1).sum() / max(n, 1)),
            "negative_per_item": float((s[off] == -1).sum() / max(n, 1)),
            "graded_fraction": float(((s[off] != 1) & (s[off] != -1)).mean()) if n > 1 else 0.0,
        }


def reconstruct_similarity(
    features: np.ndarray,
    order_rng: np.random.Generator,
    *,
    knn_ratio: float = KNN_RATIO,
    manifold_factor: float = MANIFOLD_FACTOR,
    alpha: float = ALPHA,
) -> Structure:
    """The released S of ``features`` (N × d); ``order_rng`` draws the random order of step 3
    (released: ``random.sample`` after ``random.seed(10)``)."""
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    nnk, nno = neighbour_counts(n, knn_ratio, manifold_factor)
    norms = np.sqrt((x * x).sum(axis=1, keepdims=True))
    unit = x / np.where(norms > 0, norms, 1.0)  # a zero vector has cosine 0 with everything
    cosine = unit @ unit.T
    sim = cosine - np.eye(n)
    kept = np.where(top_mask(sim, nnk), sim, 0.0)  # lines 153-159
    del sim
    linked = _weighted_mutual(kept).sum(axis=1) > 0  # lines 161-165
    order = order_rng.permutation(np.flatnonzero(linked))  # lines 166-176
    m = order.size
    final = cosine  # updated in place from here on
    if m:
        sub = kept[np.ix_(order, order)]
        del kept
        knn = top_mask(sub, min(nnk, m))  # sim20, lines 179-187
        weights = _weighted_mutual(np.where(knn, sub, 0.0))
        del sub
        scale = weights.sum(axis=1) ** -0.5  # every remaining item has an edge
        normalised = scale[:, None] * weights * scale[None, :]
        manifold = (1 - alpha) * np.linalg.inv(np.eye(m) - alpha * normalised)  # line 199
        del weights, normalised
        agreed = top_mask(manifold, min(nno, m))  # manifold20, lines 201-206
        del manifold
        block = final[np.ix_(order, order)]
        block[knn & agreed] = 1.0  # lines 207-220
        block[knn & ~agreed] = 0.0
        final[np.ix_(order, order)] = block
    positive = final > POSITIVE_THRESHOLD  # lines 224-230
    positive |= positive.T
    negative = final < NEGATIVE_THRESHOLD
    negative |= negative.T
    final = np.where(positive, 1.0, np.where(negative, 0.0, final))
    return Structure((2.0 * final - 1.0).astype(np.float32), nnk, nno, int(n - m))


def similarity_block(similarity: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """S restricted to a batch (``final_sim[batch_ind, :][:, batch_ind]``)."""
    return similarity[np.ix_(positions, positions)]
