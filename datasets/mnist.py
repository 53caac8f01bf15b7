"""MNIST and Fashion-MNIST: 70,000 28×28 grey images in 10 classes each, from IDX files.

Files (``.gz`` or uncompressed): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, looked up in torchvision's layout
``<data root>/MNIST/raw/`` (``FashionMNIST/raw/``) and then in a plain folder
``<data root>/mnist/`` (``fashion-mnist/``). Canonical order: the 60,000 training images then
the 10,000 test images. Features are the pixels scaled to [0, 1] (784-d), the usual input of
shallow hashing baselines on these datasets.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import ClassVar

import numpy as np

from hashbench.data import DatasetArrays
from hashbench.data.splits import SampledProtocol, with_validation
from hashbench.errors import UserError

from ._official import OfficialSplitDataset

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one these files use


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) of unsigned bytes."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read IDX file {path} ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise UserError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) != header + int(np.prod(shape)):
        raise UserError(f"{path}: the header says shape {shape} but the file holds {len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class IDXDataset(OfficialSplitDataset):
    """A dataset stored as the four IDX files of MNIST."""

    folders: ClassVar[tuple[str, ...]]  # candidate folders under the data root, in order
    protocols = {
        **with_validation(
            SampledProtocol(
                name="standard",
                description="1,000 queries (100 per class) from all 70,000, database = the other 69,000, 5,000 training images (500 per class) from the database",
                topk=1000,
                query_per_class=100,
                train_per_class=500,
            ),
            "1,000 validation images (100 per class) from the database, disjoint from train",
            val_per_class=100,
        ),
    }
    default_protocol = "standard"
    image_profile = "tiny"
    official_sizes = {"train": 60000, "test": 10000}

    def _find(self, root: Path, file_name: str) -> Path | None:
        for folder in self.folders:
            for candidate in (Path(root) / folder / file_name, Path(root) / folder / f"{file_name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> DatasetArrays:
        found = {key: self._find(root, name) for key, name in FILES.items()}
        missing = [FILES[key] for key, path in found.items() if path is None]
        if missing:
            raise UserError(f"{self.name}: {', '.join(missing)} (or .gz) not found under {root}; {self.layout_help}")
        arrays = {key: read_idx(path) for key, path in found.items()}
        for part in ("train", "test"):
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise UserError(
                    f"{self.name}: {found[f'{part}_images']} holds {images.shape} and {found[f'{part}_labels']} "
                    f"holds {labels.shape}; expected (n, rows, cols) images and n labels"
                )
        images = np.concatenate([arrays["train_images"], arrays["test_images"]])[..., None]
        class_ids = np.concatenate([arrays["train_labels"], arrays["test_labels"]])
        features = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
        folder = found["train_images"].parent
        return self._arrays(
            images, class_ids, arrays["train_labels"].size, str(folder), features=features, provenance={"folder": str(folder)}
        )


class MNIST(IDXDataset):
    name = "mnist"
    description = "MNIST: 70,000 28x28 handwritten digits, 10 classes (IDX files)"
    classes = tuple(str(digit) for digit in range(10))
    folders = ("MNIST/raw", "mnist")
    torchvision_class = "MNIST"
    manual_help = (
        "put the four *-ubyte.gz files of http://yann.lecun.com/exdb/mnist/ "
        "in <data root>/mnist/ (or torchvision's <data root>/MNIST/raw/)"
    )
    layout_help = f"run `hashbench data get mnist`, or {manual_help}"


class FashionMNIST(IDXDataset):
    name = "fashion-mnist"
    description = "Fashion-MNIST: 70,000 28x28 grey images of clothing, 10 classes (IDX files)"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    folders = ("FashionMNIST/raw", "fashion-mnist")
    torchvision_class = "FashionMNIST"
    manual_help = (
        "put the four *-ubyte.gz files of Fashion-MNIST's release "
        "in <data root>/fashion-mnist/ (or torchvision's <data root>/FashionMNIST/raw/)"
    )
    layout_help = f"run `hashbench data get fashion-mnist`, or {manual_help}"
