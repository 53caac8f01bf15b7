"""Classic baselines against small reference computations written plainly here."""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods.itq import ITQ
from hashbench.methods.lsh import LSH
from hashbench.methods.pcah import PCAH
from hashbench.methods.sh import SpectralHashing, spectral_modes


def _split(features: np.ndarray) -> DataSplit:
    arrays = DatasetArrays(labels=np.ones((len(features), 1), dtype=bool), features=features)
    return DataSplit("train", np.arange(len(features)), arrays)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    # Correlated, non-negative, non-centred features, like pixels or ReLU outputs.
    base = rng.random((300, 12)) @ rng.random((12, 12)) + 2.0
    return _split(base.astype(np.float32))


def test_lsh_is_sign_of_centred_gaussian_projection(data):
    method = LSH(16, context=RunContext(seed=5))
    method.fit(data)
    projection = np.random.default_rng([5, 0]).standard_normal((12, 16))
    x = data.features.astype(np.float64)
    expected = (x - x.mean(axis=0)) @ projection >= 0
    assert np.array_equal(method.encode(data), expected)
    # Centring balances the bits; without it non-negative data gives nearly constant bits.
    def imbalance(codes):  # mean distance of each bit's frequency from 1/2
        return np.abs(codes.mean(axis=0) - 0.5).mean()

    assert imbalance(method.encode(data)) < 0.15
    uncentred = LSH(16, LSH.Params(centre=False), RunContext(seed=5))
    uncentred.fit(data)
    assert imbalance(uncentred.encode(data)) > 0.4


def _pca_reference(x: np.ndarray, count: int) -> np.ndarray:
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:count].T


def _equal_up_to_bit_flips(a: np.ndarray, b: np.ndarray) -> bool:
    return all(np.array_equal(a[:, j], b[:, j]) or np.array_equal(a[:, j], ~b[:, j]) for j in range(a.shape[1]))


def test_pcah_matches_svd_pca(data):
    method = PCAH(8)
    method.fit(data)
    x = data.features.astype(np.float64)
    expected = (x - x.mean(axis=0)) @ _pca_reference(x, 8) >= 0
    assert _equal_up_to_bit_flips(method.encode(data), expected)


def _itq_reference(v: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Gong & Lazebnik's ITQ.m, line by line."""
    bit = v.shape[1]
    r = rng.standard_normal((bit, bit))
    u11, _, _ = np.linalg.svd(r)
    r = u11[:, :bit]
    for _ in range(iterations):
        z = v @ r
        ux = -np.ones_like(z)
        ux[z >= 0] = 1
        c = ux.T @ v
        ub, _, ua_t = np.linalg.svd(c)
        r = ua_t.T @ ub.T
    return r


def _pca_with_signs(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top ``count`` principal directions from numpy's SVD of the centred data, each
    with the documented sign (its largest-magnitude entry positive), independent of the
    methods' own PCA."""
    mean = x.mean(axis=0)
    components = _pca_reference(x, count)
    largest = np.abs(components).argmax(axis=0)
    return mean, components * np.sign(components[largest, np.arange(count)])


def test_itq_matches_the_authors_algorithm_and_lowers_quantisation_loss(data):
    method = ITQ(8, context=RunContext(seed=3))
    method.fit(data)
    x = data.features.astype(np.float64)
    mean, components = _pca_with_signs(x, 8)
    projected = (x - mean) @ components
    rotation = _itq_reference(projected, 50, np.random.default_rng([3, 0]))
    np.testing.assert_allclose(method.rotation, rotation, atol=1e-6)
    assert np.array_equal(method.encode(data), projected @ rotation >= 0)

    def loss(r):
        z = projected @ r
        return np.square(np.where(z >= 0, 1.0, -1.0) - z).sum()

    start = _itq_reference(projected, 0, np.random.default_rng([3, 0]))
    assert loss(method.rotation) < loss(start)


def test_projection_methods_refuse_more_bits_than_dimensions(data):
    for cls in (PCAH, ITQ):
        with pytest.raises(UserError, match="cannot produce 13 bits from 12-dimensional input"):
            cls(13).fit(data)


def test_spectral_modes_pick_lowest_frequencies():
    # Box widths 4 and 1: frequencies kπ/4 on the first direction are lower than π on the
    # second until k = 4, so the three lowest non-constant modes all lie on direction 0.
    modes = spectral_modes(np.array([4.0, 1.0]), 3)
    assert modes.tolist() == [[1, 0], [2, 0], [3, 0]]
    modes = spectral_modes(np.array([2.0, 1.5]), 4)
    # Eigenvalues (kπ/2)² and (kπ/1.5)²: 2.47 (0,1), 4.39 (1,0... second dir), 9.87, 17.5.
    assert modes.tolist() == [[1, 0], [0, 1], [2, 0], [0, 2]]


def test_spectral_hashing_bits_match_the_closed_form(data):
    method = SpectralHashing(6)
    method.fit(data)
    x = data.features.astype(np.float64)
    _, components = _pca_with_signs(x, 6)
    projected = x @ components  # the authors project without centring
    low = projected.min(axis=0) - np.finfo(float).eps
    high = projected.max(axis=0) + np.finfo(float).eps
    modes = spectral_modes(high - low, 6)
    expected = np.ones((len(x), 6))
    for bit, mode in enumerate(modes):
        for j in range(len(mode)):
            expected[:, bit] *= np.sin(np.pi / 2 + mode[j] * np.pi / (high[j] - low[j]) * (projected[:, j] - low[j]))
    assert np.array_equal(method.encode(data), expected > 0)


def test_spectral_hashing_allows_more_bits_than_dimensions(data):
    method = SpectralHashing(40)
    method.fit(data)
    codes = method.encode(data)
    assert codes.shape == (300, 40)
    assert 0.2 < codes.mean() < 0.8
