"""Ground truth that could be silently wrong, met where a user meets it: `hashbench run` and
`hashbench data check` on an embedding file whose `neighbors` are not a ground truth (all -1,
a train row named twice, ids outside train), and on vectors so large (1e20, finite in
float32) that a float32 distance overflows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("features_plugin")

TRAIN, TEST, K = 300, 40, 100  # K: the dataset's default `neighbours`, so the file's are used


def clustered(seed: int, rows: int, dimension: int = 16, clusters: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension)) * 3
    return (centres[rng.integers(0, clusters, rows)] + rng.standard_normal((rows, dimension))).astype(np.float32)


def brute_force(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Every squared Euclidean distance in float64, ties to the lower database position."""
    distances = ((queries[:, None, :].astype(np.float64) - database[None].astype(np.float64)) ** 2).sum(-1)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def ann_file(path: Path, spoil) -> Path:
    """An ann-benchmarks HDF5 file whose true neighbours ``spoil`` changes in place."""
    h5py = pytest.importorskip("h5py")
    vectors = clustered(0, TRAIN + TEST)
    train, test = vectors[:TRAIN], vectors[TRAIN:]
    neighbours = brute_force(test, train, K)
    spoil(neighbours)
    with h5py.File(path, "w") as handle:
        handle.attrs["distance"] = "euclidean"
        handle["train"], handle["test"] = train, test
        handle["neighbors"] = neighbours.astype(np.int32)
        handle["distances"] = np.zeros(neighbours.shape, dtype=np.float32)
    return path


def all_minus_one(ids: np.ndarray) -> None:
    ids[:] = -1


def repeated(ids: np.ndarray) -> None:
    ids[7, 1] = ids[7, 0]  # one row, not among the queries `data check` samples


def out_of_range(ids: np.ndarray) -> None:
    ids[3, 5] = TRAIN  # one past the last train row, not among the sampled queries


def run_grid(invoke, path: Path, results: Path, *extra: str):
    return invoke("run", "--methods", "lsh", "--bits", "16", "--datasets", f"features:{path}", "--results", results, *extra)


def assert_refused_before_any_fit(result, path: Path, results: Path, problem: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(path) in errors[0] and problem in errors[0], result.output
    assert not results.exists(), "nothing may be written before every input is checked"


@pytest.mark.parametrize(
    ("spoil", "problem", "example"),
    [
        (all_minus_one, f"{TEST} test rows whose neighbors are all -1", "test row 0"),
        (repeated, "1 test rows whose neighbors name one train row twice", "test row 7: id"),
        (out_of_range, f"1 test rows whose neighbors name ids outside train (0..{TRAIN - 1})", f"test row 3: id {TRAIN}"),
    ],
    ids=["all-minus-one", "repeated-id", "out-of-range-id"],
)
def test_file_neighbours_that_are_no_ground_truth_are_flagged_and_refused_before_any_fit(
    invoke, results, tmp_path, monkeypatch, spoil, problem, example
):
    monkeypatch.chdir(tmp_path)
    path = ann_file(tmp_path / "ann.hdf5", spoil)
    assert_refused_before_any_fit(run_grid(invoke, path, results), path, results, problem)
    # --drop-bad-rows drops rows with bad vectors or labels; it does not make such a ground truth usable
    assert_refused_before_any_fit(run_grid(invoke, path, results, "--drop-bad-rows"), path, results, problem)
    check = invoke("data", "check", f"features:{path}")
    assert check.exit_code == 1, check.output
    assert f"error: {problem}" in check.output and example in check.output
    assert "after dropping the bad rows" not in check.output  # no row is dropped for them


def test_the_same_file_with_sound_neighbours_runs(invoke, results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ann_file(tmp_path / "ann.hdf5", lambda ids: None)
    check = invoke("data", "check", f"features:{path}")
    assert check.exit_code == 0 and "agree with exact ones" in check.output, check.output
    result = run_grid(invoke, path, results)
    assert result.exit_code == 0 and " ok " in result.output, result.output


def _run_map(invoke, path: Path, results: Path, cache: Path) -> float:
    result = run_grid(invoke, path, results, "--cache", cache)
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in results.glob("runs/*/run.json")]
    assert record["status"] == "ok"
    return record["metrics"]["map"]


def test_vectors_scaled_by_1e20_get_the_exact_neighbours_and_the_same_map(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vectors = clustered(1, 1300)  # 1,000 random queries (the default), a database of 300
    huge = (vectors.astype(np.float64) * 1e20).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.isfinite(huge).all() and not np.isfinite(np.float32(huge.max()) ** 2)
    np.save("plain.npy", vectors)
    np.save("huge.npy", huge)
    plain_map = _run_map(invoke, tmp_path / "plain.npy", tmp_path / "plain-results", tmp_path / "plain-cache")
    huge_map = _run_map(invoke, tmp_path / "huge.npy", tmp_path / "huge-results", tmp_path / "huge-cache")
    assert huge_map == pytest.approx(plain_map, abs=1e-3)
    # every neighbour cache entry holds the true neighbours of the file's own vectors
    (manifest,) = (tmp_path / "huge-results" / "splits").glob("*.json")
    splits = json.loads(manifest.read_text())
    query, database = np.asarray(splits["query"]), np.asarray(splits["database"])
    entries = list((tmp_path / "huge-cache" / "neighbours").glob("*.npy"))
    assert len(entries) == 1
    np.testing.assert_array_equal(np.load(entries[0]), brute_force(huge[query], huge[database], K))
    (plain_entry,) = (tmp_path / "plain-cache" / "neighbours").glob("*.npy")
    np.testing.assert_array_equal(np.load(entries[0]), np.load(plain_entry))


def test_float64_values_beyond_float32_are_refused_not_ranked(invoke, results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vectors = clustered(2, 1300).astype(np.float64)
    vectors[5] *= 1e300  # finite in float64; methods read float32, where it is infinite
    np.save("wide.npy", vectors)
    check = invoke("data", "check", "features:wide.npy")
    assert check.exit_code == 1 and "1 rows whose vector holds NaN or an infinite value" in check.output, check.output
    result = run_grid(invoke, Path("wide.npy"), results)
    assert result.exit_code == 2 and "1 rows whose vector holds NaN or an infinite value" in result.output, result.output
    assert not results.exists() and not (tmp_path / "data" / ".hashbench-cache" / "neighbours").exists()
