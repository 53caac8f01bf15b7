"""PCAH: signs of the top principal components of the centred data."""

from __future__ import annotations

import numpy as np

from hashbench.data import DataSplit
from hashbench.method import HashingMethod, require_bits_at_most_dimension, require_fitted
from hashbench.methods._linear import principal_components


class PCAH(HashingMethod):
    name = "pcah"
    family = "classic"
    description = "PCA hashing: signs of the top principal components (bits <= input dimension)"

    def check_input(self, dimension: int) -> None:
        require_bits_at_most_dimension(self, dimension)

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        self.check_input(train.features.shape[1])
        self.mean, self.components = principal_components(train.features, self.bits)

    def encode(self, split: DataSplit) -> np.ndarray:
        require_fitted(self, "components")
        return (split.features - self.mean) @ self.components >= 0
