"""SpH (spherical hashing) against the authors' released code (github.com/jp-sglab/Spherical_Hashing),
and the spherical-Hamming mAP against a brute-force reference."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.data.splits import SplitManifest
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods import sph
from hashbench.methods.sph import SphericalHashing, SpHParams, converged
from hashbench.metrics.spherical import distance_ranks, spherical_map
from hashbench.params import resolve_params
from hashbench.run.runner import GridSpec, run_grid
from hashbench.storage.records import RecordError, RunRecord


def _split(features: np.ndarray) -> DataSplit:
    arrays = DatasetArrays(labels=np.ones((len(features), 1), dtype=bool), features=features)
    return DataSplit("train", np.arange(len(features)), arrays)


@pytest.fixture(scope="module")
def blobs() -> DataSplit:
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 4, (5, 10))
    return _split((centres[rng.integers(0, 5, 600)] + rng.normal(0, 1, (600, 10))).astype(np.float32))


def test_conforms():
    assert_conforms(SphericalHashing)


def test_released_settings():
    """Src_CPP/Parameters.h: NUM_TRAIN_SAMPLES 20000, INCLUDING_RATIO 0.5, OVERLAP_RATIO 0.25,
    EPSILON_MEAN 0.10, EPSILON_STDDEV 0.15, MAX_NUM_ITERATIONS 50; BinaryHash.cpp Set_Spheres:
    initial pivots are the centre of 10 random training points."""
    params = SpHParams()
    assert (params.training_samples, params.epsilon_mean, params.epsilon_stddev) == (20000, 0.10, 0.15)
    assert (params.max_iterations, params.pivot_samples, params.stopping) == (50, 10, "mean")
    assert (sph.INCLUDING_RATIO, sph.OVERLAP_RATIO) == (0.5, 0.25)
    assert SphericalHashing.family == "classic" and SphericalHashing.input == "features"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epsilon_mean": 0.0}, "sph.epsilon_mean must lie in (0, 1]"),
        ({"epsilon_stddev": 1.5}, "sph.epsilon_stddev must lie in (0, 1]"),
        ({"training_samples": 0}, "sph.training_samples must be positive"),
        ({"max_iterations": -1}, "sph.max_iterations must be >= 0"),
        ({"stopping": "paper"}, "sph.stopping"),
    ],
)
def test_bad_parameters_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError) as error:
        resolve_params(SpHParams, overrides, owner="sph")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_parameter_on_the_cli_exits_2(invoke, results):
    result = invoke("run", "--methods", "sph", "--bits", "8", "--set", "sph.epsilon_mean=0", "--results", results)
    assert result.exit_code == 2 and "epsilon_mean" in result.output


def test_one_training_point_is_refused():
    with pytest.raises(UserError, match="at least 2 training points"):
        SphericalHashing(4).fit(_split(np.zeros((1, 3))))


def test_stopping_rules_of_the_released_codes():
    """C++ (BinaryHash.cpp): |mean(o_ij) - m/4| < e_m m/4 and std(o_ij) < e_s m/4, strict;
    MATLAB (SphericalHashing.m) and the paper: mean(|o_ij - m/4|) <= e_m m/4 and std <= e_s m/4.
    m = 400: the target overlap is 100, the tolerances 10 (mean) and 15 (std)."""
    cpp, matlab = SpHParams(), SpHParams(stopping="mean_abs")
    cases = {  # overlaps of the pairs → (C++ rule, MATLAB rule)
        (95, 105): (True, True),
        (80, 120): (False, False),  # std 20
        (88, 112): (True, False),  # mean on target, but each pair 12 off
        (110, 110): (False, True),  # 10 off: strict in C++, <= in MATLAB
        (86, 114): (True, False),  # std 14 < 15
        (85, 115): (False, False),  # std 15: strict in C++; mean |dev| 15 > 10
    }
    for pairs, (expected_cpp, expected_matlab) in cases.items():
        overlaps = np.array(pairs)
        assert converged(overlaps, 400, cpp) == expected_cpp, pairs
        assert converged(overlaps, 400, matlab) == expected_matlab, pairs
    assert converged(np.array([], dtype=np.int64), 400, cpp)  # one bit: nothing to balance


def _released_set_spheres(sample: np.ndarray, pivots: np.ndarray, max_iterations: int) -> tuple[np.ndarray, int]:
    """BinaryHash.cpp SphericalHashing::Set_Spheres, transcribed loop by loop (float64; a
    point on the boundary counted inside, as the method does)."""
    m, bits = sample.shape[0], pivots.shape[0]
    pivots = pivots.copy()

    def radii(c):
        distances = np.array([[((x - c[i]) ** 2).sum() for i in range(bits)] for x in sample])
        t_index = int(m * 0.5)
        return distances, np.sort(distances, axis=0)[t_index - 1]

    distances, r_sq = radii(pivots)
    moves = 0
    for _ in range(max_iterations):
        table = distances <= r_sq
        overlaps = np.zeros((bits, bits), dtype=np.int64)
        values = []
        for i in range(bits - 1):
            for j in range(i + 1, bits):
                overlaps[i, j] = overlaps[j, i] = int((table[:, i] & table[:, j]).sum())
                values.append(overlaps[i, j])
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / len(values)
        if abs(mean - m * 0.25) < m * 0.25 * 0.10 and np.sqrt(variance) < m * 0.25 * 0.15:
            break
        forces = np.zeros_like(pivots)
        for i in range(bits - 1):
            for j in range(i + 1, bits):
                alpha = (overlaps[i, j] / m - 0.25) / 0.25 / 2.0
                force = alpha * (pivots[j] - pivots[i])
                forces[j] += force
                forces[i] -= force
        for i in range(bits):
            pivots[i] += forces[i] / bits
        distances, r_sq = radii(pivots)
        moves += 1
    return pivots, moves


@pytest.mark.parametrize("max_iterations", [0, 3, 50])
def test_spheres_follow_the_released_iteration(blobs, max_iterations):
    params = SpHParams(training_samples=400, max_iterations=max_iterations)
    method = SphericalHashing(12, params, RunContext(seed=4))
    method.fit(blobs)
    # the same draws as the method: 400 of 600 without replacement, then 10 points per pivot
    rng = RunContext(seed=4).rng()
    features = blobs.features.astype(np.float64)
    sample = features[np.sort(rng.choice(600, 400, replace=False))]
    initial = sample[rng.integers(0, 400, size=(12, 10))].mean(axis=1)
    expected, moves = _released_set_spheres(sample, initial, max_iterations)
    np.testing.assert_allclose(method.pivots, expected, rtol=1e-9, atol=1e-9)
    assert method.context.record["pivot_moves"] == moves
    assert method.context.record["training_samples"] == 400
    if max_iterations == 0:
        np.testing.assert_allclose(method.pivots, initial, rtol=1e-12)


def test_trained_spheres_hold_half_and_overlap_by_a_quarter(blobs):
    """Each sphere holds ⌊m/2⌋ training points exactly (continuous data, no ties), and the
    pairwise overlaps meet the released tolerances, which the untrained start misses."""
    method = SphericalHashing(16, context=RunContext(seed=0))
    method.fit(blobs)  # 600 < 20,000: the whole training split is the sample
    record = method.context.record
    assert record["training_samples"] == 600 and record["stopped_by_rule"] and record["converged"]
    assert 0 < record["pivot_moves"] < 50
    codes = method.encode(blobs).astype(np.int64)
    assert np.array_equal(codes.sum(axis=0), np.full(16, 300))
    pairs = (codes.T @ codes)[np.triu_indices(16, k=1)]
    assert abs(pairs.mean() - 150) < 0.10 * 150 and pairs.std() < 0.15 * 150
    assert record["overlap_mean"] == pytest.approx(pairs.mean() / 600, abs=1e-12)
    start = SphericalHashing(16, SpHParams(max_iterations=0), RunContext(seed=0))
    start.fit(blobs)
    assert not start.context.record["converged"]
    assert any("float64" in text for text in record["deviations"])


def test_bit_is_one_inside_the_sphere(blobs):
    method = SphericalHashing(8, context=RunContext(seed=1))
    method.fit(blobs)
    far = method.pivots.mean(axis=0) + 1e6
    codes = method.encode(_split(np.vstack([method.pivots[:1], far[None, :]])))
    assert codes[0, 0] and not codes[1].any()


# --------------------------------------------------------------------------------------------
# the spherical Hamming distance and its mAP


def _distance(q: np.ndarray, x: np.ndarray) -> Fraction:
    """Compute_SHD (Src_CPP/BinaryHash.h): |q ^ x| / (|q & x| + 0.1), exactly."""
    return Fraction(int((q ^ x).sum())) / (int((q & x).sum()) + Fraction(1, 10))


def _brute_force_map(queries, database, relevant, k):
    """Rank by (spherical distance, database position), then AP@k = (1/R_k) Σ rel_i P@i,
    0 for a query with no relevant item in the top k; the mean over all queries."""
    k = min(k, len(database))
    values = []
    for q, rel in zip(queries, relevant, strict=True):
        order = sorted(range(len(database)), key=lambda i: (_distance(q, database[i]), i))[:k]
        hits, total = 0, 0.0
        for position, item in enumerate(order, start=1):
            if rel[item]:
                hits += 1
                total += hits / position
        values.append(total / hits if hits else 0.0)
    return float(np.mean(values))


@pytest.mark.parametrize("bits", [1, 2, 5, 13, 24, 40, 64, 100])
def test_distance_ranks_are_the_exact_order(bits):
    table = distance_ranks(bits)
    pairs = [(x, a) for x in range(bits + 1) for a in range(bits + 1 - x)]
    values = {pair: Fraction(pair[0]) / (pair[1] + Fraction(1, 10)) for pair in pairs}
    rank = {value: position for position, value in enumerate(sorted(set(values.values())))}
    for pair in pairs:
        assert table[pair] == rank[values[pair]]
    assert (table[np.add.outer(np.arange(bits + 1), np.arange(bits + 1)) > bits] == -1).all()


def test_equal_distances_from_different_counts_tie():
    # x / (a + 0.1): 0 for every a; 1/1.1 = 11/12.1 (x = 11, a = 12)
    table = distance_ranks(64)
    assert len({table[0, a] for a in range(65)}) == 1
    assert table[1, 1] == table[11, 12] and table[1, 1] != table[1, 2]
    # no common bit: 10·|XOR|, finite (1/0.1 = 11/1.1 = 10)
    assert table[1, 0] == table[11, 1] and table[10, 1] < table[1, 0] < table[2, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spherical_map_matches_brute_force_on_codes_full_of_ties(seed):
    rng = np.random.default_rng(seed)
    bits, queries, size = 5, 9, 70
    q = rng.random((queries, bits)) < 0.4
    x = rng.random((size, bits)) < 0.4
    x[:4] = False  # all-zero codes: no common bit with anything
    q[0] = False
    q_labels, x_labels = rng.integers(0, 3, queries), rng.integers(0, 3, size)
    relevant = q_labels[:, None] == x_labels[None, :]
    for topk in (None, 1, 7, 50, 1000):
        result = spherical_map(q, x, q_labels, x_labels, topk=topk)
        expected = _brute_force_map(q, x, relevant, size if topk is None else topk)
        assert result.map == pytest.approx(expected, abs=1e-12), topk
        assert result.map_all == pytest.approx(_brute_force_map(q, x, relevant, size), abs=1e-12)
        assert result.map_k == min(size, topk or size)
    # chunks, {-1,+1} codes and packed codes change nothing
    base = spherical_map(q, x, q_labels, x_labels, topk=7)
    signs = spherical_map(np.where(q, 1, -1), np.where(x, 1, -1), q_labels, x_labels, topk=7, chunk_size=2)
    packed = spherical_map(np.packbits(q, axis=1), np.packbits(x, axis=1), q_labels, x_labels, bits=bits, topk=7)
    assert base == signs == packed


def test_spherical_map_with_neighbour_lists_and_multi_hot_labels():
    rng = np.random.default_rng(5)
    q, x = rng.random((6, 4)) < 0.5, rng.random((30, 4)) < 0.5
    lists = [rng.choice(30, size, replace=False) for size in (0, 1, 3, 5, 8, 2)]
    relevant = np.zeros((6, 30), dtype=bool)
    for row, items in enumerate(lists):
        relevant[row, items] = True
    result = spherical_map(q, x, relevance=lists, topk=10)
    assert result.map == pytest.approx(_brute_force_map(q, x, relevant, 10), abs=1e-12)
    q_hot, x_hot = rng.random((6, 4)) < 0.3, rng.random((30, 4)) < 0.3
    shared = (q_hot.astype(int) @ x_hot.T.astype(int)) > 0
    multi = spherical_map(q, x, q_hot, x_hot, topk=None)
    assert multi.map == pytest.approx(_brute_force_map(q, x, shared, 30), abs=1e-12)


def test_spherical_map_refuses_what_evaluate_refuses():
    with pytest.raises(UserError, match="bits"):
        spherical_map(np.ones((2, 4), bool), np.ones((3, 5), bool), [0, 1], [0, 1, 1])
    with pytest.raises(UserError, match="topk"):
        spherical_map(np.ones((2, 4), bool), np.ones((3, 4), bool), [0, 1], [0, 1, 1], topk=0)


# --------------------------------------------------------------------------------------------
# learning, and the run record


def _run(method: str, params: dict, results: Path) -> RunRecord:
    (outcome,) = run_grid(
        GridSpec(methods=[method], bits=[16], seeds=[0], params={method: params} if params else {}, results=results)
    )
    assert outcome.status == "ok", outcome.error
    return outcome.record


def test_learning_on_digits_beats_its_start_and_lsh(tmp_path):
    """mAP@100 on digits, 16 bits: trained about 0.64, the untrained spheres (no pivot
    moves) about 0.50, LSH about 0.51."""
    trained = _run("sph", {}, tmp_path / "trained").metrics["map"]
    untrained = _run("sph", {"max_iterations": 0}, tmp_path / "untrained").metrics["map"]
    lsh = _run("lsh", {}, tmp_path / "lsh").metrics["map"]
    assert trained > untrained + 0.05 and trained > lsh + 0.05, (trained, untrained, lsh)


def test_a_cli_run_records_the_spherical_map_as_an_extra_metric(invoke, results):
    result = invoke("run", "--methods", "sph,lsh", "--bits", "16", "--results", results)
    assert result.exit_code == 0, result.output
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in results.glob("runs/*/run.json"))}
    assert "extra_metrics" not in records["lsh"]  # a method without the hook: record unchanged
    extra = records["sph"]["extra_metrics"]
    assert set(extra) == {"map_spherical", "map_all_spherical"}
    assert "spherical Hamming distance" in extra["map_spherical"]["description"]
    assert "mAP@100" in extra["map_spherical"]["description"]
    # the stored value is the spherical mAP of the stored codes
    record = RunRecord.from_json(records["sph"])
    assert record.extra_metrics == extra
    manifest = SplitManifest.load(results / record.split.manifest)
    labels = load_digits().target
    with np.load(results / "runs" / record.key / "codes.npz") as codes:
        again = spherical_map(
            codes["query_codes"], codes["database_codes"], labels[manifest.splits["query"]],
            labels[manifest.splits["database"]], bits=16, topk=manifest.topk,
        )  # fmt: skip
    assert extra["map_spherical"]["value"] == pytest.approx(again.map, abs=1e-12)
    assert extra["map_all_spherical"]["value"] == pytest.approx(again.map_all, abs=1e-12)
    # a malformed extra metric is refused on reading, with the field named
    broken = {**records["sph"], "extra_metrics": {"map_spherical": {"value": "high", "description": "x"}}}
    with pytest.raises(RecordError, match="extra_metrics.map_spherical.value"):
        RunRecord.from_json(broken)
    # the report tabulates it like any metric
    report = invoke("report", "--results", results, "--out", results.parent / "report", "--no-plots",
                    "--metric", "extra_metrics.map_spherical")  # fmt: skip
    assert report.exit_code == 0, report.output
    table = (results.parent / "report" / "extra_metrics_map_spherical.md").read_text()
    assert f"| sph | **{extra['map_spherical']['value']:.4f}** |" in table and "| lsh | — |" in table
