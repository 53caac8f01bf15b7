"""Writers of tiny datasets in each real file format, for the loader and `data check` tests.

Every writer returns what it wrote (labels in canonical order, paths) so tests can compare
the loaders' output with the truth.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def class_ids(per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    ids = np.repeat(np.arange(num_classes), per_class)
    return rng.permutation(ids)


# -- CIFAR-10 -------------------------------------------------------------------------------------


def write_cifar10(root: Path, train_per_class: int = 6, test_per_class: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """``root/cifar-10-batches-py`` with data_batch_1..5 and test_batch (pickled dicts, channel-planar rows)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_ids = class_ids(train_per_class, 10, rng)
    test_ids = class_ids(test_per_class, 10, rng)
    images = rng.integers(0, 256, size=(train_ids.size + test_ids.size, 32, 32, 3), dtype=np.uint8)
    train_batches = np.array_split(np.arange(train_ids.size), 5)
    for number, rows in enumerate(train_batches, start=1):
        _write_cifar_batch(folder / f"data_batch_{number}", images[rows], train_ids[rows], f"training batch {number} of 5")
    test_rows = np.arange(train_ids.size, images.shape[0])
    _write_cifar_batch(folder / "test_batch", images[test_rows], test_ids, "testing batch 1 of 1")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane"] * 10}, protocol=2))
    return {"images": images, "class_ids": np.concatenate([train_ids, test_ids]), "train_count": np.array(train_ids.size)}


def _write_cifar_batch(path: Path, images: np.ndarray, ids: np.ndarray, label: str) -> None:
    planar = images.transpose(0, 3, 1, 2).reshape(images.shape[0], -1)  # 1024 R, 1024 G, 1024 B
    batch = {
        "batch_label": label,
        "labels": [int(i) for i in ids],
        "data": planar,
        "filenames": [f"img_{row}.png" for row in range(images.shape[0])],
    }
    path.write_bytes(python2_pickle(batch))


class _Python2Pickler(pickle._Pickler):
    """The pure-Python pickler, writing str and bytes as Python 2's str (BINSTRING opcodes)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_python2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_python2_str
    dispatch[bytes] = _save_python2_str


def python2_pickle(value) -> bytes:
    """``value`` pickled as the CIFAR release was: Python 2's cPickle, protocol 2, numpy 1.

    Strings and the array bytes are Python 2 str (read back with encoding latin1 or bytes),
    and arrays are rebuilt through numpy.core.multiarray._reconstruct.
    """
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(value)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


# -- MNIST / Fashion-MNIST ------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist(
    root: Path, folder: str = "MNIST/raw", train_per_class: int = 6, test_per_class: int = 4, seed: int = 0, compress: bool = True
) -> dict[str, np.ndarray]:
    """The four MNIST IDX files in ``root/folder`` (torchvision's ``MNIST/raw`` or a plain folder)."""
    rng = np.random.default_rng(seed)
    train_ids = class_ids(train_per_class, 10, rng)
    test_ids = class_ids(test_per_class, 10, rng)
    images = rng.integers(0, 256, size=(train_ids.size + test_ids.size, 28, 28), dtype=np.uint8)
    target = Path(root) / folder
    write_idx(target / "train-images-idx3-ubyte", images[: train_ids.size], compress)
    write_idx(target / "train-labels-idx1-ubyte", train_ids, compress)
    write_idx(target / "t10k-images-idx3-ubyte", images[train_ids.size :], compress)
    write_idx(target / "t10k-labels-idx1-ubyte", test_ids, compress)
    return {"images": images, "class_ids": np.concatenate([train_ids, test_ids]), "train_count": np.array(train_ids.size)}


# -- image files ----------------------------------------------------------------------------------


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (20, 16)) -> np.ndarray:
    """A small RGB JPEG (or PNG, by suffix) of smooth random colour; returns the pixels written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 1, height)[:, None, None], np.linspace(0, 1, width)[None, :, None]
    pixels = (corners[0, 0] * (1 - ys) * (1 - xs) + corners[0, 1] * (1 - ys) * xs + corners[1, 0] * ys * (1 - xs) + corners[1, 1] * ys * xs)
    pixels = pixels.astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else Image.fromarray(pixels).save(path)
    return pixels


def corrupt_jpeg(path: Path) -> None:
    """Keep the JPEG header, cut the entropy-coded data: Pillow fails to decode it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def multi_hot_rows(count: int, num_classes: int, rng: np.random.Generator, per_class_floor: int = 0) -> np.ndarray:
    """Random multi-hot rows with at least one label each (1-3 labels per row)."""
    labels = np.zeros((count, num_classes), dtype=bool)
    for row in range(count):
        labels[row, rng.choice(num_classes, size=rng.integers(1, 4), replace=False)] = True
    if per_class_floor:
        # Rows cycle through the classes too, so each class has at least per_class_floor items.
        for row in range(min(count, per_class_floor * num_classes)):
            labels[row, row % num_classes] = True
    return labels


