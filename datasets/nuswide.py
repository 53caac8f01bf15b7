"""NUS-WIDE-21: Flickr images carrying at least one of the 21 most frequent of NUS-WIDE's 81 concepts.

Files under ``<data root>/nuswide/``, either

- list files ``database.txt``, ``test.txt``, ``train.txt`` (``relative/path.jpg`` + 21 labels,
  paths relative to this folder), or
- the raw release: ``ImageList/Imagelist.txt`` (one image per line, e.g.
  ``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``), ``Groundtruth/AllLabels/Labels_<concept>.txt``
  (one 0/1 per image, same order), and the images under ``Flickr/<concept>/<file>.jpg``.

From the raw release the 21 concepts with the most positive images are kept (ties broken by
name), as columns in alphabetical order, and images carrying none of them are dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashbench.data.checks import Finding, RowFaults, duplicates_after_first, require_inside
from hashbench.data.splits import SampledProtocol, with_validation
from hashbench.errors import UserError

from ._listfiles import ImageFolderDataset, ImageTable, ListProtocol

NUM_CONCEPTS = 21
# The 21 most frequent concepts of the full release, alphabetically (the usual NUS-WIDE-21).
PUBLISHED_CONCEPTS = (
    "animal", "beach", "buildings", "clouds", "flowers", "grass", "lake", "mountain", "ocean", "person",
    "plants", "reflection", "road", "rocks", "sky", "snow", "sunset", "tree", "vehicle", "water", "window",
)  # fmt: skip


def image_path(line: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\x.jpg`` or ``actor\\x.jpg`` → ``Flickr/actor/x.jpg``."""
    normalised = line.strip().replace("\\", "/")
    marker = normalised.lower().find("flickr/")
    relative = normalised[marker + len("flickr/") :] if marker >= 0 else normalised
    return f"Flickr/{relative}"


def read_label_file(path: Path, expected_rows: int) -> np.ndarray:
    try:
        values = path.read_text().split()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read NUS-WIDE label file {path} ({error})") from error
    if len(values) != expected_rows:
        raise UserError(
            f"NUS-WIDE label file {path} has {len(values)} rows but ImageList/Imagelist.txt lists "
            f"{expected_rows} images; both must come from the same release"
        )
    column = np.array(values)
    if not np.isin(column, ("0", "1")).all():
        raise UserError(f"NUS-WIDE label file {path} holds values other than 0 and 1")
    return column == "1"


class NUSWide(ImageFolderDataset):
    name = "nuswide"
    description = "NUS-WIDE-21: 195,834 Flickr images with any of the 21 most frequent concepts (multi-label)"
    classes = PUBLISHED_CONCEPTS
    multi_label = True
    folder_name = "nuswide"
    published_list_sizes = {"query": 2100, "train": 10500, "database": 193734}
    published_images = 195834
    layout_help = (
        "put the images and either database.txt/test.txt/train.txt or NUS-WIDE's ImageList/Imagelist.txt "
        "and Groundtruth/AllLabels/Labels_*.txt (images under Flickr/) in <data root>/nuswide"
    )
    protocols = {
        **with_validation(
            SampledProtocol(
                name="standard",
                description="2,100 queries (100 per concept), database = the rest, 10,500 training images (500 per concept) from the database",
                topk=5000,
                query_per_class=100,
                train_per_class=500,
            ),
            "2,100 validation images (100 per concept) from the database, disjoint from train",
            val_per_class=100,
        ),
        "lists": ListProtocol(topk=5000),
    }
    default_protocol = "standard"
    image_profile = "natural"

    def read_raw(self, folder: Path) -> ImageTable | None:
        image_list = folder / "ImageList" / "Imagelist.txt"
        label_folder = folder / "Groundtruth" / "AllLabels"
        if not image_list.is_file() or not label_folder.is_dir():
            return None
        label_files = sorted(label_folder.glob("Labels_*.txt"))
        for path in (image_list, *label_files):
            require_inside(folder, path)
        lines = [line for line in image_list.read_text(errors="replace").splitlines() if line.strip()]
        if len(label_files) < NUM_CONCEPTS:
            raise UserError(
                f"{label_folder} has {len(label_files)} Labels_<concept>.txt files; NUS-WIDE-21 needs at least {NUM_CONCEPTS}"
            )
        concepts = [path.stem.removeprefix("Labels_") for path in label_files]
        columns = {concept: read_label_file(path, len(lines)) for concept, path in zip(concepts, label_files, strict=True)}
        # The 21 most frequent concepts (ties by name), then alphabetical as columns.
        by_frequency = sorted(concepts, key=lambda concept: (-int(columns[concept].sum()), concept))
        kept = tuple(sorted(by_frequency[:NUM_CONCEPTS]))
        labels = np.stack([columns[concept] for concept in kept], axis=1)
        labelled = labels.any(axis=1)
        paths = [image_path(line) for line, keep in zip(lines, labelled, strict=True) if keep]
        origins = [f"Imagelist.txt:{row + 1}" for row in np.flatnonzero(labelled)]
        faults = RowFaults(origins)
        faults.add("duplicate", duplicates_after_first(paths))
        notes = []
        if kept != PUBLISHED_CONCEPTS:
            notes.append(
                Finding("warning", "classes", f"the 21 most frequent concepts here differ from the usual NUS-WIDE-21: {', '.join(kept)}")
            )
        counts = {"images listed": len(lines), "unlabelled images dropped": int((~labelled).sum())}
        return ImageTable(paths, labels[labelled], faults, classes=kept, counts=counts, notes=notes)
