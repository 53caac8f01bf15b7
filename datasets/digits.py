"""scikit-learn's embedded 8×8 handwritten digits: 1,797 images, 10 classes, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashbench.data import DatasetArrays, HashingDataset
from hashbench.data.splits import SampledProtocol


class Digits(HashingDataset):
    name = "digits"
    description = "scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes); no download"
    classes = tuple(str(digit) for digit in range(10))
    multi_label = False
    image_shape = (8, 8, 1)
    protocols = {
        "standard": SampledProtocol(
            name="standard",
            description="the CIFAR-10 protocol scaled down",
            topk=100,
            query_per_class=30,  # 300 queries
            train_per_class=50,  # 500 training images, drawn from the database
            val_per_class=20,  # 200 for model selection, from the database, disjoint from train
        ),
    }
    default_protocol = "standard"
    image_profile = "tiny"

    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> DatasetArrays:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Pixels are 0..16 intensities; images are stored as uint8 0..255 like every dataset,
        # features are the flattened intensities scaled to [0, 1].
        pixels = bunch.images.astype(np.float32) / 16.0
        images = np.round(pixels * 255.0).astype(np.uint8)[..., None]
        labels = np.zeros((pixels.shape[0], len(self.classes)), dtype=bool)
        labels[np.arange(pixels.shape[0]), bunch.target] = True
        return DatasetArrays(labels=labels, images=images, features=pixels.reshape(len(pixels), -1))
