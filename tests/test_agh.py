"""AGH against transcriptions of the authors' MATLAB (ColumbiaDVMM/Anchor-Graph-Hashing,
``OneLayerAGH_Train.m``, ``TwoLayerAGH_Train.m``, ``TwoLayerAGH_Test.m``, ``demo_AGH.m``) and
the paper's formula, on small hand-made sets; then a run on digits against LSH."""

from __future__ import annotations

import numpy as np
import pytest
from digits_runs import run_map

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import NotFittedError, RunContext
from hashbench.methods._anchors import anchor_graph
from hashbench.methods.agh import AGH
from hashbench.params import resolve_params


def _split(features: np.ndarray) -> DataSplit:
    arrays = DatasetArrays(labels=np.ones((len(features), 1), dtype=bool), features=features)
    return DataSplit("train", np.arange(len(features)), arrays)


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    """Three noisy clusters in 5-d: a manifold with clear structure, 90 items."""
    rng = np.random.default_rng(11)
    centres = rng.normal(0, 3, (3, 5))
    return np.vstack([c + rng.normal(0, 0.7, (30, 5)) for c in centres])


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    """90 items spread uniformly in 4-d: one connected graph, distinct eigenvalues."""
    return np.random.default_rng(12).random((90, 4))


def _matlab_z(x: np.ndarray, anchor: np.ndarray, s: int, sigma: float = 0.0):
    """``OneLayerAGH_Train.m``'s ``get Z`` block, loop for loop, dense."""
    n, m = len(x), len(anchor)
    dis = np.abs((x**2).sum(1)[:, None] + (anchor**2).sum(1)[None, :] - 2 * x @ anchor.T)  # sqdist.m
    val = np.zeros((n, s))
    pos = np.zeros((n, s), dtype=int)
    for i in range(s):
        pos[:, i] = dis.argmin(axis=1)
        val[:, i] = dis[np.arange(n), pos[:, i]]
        dis[np.arange(n), pos[:, i]] = 1e60
    if sigma == 0:
        sigma = np.mean(val[:, s - 1] ** 0.5)
    val = np.exp(-val / (1 / 1 * sigma**2))
    val = val / val.sum(axis=1, keepdims=True)
    z = np.zeros((n, m))
    for i in range(s):
        z[np.arange(n), pos[:, i]] = val[:, i]
    return z, sigma


def test_released_defaults():
    params = AGH.Params()
    # demo_AGH.m: m = 300, s = 2, sigma = 0 (estimated); both layers shown, two by default.
    assert (params.layers, params.anchors, params.s, params.sigma) == (2, 300, 2, None)


def test_z_rows_sum_to_one_with_s_nonzeros_and_match_the_released_block(blobs):
    anchors = blobs[::9] + 0.1  # 10 anchors
    for s in (1, 2, 3):
        graph, sigma = anchor_graph(blobs, anchors, s)
        z = graph.normalised().toarray()
        np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-12)
        assert ((z > 0).sum(axis=1) == s).all()
        expected, expected_sigma = _matlab_z(blobs, anchors, s)
        assert sigma == pytest.approx(expected_sigma, rel=1e-12)
        np.testing.assert_allclose(z, expected, atol=1e-12)
    # A given bandwidth is used as given.
    graph, sigma = anchor_graph(blobs, anchors, 2, sigma=1.5)
    assert sigma == 1.5
    np.testing.assert_allclose(graph.normalised().toarray(), _matlab_z(blobs, anchors, 2, 1.5)[0], atol=1e-12)


def test_one_layer_eigenfunctions_are_the_anchor_graph_eigenvectors(cloud):
    """Paper, section 3: the bits are signs of the top non-trivial eigenvectors of the
    n × n anchor graph A = Z Λ⁻¹ Zᵀ; Z W on the training set must be those eigenvectors."""
    method = AGH(6, AGH.Params(layers=1, anchors=15, s=3), RunContext(seed=1))
    method.fit(_split(cloud))
    z, _ = _matlab_z(_split(cloud).features.astype(float), method.anchors, 3)  # as the split holds them
    a = z @ np.diag(1 / z.sum(axis=0)) @ z.T  # brute force, n × n
    eigenvalues, vectors = np.linalg.eigh(a)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    assert eigenvalues[0] == pytest.approx(1.0) and eigenvalues[1] < 1 - 1e-3  # one trivial, dropped
    y = method.embed(_split(cloud))
    for k in range(6):
        u = vectors[:, k + 1]
        column = y[:, k]
        sign = np.sign(column @ u)
        np.testing.assert_allclose(sign * column, u, atol=1e-9)
    np.testing.assert_allclose(method.context.record["settings"]["eigenvalues"], eigenvalues[1:7], atol=1e-10)
    assert np.array_equal(method.encode(_split(cloud)), y > 0)


