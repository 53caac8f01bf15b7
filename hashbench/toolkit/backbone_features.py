"""Frozen-backbone features of un-augmented images, computed once and cached on disk.

Datasets of natural images (CIFAR-10, NUS-WIDE, MS-COCO) ship no feature vectors; methods
that take features (LSH, ITQ, TBH, ...) get VGG-16 fc7 features of the evaluation-preprocessed
images (resize to 224, ImageNet normalisation), as in the papers. GreedyHash and Bi-half ask
for another layer (:meth:`BackboneFeatures.at_layer`): fc6 after its ReLU, before the first
Dropout, since their released code runs the rest of VGG-16's classifier in train mode. They
are computed batch by batch on the run's device for every item of a split manifest, and
stored as one float32 ``.npy`` keyed by (dataset, manifest hash, backbone, layer, weights,
preprocessing); see
:mod:`hashbench.data.cache` for the atomic write and the checks that make a stale or truncated
entry be rebuilt. The dataset then exposes them as a function from an index array to a
float32 matrix, so nothing is computed until a feature-input method asks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hashbench.data.cache import CacheEntry
from hashbench.data.images import ImageStore, available_cpus, loader_options

FEATURE_BACKBONE = "vgg16"
FEATURE_LAYER = "fc7"
# Bump when the feature computation changes (preprocessing, layer): old caches become stale.
FEATURES_VERSION = 1

# (network, preprocess) where preprocess maps uint8 (n, H, W, C) and a device to the input.
NetworkFactory = Callable[[], tuple[Any, Callable[[Any, Any], Any]]]


def _default_factory(backbone: str, weights: str | None, pretrained: bool, image_shape) -> NetworkFactory:
    def build():
        from hashbench.toolkit.backbones import build_backbone, preprocess_for

        return build_backbone(backbone, weights=weights, pretrained=pretrained), preprocess_for(backbone, image_shape)

    return build


def _cut(factory: NetworkFactory, layer: str) -> NetworkFactory:
    """``factory``'s network cut at ``layer`` (a VGG-16 trunk's ``cut``)."""

    def build():
        network, prepare = factory()
        return network.cut(layer), prepare

    return build


class _Batches:
    """torch Dataset whose item b is the b-th batch of images (one fancy-indexing read each)."""

    def __init__(self, images: Any, indices: np.ndarray, batch_size: int) -> None:
        self.images = images
        self.indices = indices
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.indices.size // self.batch_size)

    def __getitem__(self, batch: int):
        import torch

        chosen = self.indices[batch * self.batch_size : (batch + 1) * self.batch_size]
        return torch.from_numpy(np.ascontiguousarray(self.images[chosen], dtype=np.uint8))


class BackboneFeatures:
    """Features of the items ``covered`` (sorted dataset indices), as ``features(indices)``.

    ``layer`` is where the backbone is cut (``fc7``, or ``fc6`` for VGG-16); ``weights`` and
    ``pretrained`` say which weights (as for :func:`hashbench.toolkit.backbones.build_backbone`).
    """

    returns_copies = True  # each call gathers new rows (see hashbench.data.DataSplit.features)

    def __init__(
        self,
        images: Any,
        covered: np.ndarray,
        *,
        dataset: str,
        manifest_hash: str,
        cache_dir: Path,
        device: str = "cpu",
        backbone: str = FEATURE_BACKBONE,
        weights: str | None = None,
        pretrained: bool = True,
        batch_size: int = 64,
        workers: int | None = None,
        factory: NetworkFactory | None = None,
        weights_key: str | None = None,
        layer: str = FEATURE_LAYER,
    ) -> None:
        self.images = images
        self.covered = np.unique(np.asarray(covered, dtype=np.int64))
        self.covered.flags.writeable = False  # methods see this object as split.feature_source
        self.dataset = dataset
        self.manifest_hash = manifest_hash
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.backbone = backbone
        self.layer = layer
        self.weights = weights
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.workers = workers
        image_shape = getattr(images, "shape", (None,))[1:]
        build = factory or _default_factory(backbone, weights, pretrained, image_shape)
        self.factory = build if layer == FEATURE_LAYER else _cut(build, layer)
        if weights_key is None:
            from hashbench.toolkit.backbones import weights_id

            weights_key = weights_id(backbone, weights=weights, pretrained=pretrained)
        self.weights_key = weights_key
        self._array: np.ndarray | None = None

    def key(self) -> dict[str, Any]:
        return {
            "kind": "backbone-features",
            "version": FEATURES_VERSION,
            "dataset": self.dataset,
            "manifest": self.manifest_hash,
            "backbone": self.backbone,
            "layer": self.layer,
            "weights": self.weights_key,
            "count": int(self.covered.size),
        }

    def entry(self) -> CacheEntry:
        # The default layer's file keeps its name; another layer's names it.
        layer = "" if self.layer == FEATURE_LAYER else f"{self.layer}-"
        name = f"{self.dataset}-{self.manifest_hash[:16]}-{self.backbone}-{layer}{self.weights_key}.npy"
        return CacheEntry(self.cache_dir / "features" / name, self.key())

    def at_layer(self, layer: str) -> BackboneFeatures:
        """The same items, backbone and weights cut at ``layer`` (cached separately)."""
        if layer == self.layer:
            return self
        return BackboneFeatures(
            self.images,
            self.covered,
            dataset=self.dataset,
            manifest_hash=self.manifest_hash,
            cache_dir=self.cache_dir,
            device=self.device,
            backbone=self.backbone,
            weights=self.weights,
            pretrained=self.pretrained,
            batch_size=self.batch_size,
            workers=self.workers,
            weights_key=self.weights_key,
            layer=layer,
        )

    def fc7_layer(self) -> Any:
        """VGG-16's fc7 (a frozen ``nn.Linear``) with these features' weights, to run on fc6 ones."""
        from hashbench.toolkit.backbones import vgg16_fc7_layer

        return vgg16_fc7_layer(weights=self.weights, pretrained=self.pretrained)

    @property
    def dimension(self) -> int:
        return int(self.array().shape[1])

    def array(self) -> np.ndarray:
        """All cached features ``(len(covered), d)``, computed on first use."""
        if self._array is None:
            entry = self.entry()
            self._array = entry.open()
            if self._array is None:
                self._array = self._build(entry)
        return self._array

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        positions = np.searchsorted(self.covered, indices)
        inside = positions < self.covered.size
        if not inside.all() or not np.array_equal(self.covered[positions], indices):
            raise ValueError("features were requested for items outside the split manifest they were computed for")
        return np.asarray(self.array()[positions], dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def _build(self, entry: CacheEntry) -> np.ndarray:
        import torch

        network, prepare = self.factory()
        network = network.to(self.device).eval()
        dimension = int(network.feature_dim)
        # Decoding JPEGs wants worker processes; gathering rows of an in-memory array does not.
        workers = self.workers if self.workers is not None else (available_cpus() if isinstance(self.images, ImageStore) else 0)
        loader = torch.utils.data.DataLoader(
            _Batches(self.images, self.covered, self.batch_size), batch_size=None, **loader_options(self.device, workers)
        )

        def fill(array: np.ndarray) -> None:
            print(f"computing {self.backbone} {self.layer} features of {self.covered.size} images on {self.device} (cached for later runs)", file=sys.stderr)
            start = time.perf_counter()
            position = 0
            with torch.inference_mode():
                for batch in loader:
                    output = network(prepare(batch, self.device)).float().cpu().numpy()
                    array[position : position + output.shape[0]] = output
                    position += output.shape[0]
            print(f"{self.backbone} features of {position} images in {time.perf_counter() - start:.0f} s", file=sys.stderr)

        return entry.get_or_build((int(self.covered.size), dimension), np.float32, fill, what=f"feature cache {entry.path}")


def attach_backbone_features(arrays: Any, manifest: Any, cache_dir: Path, device: str, **options: Any) -> None:
    """Give a dataset without feature vectors cached backbone features of its manifest's items."""
    if arrays.features is not None or arrays.images is None:
        return
    covered = np.unique(np.concatenate([np.asarray(indices) for indices in manifest.splits.values()]))
    arrays.features = BackboneFeatures(
        arrays.images,
        covered,
        dataset=manifest.dataset,
        manifest_hash=manifest.hash,
        cache_dir=cache_dir,
        device=device,
        **options,
    )
