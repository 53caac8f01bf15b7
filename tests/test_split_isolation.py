"""Splits stay where they belong.

* A method run through the runner is fitted on exactly the manifest's ``train`` items and
  validates on exactly its ``val`` items; it never sees a query item before encoding.
* Deep methods select epochs by scoring validation codes against training codes (never
  queries, never the training split against itself).
* A saved manifest that was edited is refused: on load (any list, ``val`` included) and by a
  worker whose grid was planned with the manifest as it was.
* A protocol whose draw leaks train or val into the query set is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import hashbench.metrics
from hashbench import registry
from hashbench.codes import to_bits
from hashbench.data import DatasetArrays, DataSplit, HashingDataset
from hashbench.data.splits import SplitManifest, SplitProtocol, content_hash, draw_split
from hashbench.errors import UserError
from hashbench.method import HashingMethod, RunContext
from hashbench.params import resolve_params
from hashbench.registry import register_dataset, register_method
from hashbench.run.runner import GridSpec, run_grid, run_job

SPLIT_LISTS = ("query", "database", "train", "val")


@register_method
class SplitSpy(HashingMethod):
    """Keeps what the harness hands it: split names, indices and feature rows."""

    name = "split-isolation-spy"
    description = "records the splits it is given"
    seen: ClassVar[dict] = {}

    def fit(self, train, val=None):
        SplitSpy.seen["fit"] = {
            "train": (train.name, train.indices.copy(), train.features.copy()),
            "val": None if val is None else (val.name, val.indices.copy(), val.features.copy()),
        }
        self.projection = self.context.rng().standard_normal((train.features.shape[1], self.bits))

    def encode(self, split):
        SplitSpy.seen.setdefault("encode", []).append((split.name, split.indices.copy(), split.features.copy()))
        return (split.features - 0.5) @ self.projection >= 0


def _digits() -> DatasetArrays:
    return registry.get_dataset("digits")().load(Path("."))


def _manifest_json(results: Path) -> tuple[Path, dict]:
    (path,) = results.glob("splits/*.json")
    return path, json.loads(path.read_text())


def test_the_runner_fits_on_train_validates_on_val_and_never_shows_queries(results):
    SplitSpy.seen.clear()
    (outcome,) = run_grid(GridSpec(methods=[SplitSpy.name], bits=[8], results=results, device="cpu"))
    assert outcome.status == "ok", outcome.error
    _, manifest = _manifest_json(results)
    features = np.asarray(_digits().features, dtype=np.float32)
    lists = {name: np.asarray(manifest[name]) for name in SPLIT_LISTS}
    assert all(lists[name].size for name in SPLIT_LISTS)

    fit = SplitSpy.seen["fit"]
    assert fit["val"] is not None, "the protocol has a validation split; fit must receive it"
    for role in ("train", "val"):
        name, indices, rows = fit[role]
        assert name == role
        assert np.array_equal(np.sort(indices), np.sort(lists[role]))
        # The rows themselves, not only the index labels, are the manifest's items.
        order = np.argsort(indices)
        assert np.array_equal(rows[order], features[np.sort(lists[role])])
        assert not np.intersect1d(indices, lists["query"]).size
    # Encoding then sees the query and database splits, each exactly as listed.
    encoded = {name: (indices, rows) for name, indices, rows in SplitSpy.seen["encode"]}
    for role in ("query", "database"):
        indices, rows = encoded[role]
        assert np.array_equal(np.sort(indices), np.sort(lists[role]))
        assert np.array_equal(rows[np.argsort(indices)], features[np.sort(lists[role])])


def test_the_split_seed_draws_another_split(tmp_path):
    """The same split seed gives the same manifest; another one another draw."""
    lists = {}
    for folder, split_seed in (("a", 0), ("b", 0), ("c", 1)):
        results = tmp_path / folder
        run_grid(GridSpec(methods=["lsh"], bits=[8], split_seed=split_seed, results=results, device="cpu"))
        _, manifest = _manifest_json(results)
        assert manifest["split_seed"] == split_seed
        lists[folder] = {name: manifest[name] for name in SPLIT_LISTS}
    assert lists["a"] == lists["b"]
    assert all(lists["a"][name] != lists["c"][name] for name in SPLIT_LISTS)


# --------------------------------------------------------------------------------------------
# validation inside the deep methods


VALIDATING = {
    "cibhash": {"epochs": 2, "eval_every": 1, "batch_size": 64},
    "clhash": {"epochs": 2, "eval_every": 1, "batch_size": 64},
    "tbh": {"epochs": 2, "eval_every": 1, "batch_size": 32, "hidden": 32, "continuous": 16},
    "bgan": {"epochs": 2, "eval_every": 1, "batch_size": 20},
    "greedyhash": {"epochs": 2, "eval_every": 1, "batch_size": 32},
    "bihalf": {"epochs": 2, "eval_every": 1, "batch_size": 32},
}


BITS = 8
# Training items: CIBHash's codes collapse to one value with small batches of few images.
TRAIN_SIZE = {"cibhash": 300, "clhash": 300}
# Settings under which three short epochs visibly change the codes.
LIVELY = {"tbh": {"lr": 1e-2}, "greedyhash": {"lr": 1e-2}, "bihalf": {"lr": 1e-2}}


def _as_bits(codes, bits: int) -> np.ndarray:
    array = np.asarray(codes.detach().cpu() if hasattr(codes, "detach") else codes)
    if array.dtype == np.uint8 and array.ndim == 2 and array.shape[1] == (bits + 7) // 8 and bits != array.shape[1]:
        return np.unpackbits(array, axis=1, count=bits).astype(bool)
    return to_bits(array, bits)


def _spy_on_map(monkeypatch, scripted=None) -> list[dict]:
    """Record every call of hashbench.metrics.mean_average_precision, wherever it was imported;
    with ``scripted`` scores, return those instead of the real ones."""
    original = hashbench.metrics.mean_average_precision
    calls = []
    scores = None if scripted is None else iter(scripted)

    def spy(query_codes, database_codes, query_labels, database_labels, *args, **kwargs):
        calls.append({
            "query_codes": query_codes, "database_codes": database_codes,
            "query_labels": np.asarray(query_labels), "database_labels": np.asarray(database_labels),
        })  # fmt: skip
        real = original(query_codes, database_codes, query_labels, database_labels, *args, **kwargs)
        return real if scores is None else next(scores)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("hashbench") and getattr(module, "mean_average_precision", None) is original:
            monkeypatch.setattr(module, "mean_average_precision", spy)
    return calls


@pytest.fixture
def map_calls(monkeypatch):
    return _spy_on_map(monkeypatch)


def _fit_with_validation(method_name: str, overrides: dict):
    arrays = _digits()
    # Sizes differ, so that a score of train against train or of val against val shows.
    size = TRAIN_SIZE.get(method_name, 90)
    train = DataSplit("train", np.arange(0, size), arrays)
    val = DataSplit("val", np.arange(size, size + 30), arrays)
    cls = registry.get_method(method_name)
    params = resolve_params(cls.Params, {**VALIDATING[method_name], "cpu_threads": 1, **overrides}, owner=method_name)
    context = RunContext(seed=0, device="cpu")
    method = cls(BITS, params, context)
    method.fit(train, val)
    return method, context.record["validation"], train, val


@pytest.mark.parametrize("method_name", sorted(VALIDATING))
def test_validation_scores_val_codes_against_train_codes(method_name, map_calls):
    method, validation, train, val = _fit_with_validation(method_name, {})
    scores = validation["scores"]
    assert [entry["epoch"] for entry in scores] == [1, 2]
    assert len(map_calls) == len(scores)
    for call in map_calls:
        assert np.array_equal(call["query_labels"], val.labels)
        assert np.array_equal(call["database_labels"], train.labels)
    # The call at the selected epoch scored exactly the final model's codes of val and train.
    selected = [entry["epoch"] for entry in scores].index(validation["selected_epoch"])
    chosen = map_calls[selected]
    assert np.array_equal(_as_bits(chosen["query_codes"], BITS), _as_bits(method.encode(val), BITS))
    assert np.array_equal(_as_bits(chosen["database_codes"], BITS), _as_bits(method.encode(train), BITS))


@pytest.mark.parametrize("method_name", sorted(VALIDATING))
def test_the_epoch_validated_best_is_the_model_kept(method_name, monkeypatch):
    """Scripted scores make the first of three epochs the best: fit must end with that model."""
    calls = _spy_on_map(monkeypatch, scripted=[0.9, 0.1, 0.5])
    method, validation, train, val = _fit_with_validation(method_name, {"epochs": 3, **LIVELY.get(method_name, {})})
    assert [entry["score"] for entry in validation["scores"]] == [0.9, 0.1, 0.5]
    assert validation["selected_epoch"] == 1
    first, last = (_as_bits(calls[index]["query_codes"], BITS) for index in (0, 2))
    assert not np.array_equal(first, last), "training did not change the codes: the test cannot tell epochs apart"
    assert np.array_equal(_as_bits(method.encode(val), BITS), first)
    assert np.array_equal(_as_bits(method.encode(train), BITS), _as_bits(calls[0]["database_codes"], BITS))


# --------------------------------------------------------------------------------------------
# edited manifests


@pytest.fixture
def saved_manifest(tmp_path) -> Path:
    results = tmp_path / "results"
    (outcome,) = run_grid(GridSpec(methods=["lsh"], bits=[8], results=results, device="cpu"))
    assert outcome.status == "ok"
    path, _ = _manifest_json(results)
    return path


def _edit(path: Path, name: str, rehash: bool) -> None:
    """Move one item of list ``name`` elsewhere (an index not in it), optionally re-hashing."""
    value = json.loads(path.read_text())
    items = value[name]
    outside = sorted(set(range(value["num_items"])) - set(items))
    items[0] = outside[0]
    value[name] = sorted(items)
    if rehash:
        splits = {key: np.asarray(value[key]) for key in SPLIT_LISTS if key in value}
        value["hash"] = content_hash(splits)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("name", SPLIT_LISTS)
def test_an_edited_manifest_list_is_refused_on_load(saved_manifest, name):
    SplitManifest.load(saved_manifest)  # intact: loads
    _edit(saved_manifest, name, rehash=False)
    with pytest.raises(UserError, match="does not match its content hash"):
        SplitManifest.load(saved_manifest)


def test_an_edited_hash_is_refused_on_load(saved_manifest):
    value = json.loads(saved_manifest.read_text())
    value["hash"] = "0" * 64
    saved_manifest.write_text(json.dumps(value))
    with pytest.raises(UserError, match="does not match its content hash"):
        SplitManifest.load(saved_manifest)


class _Capture:
    """An executor that keeps the jobs it is handed instead of running them."""

    remote = False

    def __init__(self) -> None:
        self.jobs = []

    def describe(self) -> dict:
        return {"executor": "capture"}

    def run(self, jobs, on_submit, on_result) -> None:
        self.jobs.extend(jobs)


def test_a_worker_refuses_a_manifest_changed_after_planning(tmp_path):
    results = tmp_path / "results"
    executor = _Capture()
    # A data root of its own, so that no dataset a worker loaded earlier in this process is reused.
    spec = GridSpec(methods=["lsh"], bits=[8], results=results, data_root=tmp_path / "data", device="cpu")
    run_grid(spec, executor=executor)
    (job,) = executor.jobs
    manifest = Path(job.manifest)
    original = manifest.read_text()
    # A consistent edit (its own hash matches): only the job's planned hash can tell.
    _edit(manifest, "train", rehash=True)
    SplitManifest.load(manifest)
    result = run_job(job)
    assert result.status == "failed"
    assert "changed since the grid was planned" in (result.error or "")
    (record_path,) = results.glob("runs/*/run.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed" and "changed since the grid was planned" in record["error"]
    assert not list(results.glob("runs/*/codes.npz"))
    # The manifest as planned runs.
    manifest.write_text(original)
    assert run_job(job).status == "ok"


# --------------------------------------------------------------------------------------------
# protocols that leak


class Leaky(SplitProtocol):
    """Draws a valid split, then moves one item across a boundary (or not, with leak=None)."""

    def __init__(self, leak: str | None) -> None:
        self.name = f"leaky-{leak}"
        self.description = "a split with a deliberate leak"
        self.topk = 10
        self.leak = leak

    def draw(self, arrays, rng):
        order = rng.permutation(len(arrays))
        query, database = order[:20], order[20:]
        train, val = database[:40], database[40:60]
        if self.leak == "train-into-query":
            train = np.concatenate([train, query[:1]])
        elif self.leak == "val-into-query":
            val = np.concatenate([val, query[:1]])
        elif self.leak == "val-into-train":
            val = np.concatenate([val, train[:1]])
        elif self.leak == "query-into-database":
            database = np.concatenate([database, query[:1]])
        return {"query": query, "database": database, "train": train, "val": val}


def _toy_arrays(count: int = 100) -> DatasetArrays:
    rng = np.random.default_rng(0)
    labels = np.eye(4, dtype=bool)[np.arange(count) % 4]
    return DatasetArrays(labels=labels, features=rng.random((count, 6)).astype(np.float32))


LEAKS = ["train-into-query", "val-into-query", "val-into-train", "query-into-database"]


def test_a_clean_draw_passes():
    manifest = draw_split("toy", Leaky(None), _toy_arrays(), 0)
    assert {name: manifest.splits[name].size for name in SPLIT_LISTS} == {"query": 20, "database": 80, "train": 40, "val": 20}


@pytest.mark.parametrize("leak", LEAKS)
def test_a_leaking_draw_is_refused(leak):
    with pytest.raises((ValueError, UserError)):
        draw_split("toy", Leaky(leak), _toy_arrays(), 0)


@register_dataset
class LeakyToy(HashingDataset):
    name = "split-isolation-leaky-toy"
    description = "a dataset whose only protocol leaks training items into the queries"
    classes = ("a", "b", "c", "d")
    protocols = {"standard": Leaky("train-into-query")}

    def load(self, root, **options):
        return _toy_arrays()


def test_the_runner_refuses_a_leaking_protocol_before_writing_anything(results):
    with pytest.raises((ValueError, UserError), match="leak|overlap"):
        run_grid(GridSpec(methods=["lsh"], datasets=[LeakyToy.name], bits=[4], results=results, device="cpu"))
    assert not results.exists()
