"""LSH: signs of centred random Gaussian projections (Charikar's SimHash / Indyk–Motwani)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashbench.data import DataSplit
from hashbench.method import HashingMethod, require_fitted


@dataclass(frozen=True)
class LSHParams:
    # Uncentred LSH on non-negative features (pixels, ReLU outputs) gives unbalanced bits;
    # the training mean is subtracted by default.
    centre: bool = True


class LSH(HashingMethod):
    name = "lsh"
    family = "classic"
    description = "Locality-sensitive hashing: signs of centred Gaussian random projections"
    Params = LSHParams

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        features = train.features
        rng = self.context.rng()
        self.projection = rng.standard_normal((features.shape[1], self.bits))
        self.mean = features.mean(axis=0, dtype=np.float64) if self.params.centre else np.zeros(features.shape[1])

    def encode(self, split: DataSplit) -> np.ndarray:
        require_fitted(self, "projection")
        return (split.features - self.mean) @ self.projection >= 0
