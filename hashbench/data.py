"""The dataset plugin interface and the views of a split that methods receive."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hashbench.errors import UserError


@dataclass
class DatasetArrays:
    """A loaded dataset in its canonical order.

    ``labels`` is a bool multi-hot matrix ``(N, classes)`` for every dataset. ``images`` is any
    object with ``len()`` and integer-array indexing returning ``uint8 (n, H, W, C)`` (a numpy
    array, a memory map, or a lazy image store). ``features`` is either a float matrix
    ``(N, d)`` or a function from an index array to such a matrix. ``groups`` holds official
    partitions (for example CIFAR-10's ``train``/``test``) that protocols may use.
    """

    labels: np.ndarray
    images: Any = None
    features: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None
    groups: Mapping[str, np.ndarray] = field(default_factory=dict)
    # Set by the harness after loading: which dataset this is (methods pick per-dataset
    # defaults from it, e.g. a small backbone for tiny images).
    dataset: str = ""
    # Where the data came from and what loading did to it (source files, rows dropped by
    # --drop-bad-rows, ...); the runner stores it under "data" in every run record.
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(H, W, C) of the images, when the dataset has images."""
        if self.images is None:
            return None
        shape = getattr(self.images, "shape", None)
        return tuple(shape[1:]) if shape is not None else tuple(np.asarray(self.images[np.array([0])]).shape[1:])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class DataSplit:
    """One split (train, query, database, val) of a loaded dataset, as a method sees it."""

    def __init__(self, name: str, indices: np.ndarray, arrays: DatasetArrays, protocol: str | None = None) -> None:
        self.name = name
        self.indices = np.asarray(indices, dtype=np.int64)
        self._arrays = arrays
        # The split protocol this split was drawn under (methods whose released settings
        # depend on it, e.g. CIBHash's validation rule, read it); None outside the runner.
        self.protocol = protocol
        self._features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    @property
    def dataset(self) -> str:
        return self._arrays.dataset

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self._arrays.image_shape

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot labels ``(n, classes)``; methods are unsupervised and should not use them."""
        return self._arrays.labels[self.indices]

    @property
    def feature_source(self) -> Any:
        """What ``features`` come from: the dataset's own matrix, or a provider such as the
        backbone-feature cache (methods record it to say which features they trained on)."""
        return self._arrays.features

    @property
    def features(self) -> np.ndarray:
        """Float32 feature matrix ``(n, d)`` (computed once per split)."""
        if self._features is None:
            source = self._arrays.features
            if source is None:
                raise UserError(
                    f"this dataset provides no feature vectors for the {self.name} split; "
                    "use a method that takes images"
                )
            values = source(self.indices) if callable(source) else source[self.indices]
            self._features = np.ascontiguousarray(values, dtype=np.float32)
        return self._features

    def images(self, indices: np.ndarray | None = None) -> np.ndarray:
        """uint8 images ``(n, H, W, C)`` of the split (or of positions ``indices`` within it)."""
        if self._arrays.images is None:
            raise UserError(f"this dataset provides no images for the {self.name} split")
        chosen = self.indices if indices is None else self.indices[np.asarray(indices)]
        return np.asarray(self._arrays.images[chosen])


class HashingDataset(abc.ABC):
    """Base class of every dataset plugin.

    A dataset declares its classes, whether it is multi-label, how to find its files under
    the data root, and one or more named split protocols.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    multi_label: ClassVar[bool] = False
    protocols: ClassVar[Mapping[str, Any]] = {}
    default_protocol: ClassVar[str] = "standard"
    # "natural" (photographs: deep methods default to VGG-16 at 224 px and the paper's
    # augmentations) or "tiny" (small grey or low-resolution images: a small convnet at native
    # size); None lets methods decide from the image shape.
    image_profile: ClassVar[str | None] = None

    @abc.abstractmethod
    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> DatasetArrays:
        """Load the dataset from ``root`` (the data root); raise UserError when files are missing.

        ``cache_dir`` is where decoded images and features may be cached; ``drop_bad_rows``
        asks to drop rows that fail validation (missing images, all-zero labels, ...) instead
        of refusing the dataset. Plugins that need neither may accept ``root`` alone.
        """

    def protocol(self, name: str | None):
        """The named split protocol (the default one when ``name`` is None)."""
        name = name or self.default_protocol
        if name not in self.protocols:
            known = ", ".join(sorted(self.protocols))
            raise UserError(f"dataset {self.name} has no protocol {name!r}; its protocols: {known}")
        return self.protocols[name]


def load_dataset(
    plugin: HashingDataset, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False
) -> DatasetArrays:
    """``plugin.load(root, ...)`` with the keyword options its signature accepts.

    Plugins written before the options existed (``load(self, root)``) keep working.
    """
    options = {"cache_dir": cache_dir, "drop_bad_rows": drop_bad_rows}
    parameters = inspect.signature(plugin.load).parameters
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        options = {name: value for name, value in options.items() if name in parameters}
    return plugin.load(Path(root), **options)
