"""The `features` dataset: every file format, settings, protocols, checks, nearest-neighbour
ground truth, the registry's `features:PATH` names, and runs through the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hashbench import registry
from hashbench.data.checks import check_dataset
from hashbench.data.splits import draw_split
from hashbench.datasets import features as features_module
from hashbench.datasets.features import Features
from hashbench.errors import UserError
from hashbench.run.config import load_config

pytestmark = pytest.mark.usefixtures("features_plugin")


def clustered(rng, rows, dimension=12, clusters=8):
    centres = rng.standard_normal((clusters, dimension)) * 3
    ids = rng.integers(0, clusters, rows)
    return (centres[ids] + rng.standard_normal((rows, dimension))).astype(np.float32), ids


def dataset(path, **settings):
    """An instance of the dataset configured with ``path`` and ``settings``."""
    return Features.configured(Path(path).stem, {"path": str(path), **settings}, "test")()


def brute_force_neighbours(queries, database, k):
    distances = ((queries[:, None, :].astype(np.float64) - database[None].astype(np.float64)) ** 2).sum(-1)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def write_hdf5(path, train, test, k=10, distance="euclidean", neighbours=None):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as handle:
        handle.attrs["distance"] = distance
        handle["train"] = train
        handle["test"] = test
        found = brute_force_neighbours(test, train, k) if neighbours is None else neighbours
        handle["neighbors"] = found.astype(np.int32)
        handle["distances"] = np.zeros(found.shape, dtype=np.float32)
    return path


# --------------------------------------------------------------------------------------------
# formats


def test_npy_vectors_only_relevance_by_neighbours(tmp_path):
    vectors, _ = clustered(np.random.default_rng(0), 300)
    np.save(tmp_path / "emb.npy", vectors)
    arrays = dataset(tmp_path / "emb.npy").load(tmp_path)
    np.testing.assert_array_equal(arrays.features, vectors)
    assert arrays.labels.shape == (300, 0)
    assert arrays.relevance == "neighbours" and arrays.groups == {}
    assert arrays.provenance["sha256"] == features_module.file_sha256(str(tmp_path / "emb.npy"))


def test_npz_features_with_class_ids_and_split_with_multi_hot_labels(tmp_path):
    rng = np.random.default_rng(1)
    vectors, ids = clustered(rng, 200)
    np.savez(tmp_path / "labelled.npz", features=vectors, labels=ids)
    arrays = dataset(tmp_path / "labelled.npz").load(tmp_path)
    assert arrays.relevance == "labels"
    np.testing.assert_array_equal(arrays.labels.argmax(1), ids)
    hot = rng.random((200, 5)) < 0.4
    hot[:, 0] |= ~hot.any(1)  # every row labelled
    np.savez(tmp_path / "split.npz", train=vectors[:150], test=vectors[150:], train_labels=hot[:150], test_labels=hot[150:].astype(np.uint8))
    arrays = dataset(tmp_path / "split.npz").load(tmp_path)
    np.testing.assert_array_equal(arrays.labels, hot)
    np.testing.assert_array_equal(arrays.groups["train"], np.arange(150))
    np.testing.assert_array_equal(arrays.groups["test"], np.arange(150, 200))
    # labels = false: relevance by neighbours instead
    assert dataset(tmp_path / "split.npz", labels=False).load(tmp_path).relevance == "neighbours"


def test_parquet_list_column_and_label_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    vectors, ids = clustered(np.random.default_rng(2), 120, dimension=6)
    table = pa.table({"id": np.arange(120), "embedding": list(vectors), "label": ids})
    pq.write_table(table, tmp_path / "emb.parquet")
    arrays = dataset(tmp_path / "emb.parquet", labels="label").load(tmp_path)
    np.testing.assert_allclose(arrays.features, vectors)
    np.testing.assert_array_equal(arrays.labels.argmax(1), ids)
    fixed = pa.table({"vec": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 6), "text": ["a"] * 120})
    pq.write_table(fixed, tmp_path / "fixed.parquet")
    arrays = dataset(tmp_path / "fixed.parquet").load(tmp_path)
    np.testing.assert_allclose(arrays.features, vectors)
    assert arrays.relevance == "neighbours"
    two = pa.table({"a": list(vectors), "b": list(vectors)})
    pq.write_table(two, tmp_path / "two.parquet")
    with pytest.raises(UserError, match="several list columns of vectors"):
        dataset(tmp_path / "two.parquet").load(tmp_path)
    assert dataset(tmp_path / "two.parquet", column="b").load(tmp_path).features.shape == (120, 6)


def test_parquet_rows_of_other_lengths_or_missing(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"v": [[1.0, 2.0], [3.0], [4.0, 5.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(UserError, match="different lengths"):
        dataset(tmp_path / "ragged.parquet").load(tmp_path)
    pq.write_table(pa.table({"v": [[1.0, 2.0], None, [4.0, 5.0]]}), tmp_path / "gap.parquet")
    with pytest.raises(UserError, match="1 rows whose vector holds NaN or an infinite value, or is missing"):
        dataset(tmp_path / "gap.parquet").load(tmp_path)
    arrays = dataset(tmp_path / "gap.parquet").load(tmp_path, drop_bad_rows=True)
    np.testing.assert_array_equal(arrays.features, [[1, 2], [4, 5]])


def test_ann_benchmarks_hdf5(tmp_path):
    rng = np.random.default_rng(3)
    vectors, _ = clustered(rng, 260)
    path = write_hdf5(tmp_path / "glove-12-angular.hdf5", vectors[:200], vectors[200:], distance="angular")
    plugin = dataset(path)
    arrays = plugin.load(tmp_path)
    assert arrays.metric == "cosine" and arrays.relevance == "neighbours"
    assert plugin.protocol(None).name == "declared"
    assert "nearest neighbours (cosine)" in plugin.protocol(None).summary()
    assert arrays.file_neighbours.shape == (60, 10)
    jaccard = write_hdf5(tmp_path / "kosarak-jaccard.hdf5", vectors[:200], vectors[200:], distance="jaccard")
    with pytest.raises(UserError, match="declares distance 'jaccard'"):
        dataset(jaccard).protocol(None)
    assert dataset(jaccard, metric="euclidean").load(tmp_path).metric == "euclidean"


def test_missing_optional_packages_are_one_clear_line(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without(name, *args):
        if name in ("pyarrow", "h5py"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without)
    (tmp_path / "a.parquet").write_bytes(b"PAR1")
    (tmp_path / "a.hdf5").write_bytes(b"x")
    with pytest.raises(UserError, match=r"needs the pyarrow package.*pip install pyarrow"):
        dataset(tmp_path / "a.parquet").load(tmp_path)
    with pytest.raises(UserError, match=r"needs the h5py package.*pip install h5py"):
        dataset(tmp_path / "a.hdf5").protocol(None)


# --------------------------------------------------------------------------------------------
# settings, protocols, versions


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"path": "x.npy", "neighbors": 5}, "unknown setting 'neighbors'"),
        ({"metric": "cosine"}, "needs path"),
        ({"path": "x.npy", "neighbours": 0}, "neighbours must be a positive integer"),
        ({"path": "x.npy", "metric": "manhattan"}, "metric 'manhattan': expected one of euclidean, cosine"),
        ({"path": "x.npy", "labels": True}, "labels must name an array or column, or be false"),
        ({"path": "x.csv"}, "cannot tell the format from the suffix '.csv'"),
    ],
)
def test_bad_settings_name_the_table(table, message):
    with pytest.raises(UserError, match=message):
        Features.configured("x", table, "[datasets.x]")


def test_protocols_sizes_and_disjointness(tmp_path):
    vectors, ids = clustered(np.random.default_rng(4), 400)
    np.save(tmp_path / "emb.npy", vectors)
    plugin = dataset(tmp_path / "emb.npy", query_size=50, val_size=30)
    arrays = plugin.load(tmp_path)
    assert plugin.protocol(None).name == "standard"
    standard = draw_split("emb", plugin.protocol("standard"), arrays, 0)
    assert standard.splits["query"].size == 50
    np.testing.assert_array_equal(standard.splits["train"], standard.splits["database"])
    # a validation split is scored by labels: only labelled files have one
    with pytest.raises(UserError, match="has no protocol 'standard-val'"):
        plugin.protocol("standard-val")
    np.savez(tmp_path / "labelled.npz", features=vectors, labels=ids)
    labelled = dataset(tmp_path / "labelled.npz", query_size=50, val_size=30)
    with_val = draw_split("labelled", labelled.protocol("standard-val"), labelled.load(tmp_path), 0)
    assert with_val.splits["val"].size == 30
    assert np.intersect1d(with_val.splits["val"], with_val.splits["train"]).size == 0
    sampled = draw_split("emb", dataset(tmp_path / "emb.npy", query_size=50, train_size=100).protocol("standard"), arrays, 0)
    assert sampled.splits["train"].size == 100
    with pytest.raises(UserError, match="has no protocol 'declared'"):
        plugin.protocol("declared")
    with pytest.raises(UserError, match="declares no split"):
        dataset(tmp_path / "emb.npy", split="declared").protocol(None)


def test_version_follows_content_and_settings_not_the_path(tmp_path):
    vectors, _ = clustered(np.random.default_rng(5), 300)
    np.save(tmp_path / "a.npy", vectors)
    np.save(tmp_path / "b.npy", vectors)
    np.save(tmp_path / "c.npy", vectors + 1)
    version = {name: dataset(tmp_path / f"{name}.npy").protocol(None).version for name in "abc"}
    assert version["a"] == version["b"] != version["c"]
    assert dataset(tmp_path / "a.npy", neighbours=7).protocol(None).version != version["a"]


# --------------------------------------------------------------------------------------------
# checks


def test_bad_rows_are_refused_or_dropped_and_data_check_lists_them(tmp_path):
    vectors, _ = clustered(np.random.default_rng(6), 300)
    vectors[7] = np.nan
    vectors[9, 2] = np.inf
    vectors[20:25] = vectors[:5]
    np.save(tmp_path / "bad.npy", vectors)
    plugin = dataset(tmp_path / "bad.npy", query_size=20)
    with pytest.raises(UserError, match="2 rows whose vector holds NaN or an infinite value"):
        plugin.load(tmp_path)
    arrays = plugin.load(tmp_path, drop_bad_rows=True)
    assert len(arrays) == 298 and arrays.provenance["dropped_by_reason"] == {"non_finite": 2}
    report = check_dataset(plugin, tmp_path)
    assert not report.ok
    kinds = {finding.kind: finding for finding in report.findings}
    assert kinds["non_finite"].examples == ["row 7: ", "row 9: "]
    assert kinds["duplicate"].severity == "warning" and kinds["duplicate"].count == 5
    assert kinds["protocol"].message.startswith("protocol standard draws (after dropping the bad rows)")


def test_cosine_zero_vectors_and_label_faults(tmp_path):
    vectors, ids = clustered(np.random.default_rng(7), 200)
    vectors[3] = 0
    np.save(tmp_path / "z.npy", vectors)
    with pytest.raises(UserError, match="1 rows whose vector is all zeros"):
        dataset(tmp_path / "z.npy", metric="cosine").load(tmp_path)
    dataset(tmp_path / "z.npy").load(tmp_path)  # fine under Euclidean distance
    ids[5] = -1
    np.savez(tmp_path / "ids.npz", features=vectors + 1, labels=ids)
    with pytest.raises(UserError, match="1 rows with a negative class id"):
        dataset(tmp_path / "ids.npz").load(tmp_path)
    np.savez(tmp_path / "wide.npz", train=vectors[:100], test=vectors[100:], train_labels=np.eye(100, 4), test_labels=np.eye(100, 3))
    with pytest.raises(UserError, match=r"differ in width"):
        dataset(tmp_path / "wide.npz").load(tmp_path)
    report = check_dataset(dataset(tmp_path / "wide.npz"), tmp_path)
    assert [finding.kind for finding in report.errors] == ["file"]
    np.savez(tmp_path / "short.npz", features=vectors, labels=ids[:50])
    with pytest.raises(UserError, match="50 label rows for 200 vectors"):
        dataset(tmp_path / "short.npz").load(tmp_path)
    np.savez(tmp_path / "column.npz", features=vectors, labels=ids[:, None])
    with pytest.raises(UserError, match="one column is ambiguous"):
        dataset(tmp_path / "column.npz").load(tmp_path)


def test_data_check_compares_the_files_neighbours_with_exact_ones(tmp_path):
    rng = np.random.default_rng(8)
    vectors, _ = clustered(rng, 300)
    good = write_hdf5(tmp_path / "good.hdf5", vectors[:250], vectors[250:])
    assert "agree with exact ones" in " ".join(f.message for f in check_dataset(dataset(good), tmp_path).findings)
    wrong = rng.integers(0, 250, size=(50, 10))
    bad = write_hdf5(tmp_path / "bad.hdf5", vectors[:250], vectors[250:], neighbours=wrong)
    report = check_dataset(dataset(bad), tmp_path)
    assert report.ok  # a warning: the runs can still use them
    assert any(f.kind == "neighbours" and f.severity == "warning" for f in report.findings)


# --------------------------------------------------------------------------------------------
# ground truth


def test_ground_truth_is_exact_cached_and_in_database_positions(tmp_path, monkeypatch):
    vectors, _ = clustered(np.random.default_rng(9), 500)
    vectors[100:140] = vectors[:40]  # exact ties
    np.save(tmp_path / "emb.npy", vectors)
    plugin = dataset(tmp_path / "emb.npy", query_size=60, neighbours=15)
    arrays = plugin.load(tmp_path, cache_dir=tmp_path / "cache")
    arrays.dataset = "emb"
    manifest = draw_split("emb", plugin.protocol(None), arrays, 3)
    found = arrays.neighbour_relevance(manifest)
    query, database = manifest.splits["query"], manifest.splits["database"]
    np.testing.assert_array_equal(found, brute_force_neighbours(vectors[query], vectors[database], 15))

    def no_recomputing(*args, **kwargs):
        raise AssertionError("the cached ground truth should have been used")

    monkeypatch.setattr(features_module, "exact_neighbours", no_recomputing)
    again = plugin.load(tmp_path, cache_dir=tmp_path / "cache")
    again.dataset = "emb"
    np.testing.assert_array_equal(again.neighbour_relevance(manifest), found)
    assert len(list((tmp_path / "cache" / "neighbours").glob("*.npy"))) == 1


def test_hdf5_neighbours_used_under_the_declared_split_and_computed_otherwise(tmp_path):
    rng = np.random.default_rng(10)
    vectors, _ = clustered(rng, 300)
    marked = np.tile(np.arange(10), (50, 1))  # not the true neighbours: shows where they came from
    path = write_hdf5(tmp_path / "ann.hdf5", vectors[:250], vectors[250:], neighbours=marked)
    plugin = dataset(path, neighbours=5)
    arrays = plugin.load(tmp_path)
    declared = draw_split("ann", plugin.protocol("declared"), arrays, 0)
    np.testing.assert_array_equal(arrays.neighbour_relevance(declared), marked[:, :5])
    exact = dataset(path, neighbours=5, ground_truth="exact").load(tmp_path)
    np.testing.assert_array_equal(exact.neighbour_relevance(declared), brute_force_neighbours(vectors[250:], vectors[:250], 5))
    wider = dataset(path, neighbours=20).load(tmp_path)  # more than the file holds: computed
    np.testing.assert_array_equal(wider.neighbour_relevance(declared), brute_force_neighbours(vectors[250:], vectors[:250], 20))
    standard = draw_split("ann", dataset(path, neighbours=5, query_size=30).protocol("standard"), arrays, 0)
    query, database = standard.splits["query"], standard.splits["database"]
    np.testing.assert_array_equal(arrays.neighbour_relevance(standard), brute_force_neighbours(vectors[query], vectors[database], 5))


# --------------------------------------------------------------------------------------------
# names: the registry and the experiment file


def test_registry_names_files_by_their_stem(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "emb.npy", np.eye(20, 4, dtype=np.float32) + (folder == "b"))
    a, b = f"features:{tmp_path / 'a' / 'emb.npy'}", f"features:{tmp_path / 'b' / 'emb.npy'}"
    grid = registry.resolve_datasets(["digits", a, a])
    assert grid.names == ["digits", "emb"]
    assert grid.get("emb").settings.path == str(tmp_path / "a" / "emb.npy")
    assert not registry.datasets.knows("emb")  # the grid's, not the registry's
    with pytest.raises(UserError, match="two datasets of the grid are named 'emb'"):
        registry.resolve_datasets([a, b])
    assert registry.resolve_datasets(["one", "two"], {"one": {"path": a[9:]}, "two": {"path": b[9:]}}).names == ["one", "two"]
    # a table of the file's name adds its settings
    assert registry.resolve_datasets([a], {"emb": {"neighbours": 3}}).get("emb").settings.neighbours == 3
    with pytest.raises(UserError, match="like the table \\[datasets.emb\\], which names another path"):
        registry.resolve_datasets([a], {"emb": {"path": b[9:]}})
    np.save(tmp_path / "digits.npy", np.eye(20, 4, dtype=np.float32))
    with pytest.raises(UserError, match="the dataset name 'digits' belongs to"):
        registry.resolve_datasets([f"features:{tmp_path / 'digits.npy'}"])
    with pytest.raises(UserError, match="dataset digits takes no settings"):
        registry.resolve_datasets(["x"], {"x": {"kind": "digits", "path": "y"}})
    assert registry.get_dataset(a).name == "emb"
    with pytest.raises(UserError, match="write features:PATH"):
        registry.resolve_datasets(["features:"])
    with pytest.raises(UserError, match="needs a file"):
        registry.get_dataset("features")().load(tmp_path)


def test_config_datasets_as_tables(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('methods = ["lsh"]\n[datasets.sift]\npath = "sift.hdf5"\nneighbours = 10\n[datasets.digits]\n')
    loaded = load_config(config)
    assert loaded["datasets"] == ["sift", "digits"]
    assert loaded["dataset_options"] == {"sift": {"path": "sift.hdf5", "neighbours": 10}, "digits": {}}
    config.write_text('methods = ["lsh"]\ndatasets = 3\n')
    with pytest.raises(UserError, match="datasets"):
        load_config(config)


# --------------------------------------------------------------------------------------------
# the CLI end to end


def _records(results):
    return [json.loads(p.read_text()) for p in sorted(results.glob("runs/*/run.json"))]


def test_run_report_status_and_data_check_through_the_cli(invoke, results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vectors, _ = clustered(np.random.default_rng(11), 1200, dimension=32, clusters=12)
    np.savez("emb.npz", train=vectors[:1000], test=vectors[1000:])
    grid = ("--methods", "lsh,itq", "--datasets", "features:emb.npz", "--bits", "16,32", "--results", results)
    result = invoke("run", *grid)
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert len(records) == 4 and {r["dataset"] for r in records} == {"emb"}
    assert {r["protocol"] for r in records} == {"declared"}
    assert {r["data"]["relevance"] for r in records} == {"neighbours"}
    assert {r["metrics"]["num_queries"] for r in records} == {200}
    maps = {(r["method"], r["bits"]): r["metrics"]["map"] for r in records}
    assert all(0.2 < value <= 1 for value in maps.values())
    assert maps["lsh", 32] > maps["lsh", 16]
    # recall@R of the true 100 neighbours: all of them within the whole database
    assert {r["metrics"]["recall_at_k"]["1000"] for r in records} == {1.0}
    assert "done before" in invoke("run", *grid).output
    report = invoke("report", "--results", results, "--out", tmp_path / "report", "--no-plots")
    assert report.exit_code == 0, report.output
    assert "emb" in (tmp_path / "report" / "map.md").read_text()
    status = invoke("status", *grid)
    assert status.exit_code == 0 and status.output.count(" ok ") == 4, status.output
    check = invoke("data", "check", "features:emb.npz")
    assert check.exit_code == 0 and "ready to run" in check.output
    # another file of the same name: other runs, the old ones stale
    np.savez("emb.npz", train=vectors[:1000] * 2, test=vectors[1000:] * 2)
    changed = invoke("run", *grid)
    assert changed.exit_code == 0 and "done before" not in changed.output
    assert len(_records(results)) == 8


def test_image_methods_are_refused_before_anything_runs(invoke, results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save("emb.npy", clustered(np.random.default_rng(12), 300)[0])
    result = invoke("run", "--methods", "lsh", "--datasets", "features:emb.npy", "--results", results)
    assert result.exit_code == 2
    assert "1000 random queries need more than the 300 vectors of the file; set query_size" in result.output
    np.save("emb.npy", clustered(np.random.default_rng(12), 3000)[0])
    result = invoke("run", "--methods", "lsh,cibhash", "--datasets", "features:emb.npy", "--results", results)
    assert result.exit_code == 2
    assert "cibhash trains on images, and dataset emb holds feature vectors only" in result.output
    assert not results.exists()


def test_config_table_and_worker_processes(invoke, results, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pytest.importorskip("h5py")
    vectors, _ = clustered(np.random.default_rng(13), 700, dimension=16)
    write_hdf5(tmp_path / "ann.hdf5", vectors[:600], vectors[600:], k=20)
    # until the entry point is installed, workers learn of the plugin through --plugin
    (tmp_path / "with_features.py").write_text(
        "from hashbench.datasets.features import Features\nfrom hashbench.registry import register_dataset\n"
        "register_dataset(Features)\n"
    )
    (tmp_path / "grid.toml").write_text(
        'methods = ["lsh", "pcah"]\nbits = [8]\nseeds = [0, 1]\nplugins = ["with_features.py"]\n'
        '[datasets.ann]\npath = "ann.hdf5"\nneighbours = 20\ntrain_size = 300\n'
    )
    result = invoke("run", "--config", "grid.toml", "--results", results, "--jobs", "2")
    assert result.exit_code == 0, result.output
    records = _records(results)
    assert len(records) == 4 and {r["dataset"] for r in records} == {"ann"}
    assert {r["split"]["sizes"]["train"] for r in records} == {300}
    assert {r["execution"]["executor"] for r in records} != {"in process"}
    assert "the file's neighbors" in records[0]["data"]["ground_truth"]


def test_reeval_loads_an_embedding_files_dataset_from_the_record(invoke, results, tmp_path, monkeypatch):
    """A fresh process knows no `emb`: reeval registers it from the record's settings, and
    refuses (one line per run) when the file changed since the run or is gone."""
    monkeypatch.chdir(tmp_path)
    vectors, ids = clustered(np.random.default_rng(13), 1500, dimension=16)
    np.savez("emb.npz", features=vectors, labels=ids)
    result = invoke("run", "--methods", "lsh", "--datasets", "features:emb.npz", "--bits", "16", "--results", results)
    assert result.exit_code == 0, result.output
    (record,) = _records(results)
    assert record["data"]["configured"] == {
        "kind": "features", "path": str(tmp_path / "emb.npz"), "neighbours": 100, "topk": 1000, "query_size": 1000,
        "val_size": 1000,
    }  # fmt: skip
    assert not registry.datasets.knows("emb")  # the grid's dataset, never registered
    monkeypatch.chdir(tmp_path.parent)  # the recorded path is absolute
    reeval = invoke("reeval", "--results", results)
    assert reeval.exit_code == 0, reeval.output
    assert "1 unchanged, 0 updated, 0 refused" in reeval.output
    # same size, other labels: another protocol version, so other relevance, refused
    np.savez(tmp_path / "emb.npz", features=vectors, labels=(ids + 1) % 8)
    assert not registry.datasets.knows("emb")  # the grid's dataset, never registered
    reeval = invoke("reeval", "--results", results)
    assert "0 unchanged, 0 updated, 1 refused" in reeval.output
    assert "the data or the protocol changed); rerun the cell" in reeval.output
    (tmp_path / "emb.npz").unlink()
    assert not registry.datasets.knows("emb")  # the grid's dataset, never registered
    reeval = invoke("reeval", "--results", results)
    assert "1 refused" in reeval.output and "emb.npz not found" in reeval.output
    assert _records(results)[0]["metrics"] == record["metrics"]  # nothing rewritten


def test_a_grid_owns_its_configured_datasets_and_the_registry_is_left_as_it_was(tmp_path, invoke):
    """Two grids in one process may give one name to two files: each keeps its own, and
    neither run nor reeval writes a configured dataset into the registry."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        vectors = np.random.default_rng(folder == "b").normal(size=(1_200, 4)).astype(np.float32)
        np.save(tmp_path / folder / "emb.npy", vectors)
    first = registry.resolve_datasets([f"features:{tmp_path / 'a' / 'emb.npy'}"])
    second = registry.resolve_datasets([f"features:{tmp_path / 'b' / 'emb.npy'}"])
    assert first.get("emb").settings.path.endswith("a/emb.npy")  # not replaced by the second grid's
    assert second.get("emb").settings.path.endswith("b/emb.npy")
    assert registry.configuration(first.get("emb"))["path"].endswith("a/emb.npy")
    before = dict(registry.datasets._entries)
    ran = invoke("run", "--methods", "lsh", "--datasets", f"features:{tmp_path / 'a' / 'emb.npy'}", "--bits", "8",
                 "--results", tmp_path / "results", "--quiet")  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert invoke("reeval", "--results", tmp_path / "results").exit_code == 0
    assert registry.datasets._entries == before and not registry.datasets.knows("emb")
