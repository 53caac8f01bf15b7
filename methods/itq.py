"""ITQ: iterative quantisation (Gong & Lazebnik, CVPR 2011; PAMI 2013).

As in the authors' code: centre, project on the top ``bits`` principal components (V),
start from a random orthogonal rotation R, then alternate B = sign(V R) and the orthogonal
Procrustes update of R from the SVD of Bᵀ V.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hashbench.data import DataSplit
from hashbench.method import HashingMethod, require_bits_at_most_dimension, require_fitted
from hashbench.methods._linear import principal_components
from hashbench.params import MAX_ITERATIONS, non_negative


@dataclass(frozen=True)
class ITQParams:
    iterations: int = field(default=50, metadata=non_negative(at_most=MAX_ITERATIONS))


def itq_rotation(projected: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """The rotation R minimising ‖B − V R‖ by alternating minimisation."""
    bits = projected.shape[1]
    rotation, _, _ = np.linalg.svd(rng.standard_normal((bits, bits)))
    for _ in range(iterations):
        codes = np.where(projected @ rotation >= 0, 1.0, -1.0)
        left, _, right_t = np.linalg.svd(codes.T @ projected)
        # Procrustes: R = (U_B Σ U_Aᵀ)ᵀ in the authors' notation, i.e. R = right_tᵀ leftᵀ.
        rotation = right_t.T @ left.T
    return rotation


class ITQ(HashingMethod):
    name = "itq"
    family = "classic"
    description = "Iterative quantisation: PCA then a learned rotation (bits <= input dimension)"
    Params = ITQParams

    def check_input(self, dimension: int) -> None:
        require_bits_at_most_dimension(self, dimension)

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        self.check_input(train.features.shape[1])
        self.mean, self.components = principal_components(train.features, self.bits)
        projected = (train.features - self.mean) @ self.components
        self.rotation = itq_rotation(projected, self.params.iterations, self.context.rng())

    def encode(self, split: DataSplit) -> np.ndarray:
        require_fitted(self, "rotation")
        return (split.features - self.mean) @ self.components @ self.rotation >= 0
