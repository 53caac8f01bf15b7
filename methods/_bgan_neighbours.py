"""BGAN's neighbour structure S (:mod:`hashbench.methods.bgan`; the released ``create_S.py``):
kNN lists of the training features, their overlaps, and S restricted to a batch.

Imported by the method only when it trains, so that describing it needs neither torch nor scipy.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

KNN_CHUNK = 1024


def knn_lists(features: np.ndarray, count: int, device: torch.device | str = "cpu") -> np.ndarray:
    """Indices of the ``count`` nearest points of each point (Euclidean), the point itself first.

    Ties go to the lower index. Distances are computed in float32 on ``device`` in chunks.
    """
    data = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=device)
    n = data.shape[0]
    count = min(count, n)
    norms = (data * data).sum(dim=1)
    lists = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, KNN_CHUNK):
        rows = torch.arange(start, min(start + KNN_CHUNK, n), device=data.device)
        distances = norms[rows, None] - 2 * data[rows] @ data.T + norms[None, :]
        distances[torch.arange(rows.numel()), rows] = -1.0  # the point itself ranks first
        distances = distances.cpu().numpy()
        for offset, row in enumerate(distances):
            lists[start + offset] = _smallest(row, count)
    return lists


def _smallest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` smallest values in (value, index) order: ties go to the lower index."""
    threshold = np.partition(values, count - 1)[count - 1]
    below = np.flatnonzero(values < threshold)
    tied = np.flatnonzero(values == threshold)[: count - below.size]
    chosen = np.concatenate([below, tied])
    return chosen[np.lexsort((chosen, values[chosen]))]


def neighbour_structure(features: np.ndarray, k1: int, k2: int, device: torch.device | str = "cpu") -> scipy.sparse.csr_matrix:
    """The positive pairs of BGAN's S (released ``create_S.py``) as a symmetric bool matrix.

    N_i = the top K1 + 1 of i's kNN ranking (i itself included). For each i, the K2 points j
    with the largest |N_i ∩ N_j| (ties: lower index) are taken, and S_ip = S_pi = +1 for
    every p in the union of their lists N_j; every other entry of S is −1.
    """
    n = features.shape[0]
    lists = knn_lists(features, k1 + 1, device)
    members = scipy.sparse.csr_matrix(
        (np.ones(lists.size, dtype=np.int32), (np.repeat(np.arange(n), lists.shape[1]), lists.ravel())), shape=(n, n)
    )
    k2 = min(k2, n)
    rows, cols = [], []
    for start in range(0, n, KNN_CHUNK):
        overlap = (members[start : start + KNN_CHUNK] @ members.T).toarray()
        for offset, counts in enumerate(overlap):
            # The K2 largest overlaps (ties: lower index) are the K2 smallest negated ones.
            union = np.unique(lists[_smallest(-counts, k2)].ravel())
            rows.append(np.full(union.size, start + offset))
            cols.append(union)
    row, col = np.concatenate(rows), np.concatenate(cols)
    both = np.ones(2 * row.size, dtype=bool)
    positive = scipy.sparse.csr_matrix((both, (np.concatenate([row, col]), np.concatenate([col, row]))), shape=(n, n))
    positive.sum_duplicates()
    positive.data[:] = True
    return positive


def similarity_block(positive: scipy.sparse.csr_matrix, positions: np.ndarray) -> np.ndarray:
    """S restricted to a batch: +1 for neighbour pairs, −1 elsewhere."""
    block = positive[positions][:, positions].toarray()
    return np.where(block, 1.0, -1.0).astype(np.float32)