def _line(path: str, labels: np.ndarray) -> str:
    return f"{path} " + " ".join("1" if value else "0" for value in labels)


def write_list_dataset(
    folder: Path, num_classes: int, database: int = 30, test: int = 8, train: int = 10, seed: int = 0
) -> dict[str, object]:
    """``folder/{database,test,train}.txt`` + JPEGs under ``folder/images``; train ⊂ database."""
    rng = np.random.default_rng(seed)
    count = database + test
    labels = multi_hot_rows(count, num_classes, rng, per_class_floor=1)
    paths = [f"images/{index:05d}.jpg" for index in range(count)]
    for path in paths:
        write_image(Path(folder) / path, rng)
    database_rows = list(range(database))
    test_rows = list(range(database, count))
    train_rows = sorted(rng.choice(database, size=train, replace=False).tolist())
    for name, rows in (("database.txt", database_rows), ("test.txt", test_rows), ("train.txt", train_rows)):
        (Path(folder) / name).write_text("".join(_line(paths[row], labels[row]) + "\n" for row in rows))
    return {"paths": paths, "labels": labels, "database": database_rows, "test": test_rows, "train": train_rows}


# -- raw annotations ------------------------------------------------------------------------------


def write_coco(root: Path, train_images: int = 14, val_images: int = 8, unlabelled: int = 2, seed: int = 0) -> dict[str, object]:
    """``root/coco/annotations/instances_{train,val}2014.json`` + JPEGs, 80 categories with COCO's sparse ids."""
    from hashbench.datasets.coco import CATEGORIES

    rng = np.random.default_rng(seed)
    folder = Path(root) / "coco"
    # COCO's ids run 1..90 with gaps; shuffle the JSON order to prove the loader sorts by id.
    category_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    categories = [{"id": cid, "name": name, "supercategory": "x"} for cid, name in zip(category_ids, CATEGORIES, strict=True)]
    expected_paths: list[str] = []
    expected_labels: list[np.ndarray] = []
    annotation_id = 1
    for part, count in (("train2014", train_images), ("val2014", val_images)):
        image_ids = sorted(rng.choice(np.arange(1, 100000), size=count, replace=False).tolist())
        images, annotations = [], []
        for position, image_id in enumerate(image_ids):
            file_name = f"COCO_{part}_{image_id:012d}.jpg"
            write_image(folder / part / file_name, rng)
            images.append({"id": image_id, "file_name": file_name, "width": 20, "height": 16})
            if position >= count - unlabelled:
                continue  # no annotation: dropped by the loader
            row = np.zeros(80, dtype=bool)
            for column in rng.choice(80, size=rng.integers(1, 4), replace=False):
                for _ in range(rng.integers(1, 3)):  # several instances of one category count once
                    annotations.append({"id": annotation_id, "image_id": image_id, "category_id": category_ids[column], "bbox": [0, 0, 1, 1]})
                    annotation_id += 1
                row[column] = True
            expected_paths.append(f"{part}/{file_name}")
            expected_labels.append(row)
        shuffled = [categories[i] for i in rng.permutation(80)]
        instances = {"images": list(reversed(images)), "annotations": annotations, "categories": shuffled}
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"instances_{part}.json").write_text(json.dumps(instances))
    return {"paths": expected_paths, "labels": np.stack(expected_labels)}