def test_a_disconnected_graph_drops_every_trivial_eigenvalue(blobs):
    """Three separate clusters give eigenvalue 1 three times; the released code keeps only
    eigenvalues below 1 − 1e-3, so none of the constant-per-component vectors is a bit."""
    method = AGH(4, AGH.Params(layers=1, anchors=15, s=2), RunContext(seed=1))
    method.fit(_split(blobs))
    assert max(method.context.record["settings"]["eigenvalues"]) < 1 - 1e-3


def _matlab_thresholds(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The threshold loop of ``TwoLayerAGH_Train.m``, line by line (dense Z)."""
    n, r1 = y.shape
    lamda = z.sum(axis=0)
    thres = np.zeros((2, r1))
    for k in range(r1):
        pos = np.flatnonzero(y[:, k] > 0)
        neg = np.setdiff1d(np.arange(n), pos)
        n1 = len(pos)
        n2 = n - n1
        get = y[:, k].copy()
        get[neg] = -1 * get[neg]
        right = get @ z
        right = right / lamda
        left = z[pos, :].sum(axis=0)
        s1 = np.sum(left * right)
        left1 = left / lamda
        s2 = n1 - np.sum(left * left1)
        s3 = y[pos, k].sum()
        thres[0, k] = (2 * s3 + n2 * (s3 - s1) / s2) / n
        thres[1, k] = (n1 * (s3 - s1) / s2 - 2 * s3) / n
    return thres


def test_two_layer_thresholds_and_codes_follow_the_released_code(blobs):
    method = AGH(8, AGH.Params(layers=2, anchors=15, s=3), RunContext(seed=2))
    method.fit(_split(blobs))
    z, _ = _matlab_z(_split(blobs).features.astype(float), method.anchors, 3)
    y = method.embed(_split(blobs))
    # Two layers scale W by √n: the eigenvectors then have norm √n on the training set.
    np.testing.assert_allclose(np.linalg.norm(y, axis=0), np.sqrt(len(blobs)), rtol=1e-8)
    np.testing.assert_allclose(method.thresholds, _matlab_thresholds(y, z), rtol=1e-9, atol=1e-12)
    # TwoLayerAGH_Test.m: Y1(pos) − Thres(1), −Y1(neg) + Thres(2); codes [Y, Y1] > 0.
    y1 = y.copy()
    for k in range(4):
        pos = y[:, k] > 0
        y1[pos, k] = y[pos, k] - method.thresholds[0, k]
        y1[~pos, k] = -y[~pos, k] + method.thresholds[1, k]
    assert np.array_equal(method.encode(_split(blobs)), np.hstack([y, y1]) > 0)


def test_refusals_and_encode_before_fit(blobs):
    with pytest.raises(UserError, match="even number of bits"):
        AGH(7).check_input(5)
    with pytest.raises(UserError, match="cannot produce 600 bits"):
        AGH(600).check_input(64)
    with pytest.raises(UserError, match="cannot produce 300 bits"):
        AGH(300, AGH.Params(layers=1)).check_input(64)
    # On a small training set: only as many eigenfunctions as the graph has.
    with pytest.raises(UserError, match="cannot produce 40 bits"):
        AGH(40, AGH.Params(layers=1, anchors=20)).fit(_split(blobs))
    with pytest.raises(NotFittedError):
        AGH(8).encode(_split(blobs))
    for overrides, message in (
        ({"layers": "3"}, "is not one of"),
        ({"s": "0"}, "agh.s must be at least 1"),
        ({"anchors": "1"}, "agh.anchors must be at least 2"),
        ({"sigma": "-1"}, "agh.sigma must be positive"),
        ({"s": "50", "anchors": "20"}, "must be at most agh.anchors"),
        ({"kmeans_iterations": "0"}, "at least 1"),
    ):
        with pytest.raises(UserError, match=message):
            resolve_params(AGH.Params, overrides, owner="agh")


def test_more_anchors_than_items_uses_one_per_item(blobs):
    method = AGH(8, context=RunContext(seed=0))
    method.fit(_split(blobs[:60]))
    assert len(method.anchors) <= 60
    assert any("one per training item" in d for d in method.context.record["deviations"])


@pytest.mark.parametrize("layers", [1, 2])
def test_conforms(layers):
    assert_conforms(AGH, {"layers": layers})


def test_same_seed_same_codes(blobs):
    first, second = (AGH(8, AGH.Params(anchors=20), RunContext(seed=4)) for _ in range(2))
    for method in (first, second):
        method.fit(_split(blobs))
    assert np.array_equal(first.encode(_split(blobs)), second.encode(_split(blobs)))




@pytest.fixture(scope="module")
def lsh_map(tmp_path_factory) -> float:
    return run_map("lsh", {}, tmp_path_factory.mktemp("lsh"))


@pytest.mark.parametrize("layers", [1, 2])
def test_learns_on_digits_beating_lsh(layers, lsh_map, tmp_path):
    value = run_map("agh", {"layers": layers}, tmp_path)
    # digits, 16 bits, split 0, seed 0: one layer 0.85, two 0.86; LSH 0.51.
    assert value > lsh_map + 0.1, (value, lsh_map)
