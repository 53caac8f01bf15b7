"""The VGG-16 feature path for real: random weights (``pretrained=False``), a few small images.

A dataset of natural images has no feature vectors; feature-input methods get VGG-16 fc7
features of its manifest's items, computed by the real network with the real preprocessing
and cached on disk. Here nothing is replaced: the features must equal a direct computation
written in the test (resize to 224 with antialiasing, ImageNet normalisation, the trunk in
eval mode), come back from the cache file on a second use, and feed LSH end to end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.data import DatasetArrays, DataSplit
from hashbench.data.splits import SampledProtocol, draw_split
from hashbench.method import RunContext
from hashbench.methods.lsh import LSH
from hashbench.toolkit.backbone_features import attach_backbone_features
from hashbench.toolkit.backbones import build_backbone

COUNT = 3  # VGG-16 at 224 px costs seconds per image on a CPU
PROTOCOL = SampledProtocol(name="tiny", description="one query, the rest database, all of it train",
                           topk=2, query_size=1, train_size=2)  # fmt: skip


def _images() -> np.ndarray:
    """Three 16×16 RGB images: two with a bright half (top, left), one noise."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(COUNT, 16, 16, 3), dtype=np.uint8)
    images[0, :8] += 180
    images[1, :, :8] += 180
    return images


def _arrays(images: np.ndarray) -> DatasetArrays:
    labels = np.eye(2, dtype=bool)[np.arange(COUNT) % 2]
    arrays = DatasetArrays(labels=labels, images=images)
    arrays.dataset = "toy-natural"
    return arrays


def _direct(images: np.ndarray) -> np.ndarray:
    """fc7 of the evaluation-preprocessed images, computed step by step."""
    network = build_backbone("vgg16", pretrained=False).eval()
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    resized = F.interpolate(pixels, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return network((resized - mean) / std).numpy()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_vgg16_features_are_computed_for_real_cached_and_used(tmp_path, device):
    images = _images()
    arrays = _arrays(images)
    manifest = draw_split("toy-natural", PROTOCOL, arrays, 0)
    cache = tmp_path / "cache"
    attach_backbone_features(arrays, manifest, cache, device, pretrained=False, batch_size=2)
    everything = DataSplit("database", np.arange(COUNT), arrays)
    features = everything.features
    assert features.shape == (COUNT, 4096) and features.dtype == np.float32
    assert (features >= 0).all() and (features > 0).any()  # fc7 after its ReLU, not all dead
    direct = _direct(images)
    if device == "cpu":
        np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-5)
    else:  # cuDNN convolutions may round through TF32
        assert np.abs(features - direct).max() <= 1e-2 * np.abs(direct).max()
    # Eval mode: the classifier's dropout is off, so two items never share a random mask and
    # the same image gives the same vector in any batch.
    assert not np.allclose(features[0], features[1])

    (cached,) = (cache / "features").glob("*.npy")
    stamp = cached.stat().st_mtime_ns
    again = _arrays(images)
    attach_backbone_features(again, manifest, cache, device, pretrained=False, batch_size=2)
    assert np.array_equal(DataSplit("database", np.arange(COUNT), again).features, features)
    assert cached.stat().st_mtime_ns == stamp  # read, not recomputed
    with pytest.raises(ValueError, match="outside the split manifest"):
        again.features(np.array([COUNT]))

    train = DataSplit("train", manifest.splits["train"], arrays)
    method = LSH(8, context=RunContext(seed=0))
    method.fit(train)
    codes = method.encode(everything)
    projection = np.random.default_rng([0, 0]).standard_normal((4096, 8))
    centred = features.astype(np.float64) - features[manifest.splits["train"]].astype(np.float64).mean(axis=0)
    assert np.array_equal(codes, centred @ projection >= 0)
