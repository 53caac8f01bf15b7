"""CIFAR-10, MNIST and Fashion-MNIST loaders on tiny files in the real formats."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from dataset_fixtures import write_cifar10, write_idx, write_mnist

from hashbench.data import load_dataset
from hashbench.data.splits import SampledProtocol, draw_split
from hashbench.datasets.cifar10 import CIFAR10, CIBHashCodeProtocol, TBHCodeProtocol
from hashbench.datasets.mnist import MNIST, FashionMNIST, read_idx
from hashbench.errors import UserError


def test_cifar10_reads_torchvision_layout_exactly(tmp_path):
    written = write_cifar10(tmp_path, train_per_class=6, test_per_class=4)
    arrays = CIFAR10().load(tmp_path)
    assert arrays.images.dtype == np.uint8 and arrays.images.shape == (100, 32, 32, 3)
    assert np.array_equal(arrays.images, written["images"])  # channel-planar rows decoded right
    assert arrays.labels.dtype == bool and arrays.labels.shape == (100, 10)
    assert np.array_equal(arrays.labels.argmax(axis=1), written["class_ids"])
    assert (arrays.labels.sum(axis=1) == 1).all()
    assert np.array_equal(arrays.groups["train"], np.arange(60))
    assert np.array_equal(arrays.groups["test"], np.arange(60, 100))
    assert arrays.features is None  # feature-input methods get backbone features from the runner


def test_cifar10_matches_torchvision_reader(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    write_cifar10(tmp_path)
    ours = CIFAR10().load(tmp_path)

    class Unchecked(torchvision.datasets.CIFAR10):
        def _check_integrity(self):  # our tiny batches have other checksums
            return True

        def _load_meta(self):
            self.classes = []

    train, test = Unchecked(str(tmp_path), train=True), Unchecked(str(tmp_path), train=False)
    assert np.array_equal(ours.images, np.concatenate([train.data, test.data]))
    assert np.array_equal(ours.labels.argmax(axis=1), np.array(train.targets + test.targets))


def test_cifar10_scaled_down_protocols_on_real_files(tmp_path):
    write_cifar10(tmp_path, train_per_class=6, test_per_class=4)
    arrays = CIFAR10().load(tmp_path)
    cibhash = draw_split("cifar10", CIBHashCodeProtocol(train_per_class=3), arrays, split_seed=0).splits
    assert cibhash["query"].size == 20 and cibhash["val"].size == 20
    assert np.array_equal(cibhash["database"], arrays.groups["train"])
    assert (arrays.labels[cibhash["train"]].sum(axis=0) == 3).all()
    tbh = draw_split("cifar10", TBHCodeProtocol(), arrays, split_seed=0).splits
    assert np.array_equal(tbh["query"], arrays.groups["test"])
    small = SampledProtocol(name="standard", description="", topk=10, query_per_class=2, train_per_class=3)
    standard = draw_split("cifar10", small, arrays, split_seed=0).splits
    assert standard["query"].size == 20 and standard["database"].size == 80 and standard["train"].size == 30


def test_cifar10_missing_or_broken_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="hashbench data get cifar10"):
        CIFAR10().load(tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 not found"):
        CIFAR10().load(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        CIFAR10().load(tmp_path)


def test_load_dataset_passes_options_only_to_plugins_that_take_them(tmp_path):
    write_cifar10(tmp_path)
    arrays = load_dataset(CIFAR10(), tmp_path, cache_dir=tmp_path / "cache", drop_bad_rows=True)
    assert len(arrays) == 100
    from hashbench.datasets.digits import Digits

    assert len(load_dataset(Digits(), tmp_path, cache_dir=tmp_path / "cache", drop_bad_rows=True)) == 1797


@pytest.mark.parametrize(
    ("dataset", "folder", "compress"),
    [
        (MNIST, "MNIST/raw", True),  # torchvision's layout, gzip
        (MNIST, "mnist", True),  # the raw *-ubyte.gz files in a plain folder
        (MNIST, "MNIST/raw", False),  # torchvision's extracted files
        (FashionMNIST, "FashionMNIST/raw", False),
        (FashionMNIST, "fashion-mnist", True),
    ],
)
def test_mnist_like_idx_layouts(tmp_path, dataset, folder, compress):
    written = write_mnist(tmp_path, folder=folder, compress=compress)
    arrays = dataset().load(tmp_path)
    assert arrays.images.shape == (100, 28, 28, 1) and arrays.images.dtype == np.uint8
    assert np.array_equal(arrays.images[..., 0], written["images"])
    assert np.array_equal(arrays.labels.argmax(axis=1), written["class_ids"])
    assert np.array_equal(arrays.groups["test"], np.arange(60, 100))
    # Pixels in [0, 1] are the features of shallow baselines.
    assert arrays.features.shape == (100, 784) and arrays.features.dtype == np.float32
    assert np.allclose(arrays.features[7], written["images"][7].reshape(-1) / 255.0)


def test_idx_reader_matches_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    written = write_mnist(tmp_path, compress=False)
    folder = tmp_path / "MNIST" / "raw"
    assert np.array_equal(read_idx(folder / "train-images-idx3-ubyte"), read_image_file(str(folder / "train-images-idx3-ubyte")).numpy())
    assert np.array_equal(read_idx(folder / "t10k-labels-idx1-ubyte"), read_label_file(str(folder / "t10k-labels-idx1-ubyte")).numpy())
    assert written["images"].shape[0] == 100


def test_idx_faults_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        write_mnist(tmp_path, folder="mnist")
        (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
        MNIST().load(tmp_path)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(bad)
    short = write_idx(tmp_path / "short-idx3-ubyte", np.zeros((3, 4, 4)), compress=True)
    data = gzip.decompress(short.read_bytes())
    short.write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(UserError, match="header says shape"):
        read_idx(short)
    write_mnist(tmp_path / "mismatch", folder="mnist")
    write_idx(tmp_path / "mismatch" / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(UserError, match="expected"):
        MNIST().load(tmp_path / "mismatch")
