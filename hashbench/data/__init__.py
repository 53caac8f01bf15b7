"""The dataset plugin interface and the views of a split that methods receive."""

from __future__ import annotations

import abc
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
    # Set by the harness after loading: the dataset's declared image profile ("natural",
    # "tiny" or None; see HashingDataset.image_profile), so that a method reads it from the
    # data it is given.
    image_profile: str | None = None

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(H, W, C) of the images, when the dataset has images."""
        if self.images is None:
            return None
        shape = getattr(self.images, "shape", None)
        return tuple(shape[1:]) if shape is not None else tuple(np.asarray(self.images[np.array([0])]).shape[1:])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array`` (``array`` itself stays as it was)."""
    view = array.view()
    view.flags.writeable = False
    return view


def freeze(arrays: DatasetArrays) -> DatasetArrays:
    """Make the loaded dataset's arrays read-only: every cell of a grid (and every later cell
    of a worker process) shares them, so no method may write into them."""
    for value in (arrays.labels, arrays.images, arrays.features, *arrays.groups.values()):
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return arrays


def _own_copy(values: Any, provider: Any, dtype: Any = None) -> np.ndarray:
    """``values`` from ``provider`` (a lazy image store, a feature function) as an array no one
    else holds: copied, unless the provider says it returns new arrays (``returns_copies``)."""
    if getattr(provider, "returns_copies", False):
        return np.ascontiguousarray(values, dtype=dtype)
    return np.array(values, dtype=dtype, order="C", copy=True)


class DataSplit:
    """One split (train, query, database, val) of a loaded dataset, as a method sees it.

    What it gives a method cannot change the dataset for the cells after it: ``indices`` and
    ``feature_source`` (a matrix) are read-only; ``labels``, ``features`` and ``images(...)``
    are the method's own copies.
    """

    def __init__(self, name: str, indices: np.ndarray, arrays: DatasetArrays, protocol: str | None = None) -> None:
        self.name = name
        # The split's own copy, read-only: the manifest's arrays are shared by every cell.
        self.indices = read_only(np.array(indices, dtype=np.int64))
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
    def image_profile(self) -> str | None:
        """What the dataset declares its images to be: ``natural``, ``tiny`` or None (undeclared)."""
        return self._arrays.image_profile

    @property
    def labels(self) -> np.ndarray:
        """Multi-hot labels ``(n, classes)``; methods are unsupervised and should not use them.

        A new array at each call: writing into it changes nothing for anyone else."""
        return np.asarray(self._arrays.labels[self.indices])  # integer-array indexing copies

    @property
    def feature_source(self) -> Any:
        """What ``features`` come from: the dataset's own matrix, or a provider such as the
        backbone-feature cache (methods record it to say which features they trained on).

        A matrix comes read-only: it is the dataset's, shared by every cell of the grid."""
        source = self._arrays.features
        return read_only(source) if isinstance(source, np.ndarray) else source

    @property
    def features(self) -> np.ndarray:
        """Float32 feature matrix ``(n, d)`` (computed once per split).

        The split's own copy: a method may write into it without changing the dataset."""
        if self._features is None:
            source = self._arrays.features
            if source is None:
                raise UserError(
                    f"this dataset provides no feature vectors for the {self.name} split; "
                    "use a method that takes images"
                )
            if callable(source):
                self._features = _own_copy(source(self.indices), source, np.float32)
            else:  # integer-array indexing copies
                self._features = np.ascontiguousarray(source[self.indices], dtype=np.float32)
        return self._features

    def images(self, indices: np.ndarray | None = None) -> np.ndarray:
        """uint8 images ``(n, H, W, C)`` of the split (or of positions ``indices`` within it).

        A new array at each call: writing into it changes nothing for anyone else."""
        images = self._arrays.images
        if images is None:
            raise UserError(f"this dataset provides no images for the {self.name} split")
        chosen = self.indices if indices is None else self.indices[np.asarray(indices)]
        if isinstance(images, np.ndarray):  # integer-array indexing copies
            return np.asarray(images[chosen])
        return _own_copy(images[chosen], images)


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
    """``plugin.load(root, cache_dir=..., drop_bad_rows=...)``, checked; the arrays come back
    read-only (:func:`freeze`) with the dataset's declared image profile."""
    arrays = freeze(check_loaded(plugin, plugin.load(Path(root), cache_dir=cache_dir, drop_bad_rows=drop_bad_rows)))
    declared = getattr(plugin, "image_profile", None)
    arrays.image_profile = declared if isinstance(declared, str) else None
    return arrays


def check_loaded(plugin: Any, arrays: Any) -> Any:
    """Refuse what a plugin loaded that no split or method could use, before anything is
    drawn or fitted: labels that are not 0/1 multi-hot or class ids (which become multi-hot
    here), and features or images with another number of rows than the labels."""
    if not isinstance(arrays, DatasetArrays):
        return arrays
    from hashbench.data.labels import LabelError, dataset_labels

    where = f"dataset {plugin.name} ({type(plugin).__module__}.{type(plugin).__qualname__}.load)"
    classes = getattr(plugin, "classes", ()) or ()
    arrays.labels = dataset_labels(arrays.labels, where, len(classes) or None)
    rows = len(arrays)
    for what, values in (("features", arrays.features), ("images", arrays.images)):
        if values is None or callable(values) and not hasattr(values, "__len__"):
            continue  # a feature function: its rows are asked for by index
        count = int(values.shape[0]) if hasattr(values, "shape") else len(values)
        if count != rows:
            raise LabelError(
                f"{where}: {what} have {count} rows but labels have {rows}; each item needs one {what[:-1]} row and "
                f"one label row, in the same order: fix the {what} or the labels the plugin returns"
            )
    return arrays
