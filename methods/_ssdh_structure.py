"""SSDH's semantic structure (:mod:`hashbench.methods.ssdh`; the released ``main.py``): the
histogram of the cosine distances between training features, its fit by two half-Gaussians,
the thresholds and the similarity matrix S with entries +1, −1 and 0.

numpy only. The distances are computed in row blocks and never held whole, so that S (one
byte per pair) is the only n × n array: 25 MB for 5,000 training images, 2.5 GB for 50,000.

What the released code does, and this module with it, on the full n × n matrix of cosine
distances d (both halves and the zero diagonal, as ``squareform(pdist(features, 'cosine'))``):

1. a histogram of 100 bins of width 0.01, the first starting at −1e-8, each counting the
   distances strictly inside it (``start < d < end``, the bounds accumulated by repeated
   addition); the peak m is the start of the first fullest bin (0 when every bin is empty);
2. the distances d ≤ m form the left half, the others the right half; each half is mirrored
   about m (``2m − d``) and fitted by a Gaussian (``scipy.stats.norm.fit``: the mean and the
   maximum-likelihood standard deviation). The mirrored sample's mean is m itself and its
   variance the mean of (d − m)² over the half, which is what is accumulated here;
3. S = +1 where d < d_l = m_l − α σ_l, −1 where d > d_r = m_r + β σ_r, 0 elsewhere
   (the released α = β = 2). The diagonal has d = 0, so S_ii = +1 whenever d_l > 0.

A zero feature vector (no direction) is given distance 1 to every other vector, 0 to itself
(scipy would give NaN, which every comparison above treats as neither half nor a threshold hit).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

BINS = 100  # main.py: num = np.zeros(100)
BIN_WIDTH = 1.0 / 100  # margin = 1.0/100
BIN_START = -0.00000001  # start = -0.00000001
ROW_BLOCK = 1024  # rows of the distance matrix computed at once


def bin_edges() -> np.ndarray:
    """The released bins' bounds, accumulated as main.py does (``end = start + margin``)."""
    edges = [BIN_START]
    for _ in range(BINS):
        edges.append(edges[-1] + BIN_WIDTH)
    return np.array(edges)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    rows = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def cosine_distance_blocks(features: np.ndarray, block: int = ROW_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, distances of rows first.. to every item) of the full cosine-distance matrix,
    float64, with an exact zero diagonal (as ``squareform`` writes it)."""
    unit = _unit_rows(features)
    n = unit.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        distances = 1.0 - unit[start:stop] @ unit.T
        rows = np.arange(stop - start)
        distances[rows, start + rows] = 0.0
        yield start, distances


@dataclass(frozen=True)
class Thresholds:
    """The fitted half-Gaussians and the thresholds of S."""

    peak: float  # m: the start of the fullest histogram bin
    left_mean: float
    left_std: float
    right_mean: float
    right_std: float
    alpha: float
    beta: float
    counts: tuple[int, ...]  # the histogram

    @property
    def similar_below(self) -> float:
        """d_l = m_l − α σ_l: pairs closer than this are similar (+1)."""
        return self.left_mean - self.alpha * self.left_std

    @property
    def dissimilar_above(self) -> float:
        """d_r = m_r + β σ_r: pairs farther than this are dissimilar (−1)."""
        return self.right_mean + self.beta * self.right_std


def histogram(blocks: Iterator[np.ndarray]) -> np.ndarray:
    """Counts of the released bins over every distance of ``blocks``."""
    edges = bin_edges()
    counts = np.zeros(BINS, dtype=np.int64)
    for distances in blocks:
        values = distances.ravel()
        # searchsorted: edges[p - 1] < d <= edges[p]; d lies strictly inside bin p - 1
        # unless it equals edges[p] (a distance on an edge is in no bin, as released)
        position = np.searchsorted(edges, values, side="left")
        inside = (position >= 1) & (position <= BINS)
        inside[inside] = values[inside] != edges[position[inside]]
        counts += np.bincount(position[inside] - 1, minlength=BINS)
    return counts


def peak_of(counts: np.ndarray) -> float:
    """The start of the first bin with the most distances (0.0 when all are empty), as main.py."""
    edges = bin_edges()
    best, peak = 0, 0.0
    for index, count in enumerate(counts):
        if count > best:
            best, peak = int(count), float(edges[index])
    return peak


def fit_thresholds(blocks_factory, alpha: float, beta: float) -> Thresholds:
    """Fit the two half-Gaussians to the distances ``blocks_factory()`` yields (called twice:
    once for the histogram, once for the halves' moments)."""
    counts = histogram(blocks_factory())
    peak = peak_of(counts)
    sums = {"left": [0, 0.0], "right": [0, 0.0]}
    for distances in blocks_factory():
        values = distances.ravel()
        for side, chosen in (("left", values[values <= peak]), ("right", values[values > peak])):
            sums[side][0] += chosen.size
            sums[side][1] += float(np.square(chosen - peak).sum())
    # Each mirrored half has mean m and variance mean((d − m)²) over the half (norm.fit's MLE).
    left_std = float(np.sqrt(sums["left"][1] / sums["left"][0])) if sums["left"][0] else 0.0
    right_std = float(np.sqrt(sums["right"][1] / sums["right"][0])) if sums["right"][0] else 0.0
    return Thresholds(peak, peak, left_std, peak, right_std, float(alpha), float(beta), tuple(int(c) for c in counts))


def thresholds_of_distances(distances: np.ndarray, alpha: float, beta: float) -> Thresholds:
    """The thresholds of any array of distances (a whole distance matrix, or a sample)."""
    values = np.asarray(distances, dtype=np.float64)
    return fit_thresholds(lambda: iter([values]), alpha, beta)


def label(distances: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """S's entries for ``distances``: +1 below d_l, −1 above d_r, 0 between (int8)."""
    similar = (distances < thresholds.similar_below).astype(np.int8)
    dissimilar = (distances > thresholds.dissimilar_above).astype(np.int8)
    return similar - dissimilar


@dataclass
class SemanticStructure:
    """S (int8, n × n) and how it was made."""

    similarity: np.ndarray
    thresholds: Thresholds

    def block(self, positions: np.ndarray) -> np.ndarray:
        """S restricted to a batch, float32 (``S[index, :][:, index]`` in main.py)."""
        return self.similarity[np.ix_(positions, positions)].astype(np.float32)

    def summary(self) -> dict[str, float | int]:
        """Fractions of +1 / −1 / 0 pairs (off the diagonal) and the fit, for the run record."""
        n = self.similarity.shape[0]
        pairs = max(n * (n - 1), 1)
        diagonal = np.diagonal(self.similarity)
        positive = int((self.similarity == 1).sum()) - int((diagonal == 1).sum())
        negative = int((self.similarity == -1).sum()) - int((diagonal == -1).sum())
        t = self.thresholds
        return {
            "items": n,
            "peak": t.peak,
            "left_std": t.left_std,
            "right_std": t.right_std,
            "alpha": t.alpha,
            "beta": t.beta,
            "similar_below": t.similar_below,
            "dissimilar_above": t.dissimilar_above,
            "similar_fraction": positive / pairs,
            "dissimilar_fraction": negative / pairs,
            "unlabelled_fraction": 1.0 - (positive + negative) / pairs,
        }


def semantic_structure(features: np.ndarray, alpha: float, beta: float, block: int = ROW_BLOCK) -> SemanticStructure:
    """S of the training features: the released construction on cosine distances."""
    features = np.asarray(features)
    n = features.shape[0]

    def blocks() -> Iterator[np.ndarray]:
        return (distances for _, distances in cosine_distance_blocks(features, block))

    thresholds = fit_thresholds(blocks, alpha, beta)
    similarity = np.empty((n, n), dtype=np.int8)
    for start, distances in cosine_distance_blocks(features, block):
        similarity[start : start + distances.shape[0]] = label(distances, thresholds)
    return SemanticStructure(similarity, thresholds)
