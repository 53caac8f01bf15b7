"""IMH: inductive manifold hashing (Shen, Shen, Shi, van den Hengel, Tang; "Inductive Hashing
on Manifolds", CVPR 2013; extended as "Hashing on Nonlinear Manifolds", TIP 2015).

As in the authors' released MATLAB (github.com/chhshen/Hashing-on-Nonlinear-Manifolds,
commit 443109f: ``demo_IMH.m``, ``prepare_dataset.m``, ``normalize.m``, ``tSNEH.m``,
``InducH.m``, ``InitOpt.m``, ``get_Z.m``, ``tSNE/tsne.m``, ``tSNE/tsne_p.m``, ``tSNE/d2p.m``):

* every feature vector scaled to unit L2 norm (``prepare_dataset.m``, train and test alike);
* anchors: m = 400 k-means centres of the training set (``litekmeans``, 10 rounds, started
  from random items);
* embedding of the anchors, IMH-tSNE (``demo_IMH.m``'s method, the default): van der
  Maaten's exact t-SNE (``tsne.m``) to ``bits`` dimensions — the anchors shifted and scaled to
  [0, 1] as a whole, centred, PCA to max(20, bits) dimensions, Gaussian affinities at
  perplexity 10 found by bisection (tolerance 1e-5, 50 tries), symmetrised; then 1,000
  gradient steps of the Student-t (one degree of freedom) KL objective with the
  delta-bar-delta gains, learning rate 500, momentum 0.5 then 0.8 from step 250, P × 4 for
  the first 100 steps, start N(0, 1e-4²), the map re-centred every step. This is a numpy
  transcription of ``tsne_p.m``; ``tsne_solver = "sklearn"`` uses scikit-learn's
  ``TSNE(method="exact")`` instead (as cisip-FIRe's ``functions/loss/imh.py`` does), which
  differs: Student-t with bits − 1 degrees of freedom, 250 exaggerated steps, its own
  stopping rules; Barnes–Hut is not an option (it supports fewer than 4 dimensions);
* or IMH-LE (``embedding = "le"``, ``InducH.m``): a 20-nearest-neighbour Gaussian graph on the
  anchors, symmetrised by max, its Laplacian L; the training items' anchor graph (s = 5,
  unnormalised weights W, row-normalised Z̄); T = diag(1ᵀW) − Z̄ᵀW; the eigenvectors of
  L + 2T with the smallest eigenvalues above 1e-3;
* the inductive embedding of any item: Z̄(x) E, Z̄(x) its s = 5 nearest anchors' weights
  exp(−d²/σ²) normalised to sum 1, σ the mean distance of the training items to their 5th
  nearest anchor; bit = [Z̄(x) E > 0]. The released code thresholds at zero: no PCA, no
  mean or median threshold, no rotation (the TIP paper's IMH + ITQ variant is not in it).

cisip-FIRe (``functions/loss/imh.py``, ``configs/templates/imh.yaml``) differs from the
authors' code: no L2 normalisation, faiss k-means with 200 rounds, scikit-learn's t-SNE at
its defaults (perplexity 30, PCA start), s = 5 with a fixed bandwidth exp(−d²/512); it was
not followed.

Bits: at most one fewer than the anchors (bits > m − 1 refused); IMH-LE also refuses more
bits than its non-trivial eigenvectors.

Deviations (``training.deviations``): scikit-learn's k-means for ``litekmeans`` (seeded by the
run); where the training split has fewer items than anchors, as many anchors as items; PCA
before t-SNE capped at the anchors' dimension (the released ``tsne.m`` fails when
max(20, bits) exceeds it); eigenvectors of IMH-LE with a fixed sign.

Version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod, require_fitted
from hashbench.methods._anchors import anchor_graph, fix_signs, kmeans_anchors
from hashbench.params import MAX_ITERATIONS, at_least, positive

_REALMIN = np.finfo(np.float64).tiny


@dataclass(frozen=True)
class IMHParams:
    embedding: Literal["tsne", "le"] = "tsne"
    anchors: int = field(default=400, metadata=at_least(2, "k-means anchors", at_most=100_000))
    s: int = field(default=5, metadata=at_least(1, "nearest anchors per item", at_most=100_000))
    kmeans_iterations: int = field(default=10, metadata=at_least(1, at_most=MAX_ITERATIONS))
    normalize: bool = True  # unit L2 norm of every feature vector, as prepare_dataset.m
    # IMH-tSNE
    tsne_solver: Literal["released", "sklearn"] = "released"
    perplexity: float = field(default=10.0, metadata=positive())
    tsne_iterations: int = field(default=1000, metadata=at_least(1, at_most=MAX_ITERATIONS))
    # IMH-LE: neighbours of each anchor in the anchor graph
    knn: int = field(default=20, metadata=at_least(1, "neighbours per anchor", at_most=100_000))

    def validate(self) -> None:
        for name in ("s", "knn"):
            if getattr(self, name) > self.anchors:
                raise UserError(f"imh.{name} = {getattr(self, name)} must be at most imh.anchors = {self.anchors}")


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (``normalize.m``)."""
    data = np.asarray(features, dtype=np.float64)
    norms = np.sqrt((data * data).sum(axis=1, keepdims=True))
    return np.divide(data, norms, out=np.zeros_like(data), where=norms > 0)


