"""Split protocols and split manifests.

A split is drawn from (dataset, protocol, split seed) and written as a JSON manifest of
integer index lists into the dataset's canonical order, with their content hash. Every
method of a benchmark evaluates on the same manifest; the run record names it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hashbench.data import DatasetArrays
from hashbench.errors import UserError
from hashbench.storage import atomic

SPLIT_NAMES = ("query", "database", "train", "val")


class SplitProtocol:
    """A named way of drawing query / database / train (/ val) from a dataset."""

    name: str
    description: str
    topk: int  # the retrieval cut-off k of mAP@k
    # Bump when the draw or the cut-off changes: runs recorded under another version are stale.
    version: str = "1"

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def draw_from_seed(self, arrays: DatasetArrays, split_seed: int) -> dict[str, np.ndarray]:
        """The split of a split seed: :meth:`draw` with numpy's PCG64 generator seeded with it.

        A protocol that reproduces a released script's own random draw overrides this."""
        return self.draw(arrays, np.random.default_rng(split_seed))

    def summary(self) -> str:
        """One line for the run record: the description and the cut-off."""
        return f"{self.description}; mAP@{self.topk}"


def sample_per_class(
    labels: np.ndarray, pool: np.ndarray, per_class: int, rng: np.random.Generator, what: str
) -> np.ndarray:
    """Draw ``per_class`` items of each class from ``pool``.

    Multi-label: for each class in turn, draw among the pool items carrying it that are not
    drawn yet (the community's protocol for NUS-WIDE). Single-label reduces to the usual
    stratified draw.
    """
    available = np.zeros(labels.shape[0], dtype=bool)
    available[pool] = True
    chosen: list[np.ndarray] = []
    for class_index in range(labels.shape[1]):
        candidates = np.flatnonzero(available & labels[:, class_index])
        if candidates.size < per_class:
            carrying = int(np.count_nonzero(labels[:, class_index]))
            if carrying == 0:
                raise UserError(
                    f"{what}: class {class_index} is empty (no item of the {labels.shape[0]} carries it; labels have "
                    f"{labels.shape[1]} classes), and the protocol draws {per_class} items of each class; class ids "
                    "must be contiguous 0..C-1: remap them (e.g. numpy.unique(ids, return_inverse=True)[1]), or drop "
                    "the empty columns of multi-hot labels"
                )
            raise UserError(
                f"{what}: class {class_index} has only {candidates.size} eligible items, "
                f"the protocol needs {per_class} ({carrying} items carry class {class_index}; those drawn "
                "already or outside the pool are not eligible)"
            )
        picked = rng.choice(candidates, size=per_class, replace=False)
        available[picked] = False
        chosen.append(picked)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def sample_count(pool: np.ndarray, count: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if pool.size < count:
        raise UserError(f"{what}: needs {count} items but only {pool.size} are eligible")
    return np.sort(rng.choice(pool, size=count, replace=False))


@dataclass(frozen=True)
class SampledProtocol(SplitProtocol):
    """Queries drawn from the pool, the rest is the database, train (and val) drawn from it.

    Each of query/train/val is given either per class (``*_per_class``) or as a total
    (``*_size``). ``pool`` restricts everything to an official partition (a ``groups`` key).
    """

    name: str
    description: str
    topk: int
    query_per_class: int | None = None
    query_size: int | None = None
    train_per_class: int | None = None
    train_size: int | None = None
    val_per_class: int | None = None
    val_size: int | None = None
    pool: str | None = None
    version: str = "1"

    def _sample(self, arrays, pool, per_class, size, rng, what) -> np.ndarray:
        if per_class is not None:
            return sample_per_class(arrays.labels, pool, per_class, rng, what)
        if size is not None:
            return sample_count(pool, size, rng, what)
        raise ValueError(f"protocol {self.name}: {what} needs a per-class count or a size")

    def draw(self, arrays: DatasetArrays, rng: np.random.Generator) -> dict[str, np.ndarray]:
        pool = np.arange(len(arrays)) if self.pool is None else np.sort(arrays.groups[self.pool])
        query = self._sample(arrays, pool, self.query_per_class, self.query_size, rng, "query")
        database = np.setdiff1d(pool, query)
        train = self._sample(arrays, database, self.train_per_class, self.train_size, rng, "train")
        splits = {"query": query, "database": database, "train": train}
        if self.val_per_class is not None or self.val_size is not None:
            rest = np.setdiff1d(database, train)
            splits["val"] = self._sample(arrays, rest, self.val_per_class, self.val_size, rng, "val")
        return splits

    def summary(self) -> str:
        def part(per_class, size):
            return f"{per_class}/class" if per_class is not None else str(size)

        text = (
            f"query {part(self.query_per_class, self.query_size)}, database = rest, "
            f"train {part(self.train_per_class, self.train_size)} from database"
        )
        if self.val_per_class is not None or self.val_size is not None:
            text += f", val {part(self.val_per_class, self.val_size)} from database (disjoint from train)"
        return f"{text}; mAP@{self.topk}"


def with_validation(
    standard: SampledProtocol, val_description: str, *, val_per_class: int | None = None, val_size: int | None = None
) -> dict[str, SampledProtocol]:
    """``standard`` and its ``standard-val`` twin: the same draw plus a validation split.

    The validation split is drawn last, so for one split seed both protocols have the same
    query, database and train sets.
    """
    with_val = replace(
        standard,
        name="standard-val",
        description=f"standard plus {val_description}",
        val_per_class=val_per_class,
        val_size=val_size,
    )
    return {"standard": standard, "standard-val": with_val}


def content_hash(splits: dict[str, np.ndarray]) -> str:
    canonical = {name: [int(i) for i in splits[name]] for name in SPLIT_NAMES if name in splits}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def labels_digest(labels: np.ndarray) -> str:
    """SHA-256 of a multi-hot label matrix (its shape and bits): relevance is decided by it, so
    runs whose labels differ are never taken for runs of the same data."""
    matrix = np.ascontiguousarray(np.asarray(labels, dtype=bool))
    digest = hashlib.sha256(json.dumps(list(matrix.shape)).encode())
    digest.update(np.packbits(matrix, axis=None).tobytes())
    return digest.hexdigest()


@dataclass
class SplitManifest:
    dataset: str
    protocol: str
    split_seed: int
    num_items: int
    topk: int
    splits: dict[str, np.ndarray]
    hash: str

    @property
    def file_name(self) -> str:
        return f"{self.dataset}-{self.protocol}-split{self.split_seed}-{self.hash[:12]}.json"

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "split_seed": self.split_seed,
            "num_items": self.num_items,
            "topk": self.topk,
            "hash": self.hash,
            "sizes": {name: int(indices.size) for name, indices in self.splits.items()},
        }
        for name in SPLIT_NAMES:
            if name in self.splits:
                value[name] = [int(i) for i in self.splits[name]]
        return value

    def save(self, folder: Path) -> Path:
        """Write the manifest, unless an identical one is there; a damaged or edited file of
        this name (the name holds this split's hash) is rewritten, an edit of a field outside
        the hashed lists (the cut-off ``topk``) included."""
        path = Path(folder) / self.file_name
        if path.is_file():
            try:
                if SplitManifest.load(path).to_json() == self.to_json():
                    return path
            except UserError:
                pass  # unreadable or not matching its own hash: rewrite it below
        atomic.write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> SplitManifest:
        try:
            value = json.loads(Path(path).read_text())
            splits = {name: np.asarray(value[name], dtype=np.int64) for name in SPLIT_NAMES if name in value}
            if any(indices.ndim != 1 for indices in splits.values()):
                raise ValueError("index lists must be flat lists of integers")
            manifest = cls(
                dataset=value["dataset"],
                protocol=value["protocol"],
                split_seed=int(value["split_seed"]),
                num_items=int(value["num_items"]),
                topk=int(value["topk"]),
                splits=splits,
                hash=value["hash"],
            )
            matches = content_hash(splits) == manifest.hash
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
            raise UserError(f"split manifest {path} is unreadable ({error}); delete it to redraw") from error
        if not matches:
            raise UserError(f"split manifest {path} does not match its content hash; delete it to redraw")
        return manifest


