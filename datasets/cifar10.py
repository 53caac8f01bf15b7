"""CIFAR-10: 60,000 32×32 colour images in 10 classes, from torchvision's layout.

Files: ``<data root>/cifar-10-batches-py/`` with the pickled batches ``data_batch_1`` …
``data_batch_5`` and ``test_batch`` (the python version of the release, as torchvision
downloads it; ``hashbench data get cifar10`` does that when online). Canonical order: the
five training batches then the test batch; ``groups`` holds ``train`` (50,000) and ``test``
(10,000). Images stay in memory (180 MB); feature-input methods get VGG-16 features.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashbench.data import DatasetArrays
from hashbench.data.splits import SampledProtocol, SplitProtocol, sample_per_class, with_validation
from hashbench.errors import UserError

from ._official import OfficialSplitDataset

FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
TEST_BATCH = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes, latin-1 only."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"the pickle encodes bytes with {encoding!r}, not latin-1")
    return codecs.encode(text, "latin1")


def _empty_bytes() -> bytes:
    """``bytes()`` as pickles spell b"" (no arguments: ``bytes(n)`` would allocate n bytes)."""
    return b""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What the CIFAR python format needs: numpy's array reconstruction, and nothing else."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # The release was pickled by numpy 1 as numpy.core; numpy 2 writes numpy._core.
    for package in ("numpy.core", "numpy._core"):
        allowed[f"{package}.multiarray", "_reconstruct"] = multiarray._reconstruct
        allowed[f"{package}.multiarray", "scalar"] = multiarray.scalar
        allowed[f"{package}.numeric", "_frombuffer"] = numeric._frombuffer  # pickle protocol 5
    # Protocol-2 pickles written by Python 3 spell bytes as these calls.
    allowed["_codecs", "encode"] = _latin1_encode
    allowed["__builtin__", "bytes"] = allowed["builtins", "bytes"] = _empty_bytes
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, bytes and numpy arrays; refuses every other global.

    A plain ``pickle.load`` calls whatever the file names (``os.system`` included), so a
    crafted batch file would run code as soon as hashbench reads it.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        return allowed


def load_batch_pickle(path: Path) -> Any:
    """The unpickled content of a CIFAR batch file, through the restricted unpickler."""
    with open(path, "rb") as handle:
        # latin1: the release was pickled by Python 2, whose str holds the array bytes.
        return _BatchUnpickler(handle, encoding="latin1").load()


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → (uint8 images (n, 32, 32, 3), class ids (n,))."""
    try:
        batch = load_batch_pickle(path)
    except FileNotFoundError:
        raise UserError(
            f"CIFAR-10 file {path} not found; run `hashbench data get cifar10` or extract "
            f"cifar-10-python.tar.gz so that {path.parent.name}/ lies under the data root"
        ) from None
    except OSError as error:
        raise UserError(f"cannot read CIFAR-10 file {path} ({error.strerror or error})") from error
    except pickle.UnpicklingError as error:
        raise UserError(
            f"CIFAR-10 file {path} is not a CIFAR python batch, refused unread ({error}); "
            "replace it with the file from cifar-10-python.tar.gz"
        ) from error
    except Exception as error:  # a damaged pickle raises many types (EOFError, ValueError, IndexError, ...)
        raise UserError(
            f"CIFAR-10 file {path} is not a CIFAR python batch ({type(error).__name__}: {error}); "
            "replace it with the file from cifar-10-python.tar.gz"
        ) from error
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"] if "labels" in batch else batch["fine_labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise UserError(f"CIFAR-10 file {path} is not a CIFAR python batch ({type(error).__name__}: {error})") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or data.shape[0] != labels.size:
        raise UserError(f"CIFAR-10 file {path}: expected data (n, 3072) and n labels, got {data.shape} and {labels.size}")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B), as torchvision reads them.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


@dataclass(frozen=True)
class CIBHashCodeProtocol(SplitProtocol):
    """The split of CIBHash's released code: train = 500 per class of the training images,
    database = all training images, test images shuffled: first half val, second half query."""

    name: str = "cibhash-code"
    description: str = (
        "CIBHash's released code: query = second half of the shuffled 10,000 test images, val = first half, "
        "train = 500 per class from the 50,000 training images, database = the 50,000 training images"
    )
    topk: int = 1000
    train_per_class: int = 500

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        train_pool, test = np.sort(arrays.groups["train"]), np.sort(arrays.groups["test"])
        train = sample_per_class(arrays.labels, train_pool, self.train_per_class, rng, "train")
        shuffled = rng.permutation(test)
        half = shuffled.size // 2
        return {"query": shuffled[half:], "val": shuffled[:half], "train": train, "database": train_pool}


@dataclass(frozen=True)
class TBHCodeProtocol(SplitProtocol):
    """The split of TBH's released code: query = test images, train = database = training images."""

    name: str = "tbh-code"
    description: str = "TBH's released code: query = the 10,000 test images, train = database = the 50,000 training images"
    topk: int = 1000

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        train, test = np.sort(arrays.groups["train"]), np.sort(arrays.groups["test"])
        return {"query": test, "database": train, "train": train}


LEGACY_SEEDS = 2**32  # numpy's legacy generator (np.random.seed) takes seeds below 2**32