def tsne_input(points: np.ndarray, dims: int) -> np.ndarray:
    """``tsne.m``'s preprocessing: shift and scale to [0, 1] as a whole, centre, PCA to ``dims``."""
    x = points - points.min()
    top = x.max()
    x = x / top if top > 0 else x
    x = x - x.mean(axis=0)
    if x.shape[1] < x.shape[0]:  # covariance route
        eigenvalues, vectors = np.linalg.eigh(x.T @ x)
        order = np.argsort(eigenvalues, kind="stable")[::-1][:dims]
        return x @ vectors[:, order]
    # Gram route (as tsne.m for at least as many dimensions as points): X v = √μ u.
    eigenvalues, vectors = np.linalg.eigh(x @ x.T)
    order = np.argsort(eigenvalues, kind="stable")[::-1][:dims]
    return vectors[:, order] * np.sqrt(np.maximum(eigenvalues[order], 0))[None, :]


def perplexity_affinities(squared: np.ndarray, perplexity: float, tol: float = 1e-5, tries: int = 50) -> np.ndarray:
    """``d2p.m``: per row, the Gaussian precision β whose conditional distribution over the
    other points has entropy log(perplexity), by bisection from β = 1; rows of P (n × n)."""
    n = len(squared)
    off = ~np.eye(n, dtype=bool)
    d = squared[off].reshape(n, n - 1)
    beta = np.ones(n)
    low = np.full(n, -np.inf)
    high = np.full(n, np.inf)
    target = np.log(perplexity)

    def entropy(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.exp(-d * beta[:, None])
        total = p.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.log(total) + beta * (d * p).sum(axis=1) / total
        return h, p / total[:, None]

    h, p = entropy(beta)
    for _ in range(tries):
        diff = h - target
        active = np.abs(diff) > tol
        if not active.any():
            break
        up = active & (diff > 0)  # entropy too high: sharpen
        down = active & ~(diff > 0)
        low[up] = beta[up]
        beta[up] = np.where(np.isinf(high[up]), beta[up] * 2, (beta[up] + high[up]) / 2)
        high[down] = beta[down]
        beta[down] = np.where(np.isinf(low[down]), beta[down] / 2, (beta[down] + low[down]) / 2)
        h_new, p_new = entropy(beta)
        h[active], p[active] = h_new[active], p_new[active]
    rows = np.zeros((n, n))
    rows[off] = p.ravel()
    return rows


# tsne_p.m's schedule: P × 4 until step 100, momentum 0.5 until step 250 then 0.8, learning
# rate 500, gains at least 0.01.
EXAGGERATION, EXAGGERATED_STEPS = 4.0, 100
MOMENTUM, FINAL_MOMENTUM, MOMENTUM_SWITCH = 0.5, 0.8, 250
LEARNING_RATE, MIN_GAIN = 500.0, 0.01


def released_tsne(
    points: np.ndarray, dims: int, perplexity: float, iterations: int, rng: np.random.Generator,
    exaggerated_steps: int = EXAGGERATED_STEPS, momentum_switch: int = MOMENTUM_SWITCH,
) -> np.ndarray:  # fmt: skip
    """``tsne_p.m`` on the affinities of ``points``: an (n, dims) map."""
    sum_x = (points * points).sum(axis=1)
    squared = sum_x[:, None] + sum_x[None, :] - 2 * points @ points.T
    p = perplexity_affinities(squared, perplexity)
    n = len(p)
    np.fill_diagonal(p, 0)
    p = (p + p.T) / 2
    p = np.maximum(p / p.sum(), _REALMIN)
    p = p * EXAGGERATION
    y = 1e-4 * rng.standard_normal((n, dims))
    increments = np.zeros_like(y)
    gains = np.ones_like(y)
    momentum = MOMENTUM
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # 400 × 400 products: threads only contend
        for step in range(1, iterations + 1):
            sum_y = (y * y).sum(axis=1)
            num = y @ y.T
            num *= -2
            num += sum_y[:, None]
            num += sum_y[None, :]
            num += 1
            np.reciprocal(num, out=num)  # Student-t kernel, one degree of freedom
            np.fill_diagonal(num, 0)
            q = np.maximum(num / num.sum(), _REALMIN)
            weights = (p - q) * num
            gradient = 4 * (weights.sum(axis=0)[:, None] * y - weights @ y)
            same = np.sign(gradient) == np.sign(increments)
            gains = np.maximum(np.where(same, gains * 0.8, gains + 0.2), MIN_GAIN)
            increments = momentum * increments - LEARNING_RATE * (gains * gradient)
            y = y + increments
            y = y - y.mean(axis=0)
            if step == momentum_switch:
                momentum = FINAL_MOMENTUM
            if step == exaggerated_steps:
                p = p / EXAGGERATION
    return y


def sklearn_tsne(points: np.ndarray, dims: int, perplexity: float, iterations: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.manifold import TSNE

    tsne = TSNE(
        n_components=dims, perplexity=min(perplexity, len(points) - 1.0), early_exaggeration=4.0,
        learning_rate=500.0, max_iter=max(iterations, 250), init="random", method="exact",
        random_state=int(rng.integers(2**31 - 1)),
    )  # fmt: skip
    return tsne.fit_transform(points)


def le_embedding(anchors: np.ndarray, features: np.ndarray, params: IMHParams, bits: int) -> tuple[np.ndarray, float, int]:
    """``InducH.m``: the anchors' embedding E, the bandwidth σ of the items' anchor graph, and
    how many non-trivial eigenvectors there were."""
    anchor_knn, _ = anchor_graph(anchors, anchors, params.knn)
    w_ss = anchor_knn.unnormalised().toarray()
    w_ss = np.maximum(w_ss, w_ss.T)
    laplacian = np.diag(w_ss.sum(axis=1)) - w_ss
    items, sigma = anchor_graph(features, anchors, params.s)
    w_rs = items.unnormalised()
    z = items.normalised()
    t = np.diag(np.asarray(w_rs.sum(axis=0)).ravel()) - (z.T @ w_rs).toarray()
    matrix = laplacian + 2 * t
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    order = np.argsort(eigenvalues, kind="stable")
    keep = order[eigenvalues[order] > 1e-3]
    return fix_signs(vectors[:, keep[:bits]]), sigma, len(keep)


class IMH(HashingMethod):
    name = "imh"
    family = "classic"
    description = "Inductive manifold hashing: t-SNE (or LE) of k-means anchors, extended by anchor weights"
    Params = IMHParams

    def check_input(self, dimension: int) -> None:
        if self.bits > self.params.anchors - 1:
            raise UserError(
                f"imh cannot produce {self.bits} bits from {self.params.anchors} anchors (at most one bit per "
                f"embedding dimension of the anchors, {self.params.anchors - 1}); use --bits "
                f"{self.params.anchors - 1} or less, or more anchors (imh.anchors)"
            )

    def _features(self, split: DataSplit) -> np.ndarray:
        features = np.asarray(split.features, dtype=np.float64)
        return unit_rows(features) if self.params.normalize else features

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        features = self._features(train)
        self.check_input(features.shape[1])
        deviations = ["anchors: scikit-learn k-means from random items, seeded by the run (released: litekmeans)"]
        count = self.params.anchors
        if count > len(features):
            count = len(features)
            deviations.append(f"{count} anchors, one per training item (asked for {self.params.anchors})")
        if self.bits > count - 1:
            raise UserError(
                f"imh cannot produce {self.bits} bits from {count} anchors (a training split of {len(features)} "
                f"items); use --bits {count - 1} or less"
            )
        anchors = kmeans_anchors(features, count, self.params.kmeans_iterations, self.context.rng(0))
        settings: dict = {"anchors": count}
        if self.params.embedding == "tsne":
            dims = max(20, self.bits)
            if dims > min(anchors.shape):
                deviations.append(f"PCA before t-SNE to {min(anchors.shape)} dimensions (released: max(20, bits) = {dims})")
                dims = min(anchors.shape)
            points = tsne_input(anchors, dims)
            solver = released_tsne if self.params.tsne_solver == "released" else sklearn_tsne
            if self.params.tsne_solver == "sklearn":
                deviations.append("t-SNE by scikit-learn's exact solver (bits − 1 degrees of freedom, 250 exaggerated steps)")
            embedding = solver(points, self.bits, self.params.perplexity, self.params.tsne_iterations, self.context.rng(1))
            _, sigma = anchor_graph(features, anchors, self.params.s)
            settings["pca_dimensions"] = dims
        else:
            embedding, sigma, available = le_embedding(anchors, features, self.params, self.bits)
            if available < self.bits:
                raise UserError(
                    f"imh (embedding = le) cannot produce {self.bits} bits: the anchor graph has {available} "
                    f"non-trivial eigenvectors; use --bits {available} or less"
                )
            deviations.append("IMH-LE eigenvectors with a fixed sign (largest entry positive)")
        self.anchors, self.sigma, self.embedding = anchors, sigma, embedding
        settings["sigma"] = sigma
        self.context.record["deviations"] = deviations
        self.context.record["settings"] = settings

    def embed(self, split: DataSplit) -> np.ndarray:
        """The inductive embedding Z̄(x) E of every item (before the zero threshold)."""
        require_fitted(self, "embedding")
        graph, _ = anchor_graph(self._features(split), self.anchors, self.params.s, self.sigma)
        return np.asarray(graph.normalised() @ self.embedding)

    def encode(self, split: DataSplit) -> np.ndarray:
        return self.embed(split) > 0
