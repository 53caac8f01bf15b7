"""Anchor pieces shared by AGH and IMH: k-means anchors and the truncated anchor graph.

Both released codes build the same n × m matrix from the squared Euclidean distances of each
item to the m anchors (Liu's ``OneLayerAGH_Train.m`` and Shen's ``get_Z.m``, which says it
was got by modifying Liu's): keep each item's s nearest anchors, weight them with the
Gaussian kernel exp(−d² / σ²) (σ², not 2σ²), σ by default the mean over the training items
of the distance to their s-th nearest anchor, and divide each row by its sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hashbench.errors import UserError

if TYPE_CHECKING:  # scikit-learn and scipy are imported where a fit runs: listing stays light
    import scipy.sparse

# Rows of distances computed at once (an n × m float64 block per chunk).
_CHUNK = 4096


def kmeans_anchors(features: np.ndarray, count: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` k-means centres ``(count, d)`` of ``features`` (float64).

    As MATLAB's ``litekmeans`` with its default start ('sample': ``count`` random items) and
    one replicate: scikit-learn's Lloyd k-means from ``init="random"``, ``n_init=1``, at most
    ``iterations`` rounds, its seed drawn from ``rng``.
    """
    data = np.asarray(features, dtype=np.float64)
    if count > len(data):
        raise UserError(f"cannot place {count} anchors among {len(data)} training items")
    seed = int(rng.integers(2**31 - 1))
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=count, init="random", n_init=1, max_iter=iterations, tol=0.0, random_state=seed)
    kmeans.fit(data)
    return np.asarray(kmeans.cluster_centers_, dtype=np.float64)


def squared_distances(features: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """‖x − a‖² for every row pair, clamped at 0 (``EuDist2(X, A, 0)``; ``sqdist.m`` takes |·|)."""
    x = np.asarray(features, dtype=np.float64)
    squared = (x * x).sum(axis=1)[:, None] + (anchors * anchors).sum(axis=1)[None, :] - 2.0 * x @ anchors.T
    return np.maximum(squared, 0.0)


@dataclass(frozen=True)
class AnchorGraph:
    """Each item's s nearest anchors (``positions``, nearest first), their unnormalised
    kernel weights (``weights``) and the anchor count, for items in rows."""

    positions: np.ndarray  # (n, s) int
    weights: np.ndarray  # (n, s) float64, exp(−d²/σ²)
    anchors: int

    def unnormalised(self) -> scipy.sparse.csr_matrix:
        """The n × m matrix of kernel weights (``get_Z``'s second output)."""
        return self._matrix(self.weights)

    def normalised(self) -> scipy.sparse.csr_matrix:
        """Z: the weights divided by their row sums, so that each row sums to 1."""
        return self._matrix(self.weights / self.weights.sum(axis=1, keepdims=True))

    def _matrix(self, values: np.ndarray) -> scipy.sparse.csr_matrix:
        n, s = self.positions.shape
        rows = np.repeat(np.arange(n), s)
        import scipy.sparse

        return scipy.sparse.csr_matrix((values.ravel(), (rows, self.positions.ravel())), shape=(n, self.anchors))


def nearest_anchors(features: np.ndarray, anchors: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(n, s)`` of each item's s nearest anchors, nearest first (ties: the lower
    anchor index, as MATLAB's ``min``), and the squared distances to them."""
    n = len(features)
    positions = np.empty((n, s), dtype=np.int64)
    distances = np.empty((n, s))
    for start in range(0, n, _CHUNK):
        block = squared_distances(features[start : start + _CHUNK], anchors)
        order = np.argsort(block, axis=1, kind="stable")[:, :s]
        positions[start : start + _CHUNK] = order
        distances[start : start + _CHUNK] = np.take_along_axis(block, order, axis=1)
    return positions, distances


def anchor_graph(features: np.ndarray, anchors: np.ndarray, s: int, sigma: float | None = None) -> tuple[AnchorGraph, float]:
    """The truncated anchor graph of ``features`` and the bandwidth used.

    ``sigma=None`` estimates it as the released code does with ``sigma = 0``: the mean over
    the items of the distance to their s-th nearest anchor.
    """
    if s > len(anchors):
        raise UserError(f"s = {s} nearest anchors asked for, but there are only {len(anchors)} anchors")
    positions, distances = nearest_anchors(features, anchors, s)
    if sigma is None:
        sigma = float(np.mean(np.sqrt(distances[:, s - 1])))
        if not sigma > 0:  # every item sits on its s-th anchor: no scale to estimate
            sigma = 1.0
    weights = np.exp(-distances / sigma**2)
    # An item far from every anchor underflows to all-zero weights; keep it on its nearest.
    empty = weights.sum(axis=1) == 0
    if empty.any():
        weights[empty] = np.exp(-(distances[empty] - distances[empty, :1]) / sigma**2)
    return AnchorGraph(positions, weights, len(anchors)), sigma


def fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry made positive (eigenvectors' signs are
    arbitrary; this makes codes the same on every LAPACK build)."""
    largest = np.abs(vectors).argmax(axis=0)
    signs = np.sign(vectors[largest, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs
