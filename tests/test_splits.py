"""Split protocols and manifests: determinism, disjointness, per-class counts, hashing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashbench.data import DatasetArrays
from hashbench.data.splits import SampledProtocol, SplitManifest, draw_split, sample_per_class
from hashbench.datasets.digits import Digits
from hashbench.errors import UserError


@pytest.fixture(scope="module")
def digits():
    arrays = Digits().load(None)
    return arrays


def test_digits_standard_protocol_sizes_and_invariants(digits):
    manifest = draw_split("digits", Digits.protocols["standard"], digits, split_seed=0)
    splits = manifest.splits
    assert len(digits) == 1797
    assert splits["query"].size == 300 and splits["train"].size == 500 and splits["val"].size == 200
    assert splits["database"].size == 1797 - 300
    assert np.intersect1d(splits["query"], splits["database"]).size == 0
    assert np.union1d(splits["query"], splits["database"]).size == 1797
    assert np.isin(splits["train"], splits["database"]).all()
    assert np.isin(splits["val"], splits["database"]).all()
    assert np.intersect1d(splits["val"], splits["train"]).size == 0
    for name, per_class in (("query", 30), ("train", 50), ("val", 20)):
        counts = digits.labels[splits[name]].sum(axis=0)
        assert (counts == per_class).all(), name
    for indices in splits.values():
        assert (np.diff(indices) > 0).all()  # sorted, unique: canonical database order


def test_same_seed_same_manifest_other_seed_other_manifest(digits):
    protocol = Digits.protocols["standard"]
    first = draw_split("digits", protocol, digits, split_seed=3)
    again = draw_split("digits", protocol, digits, split_seed=3)
    other = draw_split("digits", protocol, digits, split_seed=4)
    assert first.hash == again.hash
    assert all(np.array_equal(first.splits[k], again.splits[k]) for k in first.splits)
    assert first.hash != other.hash


def test_manifest_round_trip_and_tamper_detection(tmp_path, digits):
    manifest = draw_split("digits", Digits.protocols["standard"], digits, split_seed=0)
    path = manifest.save(tmp_path)
    assert path.name.startswith("digits-standard-split0-") and manifest.hash[:12] in path.name
    loaded = SplitManifest.load(path)
    assert loaded.hash == manifest.hash and loaded.topk == 100
    value = json.loads(path.read_text())
    value["query"][0], value["database"][0] = value["database"][0], value["query"][0]
    path.write_text(json.dumps(value))
    with pytest.raises(UserError, match="does not match its content hash"):
        SplitManifest.load(path)


def test_multilabel_per_class_sampling_draws_each_concept_from_undrawn_items():
    rng = np.random.default_rng(0)
    labels = rng.random((400, 5)) < 0.4
    labels[labels.sum(axis=1) == 0, 0] = True
    drawn = sample_per_class(labels, np.arange(400), 10, np.random.default_rng(1), "query")
    assert drawn.size == 50 and np.unique(drawn).size == 50
    # Replay the rule: class c is drawn among items carrying c not drawn for classes < c.
    replay_rng = np.random.default_rng(1)
    available = np.ones(400, dtype=bool)
    expected = []
    for c in range(5):
        picked = replay_rng.choice(np.flatnonzero(available & labels[:, c]), size=10, replace=False)
        available[picked] = False
        expected.append(picked)
    assert np.array_equal(drawn, np.sort(np.concatenate(expected)))


def test_protocol_too_large_for_the_data_is_a_clear_error():
    labels = np.eye(3, dtype=bool)[np.arange(30) % 3]
    protocol = SampledProtocol(name="big", description="", topk=5, query_per_class=11, train_size=5)
    with pytest.raises(UserError, match="class 0 has only 10 eligible items, the protocol needs 11"):
        draw_split("toy", protocol, DatasetArrays(labels=labels), split_seed=0)
