"""Hostile labels: class ids that would make a terabyte multi-hot matrix, NaN labels from a
dataset plugin, a class missing from the ids, features shorter than labels, a file stem
too long to name files. Each is one clear line through the CLI, before anything is fitted.

The commands run in subprocesses under an address-space limit (``RLIMIT_AS``): the code
before these checks allocated gigabytes to terabytes for such labels, which under the limit
fails at once (a traceback) instead of exhausting the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MEMORY_LIMIT = 6 * 2**30  # far below what the unchecked labels need (14 GiB to 12 TiB)


def hashbench(cwd: Path, *args) -> tuple[int, str]:
    """``hashbench ARGS`` in a subprocess with at most MEMORY_LIMIT of address space: (exit
    status, stdout and stderr together)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = {key: value for key, value in os.environ.items() if not key.startswith("HASHBENCH_")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run(
        [sys.executable, "-m", "hashbench", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def one_error_line(output: str) -> str:
    """The single line of a refused command (`run`, `eval`): no traceback, nothing else."""
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    return lines[0]


def check_error_line(output: str) -> str:
    """The single error of a failed `data check` (its report has other lines)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "FAILED: 1 problem(s)" in output, output
    return errors[0]


def run_args(dataset: str, results: Path) -> tuple[str, ...]:
    return ("run", "--methods", "lsh", "--bits", "16", "--datasets", dataset, "--results", str(results))


def vectors(rows: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)


# -- class ids as large as a sentinel, 10^7 or 10^9: refused before the matrix is made -------------

CLASS_IDS = {
    # uint32 with 0xFFFFFFFF marking "no label": 4,294,967,296 columns (11.7 TiB for 3,000 rows)
    "uint32-sentinel": (
        lambda rows: np.where(np.arange(rows) < 5, 0xFFFFFFFF, np.arange(rows) % 4).astype(np.uint32),
        "4,294,967,295", "5 distinct ids",
    ),
    "ids-1e7": (lambda rows: (np.arange(rows) % 4) * 10**7, "30,000,000", "4 distinct ids"),
    "ids-1e9": (lambda rows: (np.arange(rows) % 4) * 10**9, "3,000,000,000", "4 distinct ids"),
}


@pytest.fixture(params=sorted(CLASS_IDS))
def sparse_ids(request, tmp_path):
    make, top, distinct = CLASS_IDS[request.param]
    path = tmp_path / f"{request.param}.npz"
    np.savez(path, features=vectors(3000), labels=make(3000))
    return request.param, path, top, distinct


def test_run_refuses_absurd_class_ids_of_a_features_file(sparse_ids, tmp_path):
    kind, path, top, distinct = sparse_ids
    status, output = hashbench(tmp_path, *run_args(f"features:{path}", tmp_path / "results"))
    line = one_error_line(output)
    assert status == 2
    assert f"features file {path}, array 'labels'" in line
    assert f"class ids run up to {top}" in line and distinct in line
    assert "class ids must be 0..C-1" in line and "numpy.unique" in line and "-1" in line
    assert ("largest uint32" in line) == (kind == "uint32-sentinel")
    assert not (tmp_path / "results" / "runs").exists()  # nothing ran


def test_data_check_refuses_absurd_class_ids_of_a_features_file(sparse_ids, tmp_path):
    _, path, top, distinct = sparse_ids
    status, output = hashbench(tmp_path, "data", "check", f"features:{path}")
    line = check_error_line(output)
    assert status == 1
    assert f"class ids run up to {top}" in line and distinct in line and "0..C-1" in line
    # a labels problem, not a missing file: no hint about where files go
    assert "The files go under the data root" not in output


@pytest.mark.parametrize("kind", sorted(CLASS_IDS))
def test_eval_refuses_absurd_class_ids(kind, tmp_path):
    make, top, _ = CLASS_IDS[kind]
    rng = np.random.default_rng(0)
    files = {
        "query-codes": rng.integers(0, 2, (50, 16)).astype(np.uint8),
        "database-codes": rng.integers(0, 2, (500, 16)).astype(np.uint8),
        "query-labels": np.arange(50) % 4,  # fine: the database's ids are the absurd ones
        "database-labels": make(500),
    }
    args = []
    for option, array in files.items():
        np.save(tmp_path / f"{option}.npy", array)
        args += [f"--{option}", tmp_path / f"{option}.npy"]
    status, output = hashbench(tmp_path, "eval", *args, "--json")
    line = one_error_line(output)
    assert status == 2
    assert f"database labels ({tmp_path / 'database-labels.npy'})" in line
    assert f"class ids run up to {top}" in line
    # query and database ids share one numbering: remapped together
    assert "remap the query and database ids together" in line


# -- a dataset plugin's hostile labels and features ------------------------------------------------

PLUGIN = '''
import numpy as np
from hashbench.data import DatasetArrays, HashingDataset
from hashbench.registry import register_dataset
from hashbench.data.splits import SampledProtocol

PER_CLASS = {"standard": SampledProtocol("standard", "5 queries and 10 train items per class", 10,
                                         query_per_class=5, train_per_class=10)}
VECTORS = np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32)


def multi_hot(ids, classes):
    labels = np.zeros((len(ids), classes), dtype=bool)
    labels[np.arange(len(ids)), ids] = True
    return labels


@register_dataset
class NaNLabels(HashingDataset):
    name = "nan-labels"
    protocols = PER_CLASS

    def load(self, root, **options):
        labels = multi_hot(np.arange(120) % 3, 3).astype(np.float32)
        labels[[4, 9]] = np.nan
        return DatasetArrays(labels=labels, features=VECTORS)


@register_dataset
class GapMultiHot(HashingDataset):
    name = "gap-multi-hot"  # class ids {0, 2} made multi-hot: column 1 is empty
    protocols = PER_CLASS

    def load(self, root, **options):
        return DatasetArrays(labels=multi_hot(np.arange(120) % 2 * 2, 3), features=VECTORS)


@register_dataset
class GapClassIds(HashingDataset):
    name = "gap-class-ids"  # the same as class ids (N,)
    protocols = PER_CLASS

    def load(self, root, **options):
        return DatasetArrays(labels=np.arange(120) % 2 * 2, features=VECTORS)


@register_dataset
class ShortFeatures(HashingDataset):
    name = "short-features"
    protocols = PER_CLASS

    def load(self, root, **options):
        return DatasetArrays(labels=multi_hot(np.arange(120) % 3, 3), features=VECTORS[:100])
'''


@pytest.fixture
def plugin(tmp_path) -> Path:
    path = tmp_path / "hostile_datasets.py"
    path.write_text(PLUGIN)
    return path


def test_nan_labels_of_a_plugin_are_one_line_naming_the_dataset_and_rows(plugin, tmp_path):
    status, output = hashbench(tmp_path, "--plugin", plugin, *run_args("nan-labels", tmp_path / "results"))
    line = one_error_line(output)
    assert status == 2
    assert "dataset nan-labels (hashbench_plugin_hostile_datasets.NaNLabels.load)" in line
    assert "NaN or infinite values in 2 rows (4, 9)" in line and "multi-hot matrix (N, classes) of 0/1" in line
    status, output = hashbench(tmp_path, "--plugin", plugin, "data", "check", "nan-labels")
    assert status == 1
    assert "NaN or infinite values in 2 rows (4, 9)" in check_error_line(output)


@pytest.mark.parametrize("dataset", ["gap-multi-hot", "gap-class-ids"])
def test_a_class_missing_from_the_ids_is_named_with_the_fix(plugin, tmp_path, dataset):
    status, output = hashbench(tmp_path, "--plugin", plugin, *run_args(dataset, tmp_path / "results"))
    line = one_error_line(output)
    assert status == 2
    assert "class 1 is empty (no item of the 120 carries it; labels have 3 classes)" in line
    assert "class ids must be contiguous 0..C-1" in line and "class 0" not in line


def test_features_shorter_than_labels_are_refused_at_load(plugin, tmp_path):
    status, output = hashbench(tmp_path, "--plugin", plugin, *run_args("short-features", tmp_path / "results"))
    line = one_error_line(output)
    assert status == 2
    assert "dataset short-features" in line and "features have 100 rows but labels have 120" in line
    assert not (tmp_path / "results" / "runs").exists()  # refused before any cell
    status, output = hashbench(tmp_path, "--plugin", plugin, "data", "check", "short-features")
    assert status == 1
    assert "features have 100 rows but labels have 120" in check_error_line(output)


# -- a file stem too long to name the split manifest -----------------------------------------------


def test_a_long_file_stem_gives_a_short_dataset_name_that_runs(tmp_path):
    stem = "embeddings-" + "x" * 229  # 240 characters: with the manifest's suffix, over 255
    path = tmp_path / f"{stem}.npz"
    np.savez(path, features=vectors(1100), labels=np.arange(1100) % 4)
    results = tmp_path / "results"
    status, output = hashbench(tmp_path, *run_args(f"features:{path}", results))
    assert status == 0, output
    assert "Traceback" not in output
    (manifest,) = (results / "splits").iterdir()
    (record,) = results.glob("runs/*/run.json")
    name = json.loads(record.read_text())["dataset"]
    assert len(name) <= 64 and name.startswith("embeddings-xxx") and manifest.name.startswith(f"{name}-standard-")
    assert len(manifest.name) < 255

    from hashbench.datasets.features import Features

    # the name is the same for the same file, and differs for stems sharing the first 55 characters
    assert Features.default_name(str(path)) == name
    assert Features.default_name(str(tmp_path / f"{stem}y.npz")) != name
    assert Features.default_name("short.npz") == "short"