def write_nuswide(root: Path, images: int = 50, seed: int = 0) -> dict[str, object]:
    """NUS-WIDE's raw layout: ImageList/Imagelist.txt, Groundtruth/AllLabels/Labels_*.txt, Flickr/ images.

    23 concepts: the usual 21 (frequent) and 2 rare ones; the last two images carry only rare
    concepts and must be dropped.
    """
    from hashbench.datasets.nuswide import PUBLISHED_CONCEPTS

    rng = np.random.default_rng(seed)
    folder = Path(root) / "nuswide"
    concepts = list(PUBLISHED_CONCEPTS) + ["zebra", "aardvark"]
    labels = np.zeros((images, len(concepts)), dtype=bool)
    labels[: images - 2, :21] = multi_hot_rows(images - 2, 21, rng, per_class_floor=2)
    labels[images - 2 :, 21] = True  # only a rare concept
    labels[0, 22] = True
    lines = []
    for index in range(images):
        concept_folder = concepts[int(np.flatnonzero(labels[index])[0])]
        relative = f"{concept_folder}\\{index:04d}_{1000 + index}.jpg"
        lines.append(f"C:\\ImageData\\Flickr\\{relative}")
        write_image(folder / "Flickr" / relative.replace("\\", "/"), rng)
    (folder / "ImageList").mkdir(parents=True, exist_ok=True)
    (folder / "ImageList" / "Imagelist.txt").write_text("\n".join(lines) + "\n")
    label_folder = folder / "Groundtruth" / "AllLabels"
    label_folder.mkdir(parents=True, exist_ok=True)
    for column, concept in enumerate(concepts):
        (label_folder / f"Labels_{concept}.txt").write_text("".join(f"{int(v)}\n" for v in labels[:, column]))
    kept = labels[:, :21].any(axis=1)
    paths = [f"Flickr/{line.split('Flickr' + chr(92))[1].replace(chr(92), '/')}" for line in lines]
    return {"paths": [p for p, keep in zip(paths, kept, strict=True) if keep], "labels": labels[kept][:, :21]}


# -- planted faults ------------------------------------------------------------------------------


def plant(tmp_path: Path, fault: str) -> str:
    """One fault of each kind in a NUS-WIDE list-file dataset (21 labels per row); returns the
    path of the database image it concerns (one listed nowhere else)."""
    folder = tmp_path / "nuswide"
    database = (folder / "database.txt").read_text().splitlines()
    train = (folder / "train.txt").read_text().splitlines()
    in_train = {line.split()[0] for line in train}
    victim = next(row for row, line in enumerate(database) if line.split()[0] not in in_train)
    path = database[victim].split()[0]
    if fault == "missing":
        (folder / path).unlink()
    elif fault == "unreadable":
        corrupt_jpeg(folder / path)
    elif fault == "zero_labels":
        database[victim] = path + " 0" * 21
    elif fault == "duplicate":
        database.append(database[victim])
    elif fault == "escaping":
        write_image(tmp_path / "outside.jpg", np.random.default_rng(0))
        database.append("../outside.jpg " + " ".join(["1"] + ["0"] * 20))
    elif fault == "label_width":
        database[victim] += " 1"
    elif fault == "label_values":
        database[victim] = path + " 2" + " 0" * 20
    elif fault == "leak":
        database.append((folder / "test.txt").read_text().splitlines()[0])
    elif fault == "conflict":
        first = train[0].split()
        flipped = ["1" if value == "0" else "0" for value in first[1:]]
        (folder / "train.txt").write_text("\n".join([f"{first[0]} {' '.join(flipped)}", *train[1:]]) + "\n")
    (folder / "database.txt").write_text("\n".join(database) + "\n")
    return path
