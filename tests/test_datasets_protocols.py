"""The real datasets' split protocols, with their real sizes, on synthetic label matrices.

No image is needed to draw a split: these tests give each protocol object a label matrix of
the dataset's real size (or just big enough) and check the numbers of docs/PROTOCOLS.md.
"""

from __future__ import annotations

import numpy as np
import pytest

from hashbench.data import DatasetArrays
from hashbench.data.labels import to_multi_hot
from hashbench.data.splits import draw_split
from hashbench.datasets.cifar10 import CIFAR10
from hashbench.datasets.coco import COCO
from hashbench.datasets.mnist import MNIST, FashionMNIST
from hashbench.datasets.nuswide import NUSWide
from hashbench.errors import UserError


def single_label_arrays(train_per_class: int, test_per_class: int, seed: int = 0) -> DatasetArrays:
    rng = np.random.default_rng(seed)
    train = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test = rng.permutation(np.repeat(np.arange(10), test_per_class))
    labels = to_multi_hot(np.concatenate([train, test]), 10)
    groups = {"train": np.arange(train.size), "test": np.arange(train.size, labels.shape[0])}
    return DatasetArrays(labels=labels, groups=groups)


@pytest.fixture(scope="module")
def cifar_arrays() -> DatasetArrays:
    return single_label_arrays(5000, 1000)  # CIFAR-10's real partition: 50,000 + 10,000


