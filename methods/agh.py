"""AGH: anchor graph hashing (Liu, Wang, Kumar, Chang; "Hashing with Graphs", ICML 2011).

As in the authors' released MATLAB (github.com/ColumbiaDVMM/Anchor-Graph-Hashing, commit
b15951c: ``OneLayerAGH_Train.m``, ``OneLayerAGH_Test.m``, ``TwoLayerAGH_Train.m``,
``TwoLayerAGH_Test.m``, ``demo_AGH.m``):

* anchors: m = 300 k-means centres of the training set (``demo_AGH.m`` loads them from
  ``anchor_300.mat``; the README: "I used K-means clustering centers as anchors");
* Z (n × m): each item's s = 2 nearest anchors (the demo's setting; the README suggests
  tuning 2 ≤ s ≤ m/10), weights exp(−d²/σ²) normalised to sum 1 per row, σ the mean
  distance of the training items to their s-th nearest anchor (``sigma = 0`` in the demo);
* Λ = diag(1ᵀZ); the m × m matrix M = Λ^-½ ZᵀZ Λ^-½, its eigenpairs (V, σ_k) sorted by
  decreasing σ_k, keeping 0 < σ_k < 1 − 1e-3 (which drops the trivial σ = 1);
* one layer: W = Λ^-½ V_r diag(σ_k^-½), bit = [Z(x) W > 0] (the columns of Z W on the training
  set are the top non-trivial eigenvectors of the anchor graph A = Z Λ⁻¹ Zᵀ, unit-normed);
* two layers: r/2 eigenfunctions, W scaled by √n; per eigenfunction y the thresholds b⁺, b⁻
  of ``TwoLayerAGH_Train.m`` (the minimisers of the paper's eq. for the second layer, from the
  positive and negative sides of y and the graph Laplacian), first-layer bit [y > 0] and
  second-layer bit [y − b⁺ > 0] where y > 0, [b⁻ − y > 0] elsewhere; codes are the r/2
  first-layer bits followed by the r/2 second-layer bits, as the released code orders them.

Defaults: two layers (the paper's hierarchical hashing, its full method; ``demo_AGH.m``
evaluates one and two layers alike), m = 300, s = 2, σ estimated. Bits: one layer needs r ≤ m − 1 non-trivial eigenpairs, two
layers an even r with r/2 of them; a larger r is refused.

Deviations (``training.deviations``): the k-means settings of the released anchor file are
not given; here scikit-learn's Lloyd k-means from random items, 100 rounds at most (MATLAB
litekmeans' default), seeded from the run seed. Where the training split has fewer items
than anchors, as many anchors as items. Anchors that no training item has among its s nearest
(a zero column of Z, which the released code would turn into NaN) are dropped. Eigenvectors
get a fixed sign (largest entry positive) so that codes agree across LAPACK builds.

Version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod, require_fitted
from hashbench.methods._anchors import AnchorGraph, anchor_graph, fix_signs, kmeans_anchors
from hashbench.params import MAX_ITERATIONS, at_least, positive

# The released code keeps eigenvalues in (0, 1 − 1e-3): 1 is the trivial (constant) one.
_TRIVIAL = 1e-3


@dataclass(frozen=True)
class AGHParams:
    layers: Literal[1, 2] = 2
    anchors: int = field(default=300, metadata=at_least(2, "k-means anchors", at_most=100_000))
    s: int = field(default=2, metadata=at_least(1, "nearest anchors per item", at_most=100_000))
    # None: σ from the training set (the released sigma = 0); else the kernel width itself.
    sigma: float | None = field(default=None, metadata=positive())
    kmeans_iterations: int = field(default=100, metadata=at_least(1, at_most=MAX_ITERATIONS))

    def validate(self) -> None:
        if self.s > self.anchors:
            raise UserError(f"agh.s = {self.s} must be at most agh.anchors = {self.anchors}")


def anchor_eigensystem(z, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Λ's diagonal, and the top ``count`` non-trivial eigenpairs (V, σ) of Λ^-½ ZᵀZ Λ^-½."""
    lam = np.asarray(z.sum(axis=0)).ravel()
    scale = lam**-0.5
    gram = (z.T @ z).toarray()
    m = scale[:, None] * gram * scale[None, :]
    eigenvalues, vectors = np.linalg.eigh((m + m.T) / 2)
    order = np.argsort(eigenvalues, kind="stable")[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    keep = (eigenvalues > 0) & (eigenvalues < 1 - _TRIVIAL)
    return lam, eigenvalues[keep][:count], fix_signs(vectors[:, keep][:, :count])


def two_layer_thresholds(z, lam: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Thres`` (2 × r/2) of ``TwoLayerAGH_Train.m`` for the training embeddings ``y``."""
    n = y.shape[0]
    thresholds = np.zeros((2, y.shape[1]))
    for k in range(y.shape[1]):
        column = y[:, k]
        positive_side = column > 0
        n1 = int(positive_side.sum())
        n2 = n - n1
        right = (z.T @ np.abs(column)) / lam  # Λ⁻¹ Zᵀ |y|
        left = np.asarray(z[positive_side].sum(axis=0)).ravel()  # Zᵀ 1₊
        s1 = left @ right  # 1₊ᵀ A |y|
        s2 = n1 - left @ (left / lam)  # 1₊ᵀ (I − A) 1₊
        s3 = column[positive_side].sum()
        thresholds[0, k] = (2 * s3 + n2 * (s3 - s1) / s2) / n
        thresholds[1, k] = (n1 * (s3 - s1) / s2 - 2 * s3) / n
    return thresholds


class AGH(HashingMethod):
    name = "agh"
    family = "classic"
    description = "Anchor graph hashing: eigenfunctions of a k-means anchor graph, one or two thresholds each"
    Params = AGHParams

    def _eigenfunctions(self) -> int:
        if self.params.layers == 2:
            if self.bits % 2:
                raise UserError(f"agh with layers = 2 needs an even number of bits (two per eigenfunction), got {self.bits}")
            return self.bits // 2
        return self.bits

    def _refuse(self, available: int, why: str) -> None:
        per = "" if self.params.layers == 1 else " (two bits each)"
        raise UserError(
            f"agh cannot produce {self.bits} bits: it has {available} non-trivial eigenfunctions{per} {why}; "
            f"use --bits {available * self.params.layers} or less, or more anchors (agh.anchors)"
        )

    def check_input(self, dimension: int) -> None:
        count = self._eigenfunctions()
        if count > self.params.anchors - 1:
            self._refuse(self.params.anchors - 1, f"at most, from {self.params.anchors} anchors")

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        features = np.asarray(train.features, dtype=np.float64)
        self.check_input(features.shape[1])
        count = self._eigenfunctions()
        deviations = ["anchors: scikit-learn k-means from random items, seeded by the run (released: a precomputed anchor file)"]
        anchors = self.params.anchors
        if anchors > len(features):
            anchors = len(features)
            deviations.append(f"{anchors} anchors, one per training item (asked for {self.params.anchors})")
        centres = kmeans_anchors(features, anchors, self.params.kmeans_iterations, self.context.rng())
        graph, self.sigma = anchor_graph(features, centres, self.params.s, self.params.sigma)
        used = np.bincount(graph.positions.ravel(), minlength=anchors) > 0
        if not used.all():
            deviations.append(f"{int((~used).sum())} anchors no training item uses dropped")
            centres = centres[used]
            graph, self.sigma = anchor_graph(features, centres, self.params.s, self.params.sigma)
        z = graph.normalised()
        lam, eigenvalues, vectors = anchor_eigensystem(z, count)
        if len(eigenvalues) < count:
            self._refuse(len(eigenvalues), f"on this training set ({len(centres)} anchors)")
        projection = (lam**-0.5)[:, None] * vectors * (eigenvalues**-0.5)[None, :]
        if self.params.layers == 2:
            projection = projection * np.sqrt(len(features))
            self.thresholds = two_layer_thresholds(z, lam, z @ projection)
        self.anchors, self.projection = centres, projection
        self.context.record["deviations"] = deviations
        self.context.record["settings"] = {"anchors": len(centres), "sigma": self.sigma, "eigenvalues": eigenvalues.tolist()}

    def embed(self, split: DataSplit) -> np.ndarray:
        """The eigenfunctions' values Z(x) W (before thresholds)."""
        require_fitted(self, "projection")
        graph, _ = anchor_graph(np.asarray(split.features, dtype=np.float64), self.anchors, self.params.s, self.sigma)
        return _project(graph, self.projection)

    def encode(self, split: DataSplit) -> np.ndarray:
        y = self.embed(split)
        if self.params.layers == 1:
            return y > 0
        upper, lower = self.thresholds
        second = np.where(y > 0, y - upper > 0, lower - y > 0)
        return np.hstack([y > 0, second])


def _project(graph: AnchorGraph, projection: np.ndarray) -> np.ndarray:
    return np.asarray(graph.normalised() @ projection)
