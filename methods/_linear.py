"""Shared pieces of the projection baselines: centring and PCA on the training split."""

from __future__ import annotations

import numpy as np


def principal_components(features: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top ``count`` principal directions ``(d, count)`` of ``features``.

    Eigen-decomposition of the covariance in float64; columns sorted by decreasing variance,
    each with a deterministic sign (largest-magnitude entry positive) so that runs on
    different LAPACK builds give the same codes.
    """
    data = np.asarray(features, dtype=np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    covariance = centred.T @ centred / max(len(data) - 1, 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues, kind="stable")[::-1][:count]
    components = eigenvectors[:, order]
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])])
    signs[signs == 0] = 1
    return mean, components * signs