def check_manifest(manifest: SplitManifest, dataset: str, protocol: SplitProtocol, split_seed: int, num_items: int) -> None:
    """Refuse a saved manifest that is not this split's: another dataset, protocol, split seed
    or size, or a cut-off other than the protocol's (the cut-off is the protocol's, whose
    version covers it; the manifest only repeats it)."""
    expected = (dataset, protocol.name, split_seed, num_items, protocol.topk)
    found = (manifest.dataset, manifest.protocol, manifest.split_seed, manifest.num_items, manifest.topk)
    if found != expected:
        raise UserError(
            f"split manifest {manifest.file_name} is for {manifest.dataset}/{manifest.protocol} split seed "
            f"{manifest.split_seed} with {manifest.num_items} items and mAP@{manifest.topk}, but "
            f"{dataset}/{protocol.name} split seed {split_seed} has {num_items} items and mAP@{protocol.topk}: "
            "the data or the manifest changed since the split was drawn"
        )


def check_disjoint(splits: dict[str, np.ndarray], num_items: int, where: str) -> None:
    """Protocol invariants every manifest must satisfy."""
    query, database, train = splits["query"], splits["database"], splits["train"]
    for name, indices in splits.items():
        if indices.size and (indices.min() < 0 or indices.max() >= num_items):
            raise ValueError(f"{where}: {name} index out of range")
        if np.unique(indices).size != indices.size:
            raise ValueError(f"{where}: {name} has duplicate indices")
    if np.intersect1d(query, database).size:
        raise ValueError(f"{where}: query and database overlap")
    if np.intersect1d(query, train).size:
        raise ValueError(f"{where}: training items leak into the query set")
    if "val" in splits:
        if np.intersect1d(splits["val"], query).size or np.intersect1d(splits["val"], train).size:
            raise ValueError(f"{where}: val overlaps query or train")


def draw_split(dataset_name: str, protocol: SplitProtocol, arrays: DatasetArrays, split_seed: int) -> SplitManifest:
    """Draw the split deterministically from the split seed."""
    # The draw depends only on the split seed: the same seed gives the same split for every
    # method and every machine (numpy's generators are platform independent).
    drawn = protocol.draw_from_seed(arrays, split_seed)
    splits = {name: np.sort(np.asarray(indices, dtype=np.int64)) for name, indices in drawn.items()}
    check_disjoint(splits, len(arrays), f"{dataset_name}/{protocol.name}")
    return SplitManifest(
        dataset=dataset_name,
        protocol=protocol.name,
        split_seed=split_seed,
        num_items=len(arrays),
        topk=protocol.topk,
        splits=splits,
        hash=content_hash(splits),
    )
