"""Spectral hashing (Weiss, Torralba & Fergus, NIPS 2008), as in the authors' MATLAB code.

PCA to min(bits, d) directions; a uniform box [min, max] per direction; enumerate the 1-D
Laplacian eigenfunctions (modes k·π/(max−min) per direction); keep the ``bits`` lowest
non-constant frequencies; a bit is the sign of sin(π/2 + ω (x − min)). Several bits may come
from one direction, so more bits than input dimensions is allowed, as in the original.
"""

from __future__ import annotations

import numpy as np

from hashbench.data import DataSplit
from hashbench.method import HashingMethod, require_fitted
from hashbench.methods._linear import principal_components

_EPS = np.finfo(np.float64).eps


def spectral_modes(ranges: np.ndarray, bits: int) -> np.ndarray:
    """Integer mode matrix ``(bits, directions)``: one non-zero frequency per row."""
    directions = ranges.size
    max_mode = np.ceil((bits + 1) * ranges / ranges.max()).astype(int)
    rows = [np.zeros(directions, dtype=int)]  # the constant mode, dropped below
    for direction in range(directions):
        for mode in range(1, max_mode[direction]):
            row = np.zeros(directions, dtype=int)
            row[direction] = mode
            rows.append(row)
    modes = np.array(rows)
    eigenvalues = ((modes * (np.pi / ranges)) ** 2).sum(axis=1)
    order = np.argsort(eigenvalues, kind="stable")
    return modes[order[1 : bits + 1]]


class SpectralHashing(HashingMethod):
    name = "sh"
    family = "classic"
    description = "Spectral hashing: lowest-frequency 1-D eigenfunctions along principal directions"

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        features = np.asarray(train.features, dtype=np.float64)
        directions = min(self.bits, features.shape[1])
        _, self.components = principal_components(features, directions)
        # The authors project without centring: the box offset absorbs the mean.
        projected = features @ self.components
        self.minimum = projected.min(axis=0) - _EPS
        maximum = projected.max(axis=0) + _EPS
        ranges = maximum - self.minimum
        self.omegas = spectral_modes(ranges, self.bits) * (np.pi / ranges)

    def encode(self, split: DataSplit) -> np.ndarray:
        require_fitted(self, "omegas")
        offset = np.asarray(split.features, dtype=np.float64) @ self.components - self.minimum
        # Each mode has one non-zero frequency, so the product over directions of
        # sin(ω_j x_j + π/2) reduces to that direction's factor (the others are sin(π/2) = 1).
        values = np.ones((offset.shape[0], self.bits))
        for bit, omega in enumerate(self.omegas):
            for direction in np.flatnonzero(omega):
                values[:, bit] *= np.sin(offset[:, direction] * omega[direction] + np.pi / 2)
        return values > 0