def per_class(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return labels[indices].sum(axis=0)


def test_cifar_standard_has_the_published_sizes(cifar_arrays):
    manifest = draw_split("cifar10", CIFAR10.protocols["standard"], cifar_arrays, split_seed=0)
    splits = manifest.splits
    assert {name: indices.size for name, indices in splits.items()} == {"query": 1000, "database": 59000, "train": 5000}
    assert manifest.topk == 1000
    assert (per_class(cifar_arrays.labels, splits["query"]) == 100).all()
    assert (per_class(cifar_arrays.labels, splits["train"]) == 500).all()
    # Queries come from all 60,000 (training and test images alike); the database is the rest.
    assert np.isin(splits["query"], cifar_arrays.groups["train"]).any() and np.isin(splits["query"], cifar_arrays.groups["test"]).any()
    assert np.array_equal(np.union1d(splits["query"], splits["database"]), np.arange(60000))
    assert np.intersect1d(splits["query"], splits["database"]).size == 0
    assert np.isin(splits["train"], splits["database"]).all()


def test_same_seed_same_manifest_other_seed_other_manifest(cifar_arrays):
    protocol = CIFAR10.protocols["standard"]
    first = draw_split("cifar10", protocol, cifar_arrays, split_seed=3)
    again = draw_split("cifar10", protocol, cifar_arrays, split_seed=3)
    other = draw_split("cifar10", protocol, cifar_arrays, split_seed=4)
    assert first.hash == again.hash
    assert all(np.array_equal(first.splits[name], again.splits[name]) for name in first.splits)
    assert first.hash != other.hash
    assert not np.array_equal(first.splits["query"], other.splits["query"])


def test_cifar_standard_val_adds_a_disjoint_val_without_changing_query_or_train(cifar_arrays):
    plain = draw_split("cifar10", CIFAR10.protocols["standard"], cifar_arrays, split_seed=1)
    with_val = draw_split("cifar10", CIFAR10.protocols["standard-val"], cifar_arrays, split_seed=1)
    for name in ("query", "database", "train"):
        assert np.array_equal(plain.splits[name], with_val.splits[name])
    val = with_val.splits["val"]
    assert val.size == 1000 and (per_class(cifar_arrays.labels, val) == 100).all()
    assert np.isin(val, with_val.splits["database"]).all()
    assert np.intersect1d(val, with_val.splits["train"]).size == 0


def test_cifar_cibhash_code_protocol_follows_the_released_code(cifar_arrays):
    manifest = draw_split("cifar10", CIFAR10.protocols["cibhash-code"], cifar_arrays, split_seed=0)
    splits = manifest.splits
    train_group, test_group = cifar_arrays.groups["train"], cifar_arrays.groups["test"]
    assert {name: indices.size for name, indices in splits.items()} == {"query": 5000, "val": 5000, "train": 5000, "database": 50000}
    # Test images: shuffled, first half val, second half query; together all 10,000.
    assert np.array_equal(np.union1d(splits["query"], splits["val"]), test_group)
    assert np.intersect1d(splits["query"], splits["val"]).size == 0
    # Database: all training images, training set included; train: 500 per class of them.
    assert np.array_equal(splits["database"], train_group)
    assert np.isin(splits["train"], train_group).all()
    assert (per_class(cifar_arrays.labels, splits["train"]) == 500).all()
    assert manifest.topk == 1000
    # The shuffle depends on the split seed.
    other = draw_split("cifar10", CIFAR10.protocols["cibhash-code"], cifar_arrays, split_seed=1)
    assert not np.array_equal(other.splits["query"], splits["query"])


def test_cifar_tbh_code_protocol(cifar_arrays):
    splits = draw_split("cifar10", CIFAR10.protocols["tbh-code"], cifar_arrays, split_seed=0).splits
    assert np.array_equal(splits["query"], cifar_arrays.groups["test"])
    assert np.array_equal(splits["database"], cifar_arrays.groups["train"])
    assert np.array_equal(splits["train"], cifar_arrays.groups["train"])


@pytest.mark.parametrize("dataset", [MNIST, FashionMNIST])
def test_mnist_like_standard_protocol(dataset):
    arrays = single_label_arrays(6000, 1000)  # the real 60,000 + 10,000
    manifest = draw_split(dataset.name, dataset.protocols["standard"], arrays, split_seed=0)
    splits = manifest.splits
    assert {name: indices.size for name, indices in splits.items()} == {"query": 1000, "database": 69000, "train": 5000}
    assert (per_class(arrays.labels, splits["query"]) == 100).all()
    assert (per_class(arrays.labels, splits["train"]) == 500).all()
    assert np.isin(splits["train"], splits["database"]).all()
    assert manifest.topk == 1000


def random_multi_hot(count: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.random((count, classes)) < 2.0 / classes
    labels[np.arange(count), rng.integers(0, classes, count)] = True  # every row labelled
    return labels


def test_nuswide_standard_per_concept_sampling():
    labels = random_multi_hot(24000, 21, seed=0)
    arrays = DatasetArrays(labels=labels)
    manifest = draw_split("nuswide", NUSWide.protocols["standard"], arrays, split_seed=0)
    splits = manifest.splits
    assert {name: indices.size for name, indices in splits.items()} == {"query": 2100, "database": 21900, "train": 10500}
    assert manifest.topk == 5000
    # 100 drawn per concept, without replacement across concepts: each concept is carried by
    # at least 100 queries (more, through the other concepts' draws).
    assert (per_class(labels, splits["query"]) >= 100).all()
    assert (per_class(labels, splits["train"]) >= 500).all()
    assert np.isin(splits["train"], splits["database"]).all()
    assert np.array_equal(np.union1d(splits["query"], splits["database"]), np.arange(labels.shape[0]))


def test_nuswide_standard_refuses_too_few_images_of_a_concept():
    labels = random_multi_hot(24000, 21, seed=0)
    labels[:, 5] = False
    labels[:50, 5] = True
    with pytest.raises(UserError, match="class 5 has only 50 eligible items"):
        draw_split("nuswide", NUSWide.protocols["standard"], DatasetArrays(labels=labels), split_seed=0)


def test_coco_standard_random_sizes():
    labels = random_multi_hot(16000, 80, seed=1)
    manifest = draw_split("coco", COCO.protocols["standard"], DatasetArrays(labels=labels), split_seed=0)
    splits = manifest.splits
    assert {name: indices.size for name, indices in splits.items()} == {"query": 5000, "database": 11000, "train": 10000}
    assert np.isin(splits["train"], splits["database"]).all()
    assert manifest.topk == 5000
    with_val = draw_split("coco", COCO.protocols["standard-val"], DatasetArrays(labels=random_multi_hot(21000, 80, 2)), 0)
    assert with_val.splits["val"].size == 5000
    assert np.intersect1d(with_val.splits["val"], with_val.splits["train"]).size == 0


@pytest.mark.parametrize("dataset", [NUSWide, COCO])
def test_lists_protocol_returns_the_files_split_for_every_seed(dataset):
    labels = random_multi_hot(12, len(dataset.classes), seed=0)
    groups = {"list_database": np.arange(0, 9), "list_query": np.arange(9, 12), "list_train": np.array([1, 4, 6])}
    arrays = DatasetArrays(labels=labels, groups=groups)
    first = draw_split(dataset.name, dataset.protocols["lists"], arrays, split_seed=0)
    second = draw_split(dataset.name, dataset.protocols["lists"], arrays, split_seed=7)
    assert first.hash == second.hash
    assert np.array_equal(first.splits["query"], np.arange(9, 12))
    assert np.array_equal(first.splits["train"], [1, 4, 6])
    assert first.topk == 5000
    with pytest.raises(UserError, match="needs the list files"):
        draw_split(dataset.name, dataset.protocols["lists"], DatasetArrays(labels=labels), split_seed=0)


def released_bihalf_cifar_split(class_ids: np.ndarray, train_stop: int) -> dict[str, np.ndarray]:
    """Transcription of the split loop of Bi-half's ImageHashing/Cifar10_I.py (train_stop 6000)
    and Cifar10_II.py (train_stop 1500), keeping indices instead of the images they select."""
    test, database, train = [], [], []
    for label in range(10):
        index = np.where(class_ids == label)[0]
        N = index.shape[0]
        np.random.seed(0)
        perm = np.random.permutation(N)
        index = index[perm]
        test.append(index[0:1000])
        database.append(index[1000:6000])
        train.append(index[1000:train_stop])
    return {"query": np.concatenate(test), "database": np.concatenate(database), "train": np.concatenate(train)}


@pytest.mark.parametrize(("protocol", "train_stop", "sizes"), [
    ("bihalf-code-i", 6000, {"query": 10000, "database": 50000, "train": 50000}),
    ("bihalf-code-ii", 1500, {"query": 10000, "database": 50000, "train": 5000}),
])  # fmt: skip
def test_cifar_bihalf_code_protocols_draw_the_released_split(cifar_arrays, protocol, train_stop, sizes):
    class_ids = cifar_arrays.labels.argmax(axis=1)
    state = np.random.get_state()
    manifest = draw_split("cifar10", CIFAR10.protocols[protocol], cifar_arrays, split_seed=0)
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global generator untouched
    released = released_bihalf_cifar_split(class_ids, train_stop)
    for name, indices in released.items():
        assert np.array_equal(manifest.splits[name], np.sort(indices)), name
    assert {name: indices.size for name, indices in manifest.splits.items()} == sizes
    assert manifest.topk == (1000 if protocol == "bihalf-code-i" else 50000)
    # another split seed is another draw
    other = draw_split("cifar10", CIFAR10.protocols[protocol], cifar_arrays, split_seed=1)
    assert not np.array_equal(other.splits["query"], manifest.splits["query"])


def test_cifar_bihalf_code_refuses_what_the_released_draw_cannot_do(cifar_arrays):
    with pytest.raises(UserError, match="below 2\\*\\*32.*split seed 0"):
        draw_split("cifar10", CIFAR10.protocols["bihalf-code-i"], cifar_arrays, split_seed=2**32)
    small = single_label_arrays(500, 100)
    with pytest.raises(UserError, match="class 0 has 600 items.*needs 6000"):
        draw_split("cifar10", CIFAR10.protocols["bihalf-code-i"], small, split_seed=0)
