"""MS-COCO 2014 for hashing: the train2014 + val2014 images carrying at least one of the 80 categories.

Files under ``<data root>/coco/``, either

- list files ``database.txt``, ``test.txt``, ``train.txt`` (``relative/path.jpg`` + 80 labels,
  paths relative to this folder), or
- the raw release: ``annotations/instances_train2014.json`` and
  ``annotations/instances_val2014.json`` with the images under ``train2014/`` and ``val2014/``.

From the raw release: columns are the 80 categories in order of category id; the images are
those of train2014 then val2014, each by image id; an image is labelled with every category of
its instance annotations, and images without any annotation are dropped (122,218 remain).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hashbench.data.checks import Finding, RowFaults, duplicates_after_first, require_inside
from hashbench.data.splits import SampledProtocol, with_validation
from hashbench.errors import UserError

from ._listfiles import ImageFolderDataset, ImageTable, ListProtocol

# The 80 categories in order of their COCO category id.
CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
ANNOTATION_FILES = {"train2014": "instances_train2014.json", "val2014": "instances_val2014.json"}


def read_instances(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
        value["images"], value["annotations"], value["categories"]  # noqa: B018 - presence check
        return value
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read COCO annotation file {path} ({error})") from error
    except (KeyError, TypeError) as error:
        raise UserError(f"{path} is not a COCO instances file (no {error}); use instances_*2014.json") from error


class COCO(ImageFolderDataset):
    name = "coco"
    description = "MS-COCO 2014: 122,218 images with any of 80 object categories (multi-label)"
    classes = CATEGORIES
    multi_label = True
    folder_name = "coco"
    published_list_sizes = {"query": 5000, "train": 10000, "database": 117218}
    published_images = 122218
    layout_help = (
        "put the images and either database.txt/test.txt/train.txt or annotations/instances_train2014.json and "
        "annotations/instances_val2014.json (images under train2014/ and val2014/) in <data root>/coco"
    )
    protocols = {
        **with_validation(
            SampledProtocol(
                name="standard",
                description="5,000 random queries, database = the rest, 10,000 random training images from the database",
                topk=5000,
                query_size=5000,
                train_size=10000,
            ),
            "5,000 random validation images from the database, disjoint from train",
            val_size=5000,
        ),
        "lists": ListProtocol(topk=5000),
    }
    default_protocol = "standard"
    image_profile = "natural"

    def read_raw(self, folder: Path) -> ImageTable | None:
        present = {part: folder / "annotations" / name for part, name in ANNOTATION_FILES.items()}
        present = {part: path for part, path in present.items() if path.is_file()}
        if not present:
            return None
        paths: list[str] = []
        origins: list[str] = []
        rows: list[np.ndarray] = []
        categories: list[dict] | None = None
        listed = 0
        for part, path in present.items():
            require_inside(folder, path)
            instances = read_instances(path)
            file_categories = sorted(instances["categories"], key=lambda category: category["id"])
            if categories is None:
                categories = file_categories
            elif [c["id"] for c in file_categories] != [c["id"] for c in categories]:
                raise UserError(f"{path} defines other categories than {next(iter(present.values()))}")
            column_of = {category["id"]: column for column, category in enumerate(categories)}
            images = sorted(instances["images"], key=lambda image: image["id"])
            row_of = {image["id"]: row for row, image in enumerate(images)}
            labels = np.zeros((len(images), len(categories)), dtype=bool)
            for annotation in instances["annotations"]:
                row = row_of.get(annotation["image_id"])
                column = column_of.get(annotation["category_id"])
                if row is None or column is None:
                    raise UserError(f"{path}: an annotation refers to an unknown image or category ({annotation.get('id')})")
                labels[row, column] = True
            listed += len(images)
            for row, image in enumerate(images):
                if labels[row].any():
                    paths.append(f"{part}/{image['file_name']}")
                    origins.append(f"{path.name}: image id {image['id']}")
                    rows.append(labels[row])
        assert categories is not None
        if len(categories) != len(CATEGORIES):
            raise UserError(f"the COCO annotations define {len(categories)} categories; hashbench expects the 80 of COCO 2014")
        faults = RowFaults(origins)
        faults.add("duplicate", duplicates_after_first(paths))
        notes = []
        missing = sorted(set(ANNOTATION_FILES) - set(present))
        if missing:
            notes.append(Finding("warning", "count", f"no annotations for {', '.join(missing)}: only {', '.join(present)} is used"))
        label_matrix = np.stack(rows) if rows else np.zeros((0, len(categories)), dtype=bool)
        counts = {"images listed": listed, "unlabelled images dropped": listed - len(paths)}
        names = tuple(category.get("name", str(category["id"])) for category in categories)
        return ImageTable(paths, label_matrix, faults, classes=names, counts=counts, notes=notes)