@dataclass(frozen=True)
class BiHalfCodeProtocol(SplitProtocol):
    """The split of Bi-half's released CIFAR-10 scripts (``ImageHashing/Cifar10_I.py`` and
    ``Cifar10_II.py``), drawn exactly as they draw it.

    The 60,000 images are pooled (training batches first, then the test batch); for each class
    in turn, numpy's legacy generator is seeded again (``np.random.seed(0)`` in the scripts:
    the split seed here, so split seed 0 is the released draw) and permutes that class's items
    in index order; the first ``query_per_class`` become queries, the next
    ``database_per_class`` the database. ``Cifar10_I`` trains on the whole database,
    ``Cifar10_II`` on its first ``train_per_class`` of each class.
    """

    name: str
    description: str
    topk: int
    query_per_class: int = 1000
    database_per_class: int = 5000
    train_per_class: int | None = None  # None: train = database (Cifar10_I)

    def draw_from_seed(self, arrays: DatasetArrays, split_seed: int) -> dict[str, np.ndarray]:
        if not 0 <= split_seed < LEGACY_SEEDS:
            raise UserError(
                f"protocol {self.name} draws with numpy's legacy generator, as the released script does, "
                f"which takes seeds below 2**32; got split seed {split_seed} (the released draw is split seed 0)"
            )
        needed = self.query_per_class + self.database_per_class
        query, database, train = [], [], []
        for class_index in range(arrays.labels.shape[1]):
            members = np.flatnonzero(arrays.labels[:, class_index])
            if members.size < needed:
                raise UserError(
                    f"protocol {self.name}: class {class_index} has {members.size} items, the released draw "
                    f"needs {needed} ({self.query_per_class} queries + {self.database_per_class} database)"
                )
            # reseeded for every class, as released: every class gets the same permutation
            members = members[np.random.RandomState(split_seed).permutation(members.size)]
            stop = self.query_per_class + (self.train_per_class or self.database_per_class)
            query.append(members[: self.query_per_class])
            database.append(members[self.query_per_class : needed])
            train.append(members[self.query_per_class : stop])
        return {"query": np.concatenate(query), "database": np.concatenate(database), "train": np.concatenate(train)}

    def summary(self) -> str:
        return f"{self.description}; the released draw is split seed 0; mAP@{self.topk}"


class CIFAR10(OfficialSplitDataset):
    name = "cifar10"
    description = "CIFAR-10: 60,000 32x32 colour images, 10 classes (torchvision's cifar-10-batches-py)"
    classes = CLASSES
    multi_label = False
    official_sizes = {"train": 50000, "test": 10000}
    torchvision_class = "CIFAR10"
    layout_help = (
        "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
        f"so that {FOLDER_NAME}/ (data_batch_1..5, test_batch) lies under the data root"
    )
    protocols = {
        **with_validation(
            SampledProtocol(
                name="standard",
                description="1,000 queries (100 per class) from all 60,000, database = the other 59,000, 5,000 training images (500 per class) from the database",
                topk=1000,
                query_per_class=100,
                train_per_class=500,
            ),
            "1,000 validation images (100 per class) from the database, disjoint from train",
            val_per_class=100,
        ),
        "cibhash-code": CIBHashCodeProtocol(),
        "tbh-code": TBHCodeProtocol(),
        "bihalf-code-i": BiHalfCodeProtocol(
            name="bihalf-code-i",
            description=(
                "Bi-half's released Cifar10_I split: per class 1,000 queries and 5,000 database images from all 60,000 "
                "(numpy's legacy permutation, reseeded per class); train = database (50,000)"
            ),
            topk=1000,
        ),
        "bihalf-code-ii": BiHalfCodeProtocol(
            name="bihalf-code-ii",
            description=(
                "Bi-half's released Cifar10_II split: the queries and database of Cifar10_I, train = the first 500 "
                "per class of the database (5,000); mAP over the whole ranking, as released"
            ),
            topk=50000,
            train_per_class=500,
        ),
        # SSDH's released code ships only a MIRFlickr split; its paper's CIFAR-10 setting has
        # the standard sizes and mAP@5000. The same query, database and train as `standard`
        # for one split seed, plus a validation part drawn last (as `standard-val`).
        "ssdh-paper": SampledProtocol(
            name="ssdh-paper",
            description=(
                "SSDH's CIFAR-10 setting: the queries, database and training images of standard (1,000 / 59,000 / "
                "500 per class), 1,000 validation images (100 per class) from the database, disjoint from train; mAP@5000"
            ),
            topk=5000,
            query_per_class=100,
            train_per_class=500,
            val_per_class=100,
        ),
    }
    default_protocol = "standard"
    image_profile = "natural"

    def load(self, root: Path, *, cache_dir: Path | None = None, drop_bad_rows: bool = False) -> DatasetArrays:
        folder = Path(root) / FOLDER_NAME
        if not folder.is_dir():
            raise UserError(f"CIFAR-10 not found: no folder {folder}; run `hashbench data get cifar10` or {self.layout_help}")
        parts = [read_batch(folder / name) for name in (*TRAIN_BATCHES, TEST_BATCH)]
        images = np.concatenate([images for images, _ in parts])
        class_ids = np.concatenate([ids for _, ids in parts])
        train_count = sum(ids.size for _, ids in parts[: len(TRAIN_BATCHES)])
        return self._arrays(images, class_ids, train_count, str(folder), provenance={"folder": str(folder)})
