"""Shared parts of the small datasets held in memory with an official train/test partition
(CIFAR-10, MNIST, Fashion-MNIST): their checks and their download through torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from hashbench.data import DatasetArrays, HashingDataset
from hashbench.data.checks import Finding, Inspection, RowFaults, check_labels
from hashbench.errors import UserError


def one_hot(class_ids: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    class_ids = np.asarray(class_ids, dtype=np.int64)
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise UserError(f"{where}: class ids must lie in 0..{num_classes - 1}; found {class_ids.min()}..{class_ids.max()}")
    labels = np.zeros((class_ids.size, num_classes), dtype=bool)
    labels[np.arange(class_ids.size), class_ids] = True
    return labels


class OfficialSplitDataset(HashingDataset):
    """A dataset of in-memory arrays whose ``groups`` are its official ``train`` and ``test`` parts."""

    official_sizes: ClassVar[dict[str, int]] = {}
    torchvision_class: ClassVar[str] = ""  # the torchvision.datasets class that downloads it
    layout_help: ClassVar[str] = ""  # where the files go (load errors)
    manual_help: ClassVar[str] = ""  # how to get them without `data get` (download errors)

    def inspect(self, root: Path, *, decode: bool = True) -> Inspection:
        arrays = self.load(root)
        counts = {part: int(indices.size) for part, indices in arrays.groups.items()}
        counts["classes"] = arrays.labels.shape[1]
        findings = []
        for part, expected in self.official_sizes.items():
            if counts.get(part) != expected:
                findings.append(
                    Finding("warning", "count", f"the {part} part has {counts.get(part)} images; the official release has {expected}")
                )
        faults = RowFaults([f"{part} image {position}" for part, indices in arrays.groups.items() for position in range(indices.size)])
        check_labels(arrays.labels, faults)
        findings = faults.findings([""] * len(faults)) + findings
        return Inspection(counts=counts, findings=findings, arrays=arrays)

    def download(self, root: Path) -> Path:
        """Download through torchvision into the layout :meth:`load` reads; UserError when offline."""
        import torchvision.datasets

        root = Path(root)
        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        try:
            for train in (True, False):
                dataset_class(root=str(root), train=train, download=True)
        except Exception as error:  # URLError, HTTPError, OSError, RuntimeError (checksum) ...
            reason = " ".join(str(getattr(error, "reason", error)).split()) or type(error).__name__
            reason = reason if len(reason) <= 160 else reason[:157] + "..."
            raise UserError(f"cannot download {self.name} ({reason}); {self.manual_help or self.layout_help}") from error
        return root

    def _arrays(self, images: np.ndarray, class_ids: np.ndarray, train_count: int, where: str, **extra) -> DatasetArrays:
        labels = one_hot(class_ids, len(self.classes), where)
        groups = {"train": np.arange(train_count, dtype=np.int64), "test": np.arange(train_count, len(labels), dtype=np.int64)}
        return DatasetArrays(labels=labels, images=images, groups=groups, **extra)
