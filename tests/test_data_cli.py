"""`hashbench data check/get` and `run` on user-supplied datasets, end to end through the CLI."""

from __future__ import annotations

import json
import os
import textwrap
import urllib.error

import numpy as np
import pytest
from dataset_fixtures import plant, write_cifar10, write_list_dataset

FAULT_MESSAGES = {
    "missing": "1 rows whose image file is missing",
    "unreadable": "1 rows whose image cannot be decoded",
    "zero_labels": "1 rows with all-zero labels",
    "duplicate": "1 rows repeating a path already listed in the same file",
    "escaping": "1 rows whose path escapes the dataset folder",
    "label_width": "1 rows with the wrong number of labels",
    "leak": "1 rows of database.txt or train.txt whose image is also a query",
    "conflict": "1 rows listing an image with other labels than its first listing",
}


@pytest.fixture
def nuswide_root(tmp_path):
    write_list_dataset(tmp_path / "nuswide", num_classes=21, database=30, test=8, train=10)
    return tmp_path


def test_check_passes_clean_list_files(invoke, nuswide_root):
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 0, result.output
    assert "OK: nuswide is ready to run." in result.output
    assert "read from the list files" in result.output
    assert "protocol lists draws: query 8, database 30, train 10" in result.output
    # Counts against the published protocol are reported, as warnings only.
    assert "warning: test.txt lists 8 usable images; the published protocol has 2100" in result.output


@pytest.mark.parametrize("fault", sorted(FAULT_MESSAGES))
def test_check_catches_each_planted_fault(invoke, nuswide_root, fault):
    victim = plant(nuswide_root, fault)
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1, result.output
    assert f"error: {FAULT_MESSAGES[fault]}" in result.output
    assert "FAILED: 1 problem(s)" in result.output
    assert "--drop-bad-rows" in result.output
    if fault in ("missing", "unreadable", "zero_labels", "label_width"):
        assert "database.txt:" in result.output and victim in result.output  # the row is listed
    if fault == "escaping":
        assert "../outside.jpg" in result.output


def test_check_lists_every_bad_row_with_a_count(invoke, nuswide_root):
    folder = nuswide_root / "nuswide"
    lines = (folder / "test.txt").read_text().splitlines()
    for line in lines[:3]:
        (folder / line.split()[0]).unlink()
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1
    assert "error: 3 rows whose image file is missing" in result.output
    for number, line in enumerate(lines[:3], start=1):
        assert f"test.txt:{number}: {line.split()[0]}" in result.output


def test_no_decode_skips_the_decoding(invoke, nuswide_root):
    plant(nuswide_root, "unreadable")
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists", "--no-decode")
    assert result.exit_code == 0, result.output


def test_check_reports_a_protocol_the_files_cannot_support(invoke, nuswide_root):
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root)
    assert result.exit_code == 1
    assert "the protocol cannot be drawn from these files" in result.output
    assert "the protocol needs 100" in result.output


def test_check_cifar10(invoke, tmp_path):
    missing = invoke("data", "check", "cifar10", "--data-root", tmp_path)
    assert missing.exit_code == 1 and "hashbench data get cifar10" in missing.output
    write_cifar10(tmp_path)
    result = invoke("data", "check", "cifar10", "--data-root", tmp_path, "--protocol", "tbh-code")
    assert result.exit_code == 0, result.output
    assert "the train part has 60 images; the official release has 50000" in result.output
    assert "protocol tbh-code draws: query 40, database 60, train 60" in result.output


def test_check_usage_errors(invoke, tmp_path):
    unknown = invoke("data", "check", "cifar100", "--data-root", tmp_path)
    assert unknown.exit_code == 2 and "unknown dataset 'cifar100'" in unknown.output
    protocol = invoke("data", "check", "cifar10", "--data-root", tmp_path, "--protocol", "paper")
    assert protocol.exit_code == 2 and "has no protocol 'paper'" in protocol.output


def test_get_offline_is_one_clear_line(invoke, tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    result = invoke("data", "get", "cifar10", "--data-root", tmp_path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "cannot download cifar10 ([Errno -3] Temporary failure in name resolution)" in lines[0]
    assert "cifar-10-batches-py/" in lines[0]


def test_get_when_present_and_for_datasets_that_cannot_be_downloaded(invoke, tmp_path):
    write_cifar10(tmp_path)
    present = invoke("data", "get", "cifar10", "--data-root", tmp_path)
    assert present.exit_code == 0 and "already present" in present.output
    coco = invoke("data", "get", "coco", "--data-root", tmp_path)
    assert coco.exit_code == 2 and "coco cannot be downloaded by hashbench" in coco.output


IMAGE_METHOD = textwrap.dedent(
    '''
    import numpy as np

    from hashbench.method import HashingMethod
    from hashbench.registry import register_method


    @register_method
    class MeanColour(HashingMethod):
        """Thresholds a few pixels of the images at the training median: an images-input method."""

        name = "pixelbits"
        input = "images"

        def _pixels(self, split):
            flat = split.images().reshape(len(split), -1).astype(np.float32)
            return flat[:, :: flat.shape[1] // self.bits][:, : self.bits]

        def fit(self, train, val=None):
            self.median = np.median(self._pixels(train), axis=0)

        def encode(self, split):
            return self._pixels(split) > self.median
    '''
)


@pytest.fixture
def image_plugin(tmp_path):
    path = tmp_path / "pixelbits.py"
    path.write_text(IMAGE_METHOD)
    return path


def run_args(root, results, plugin, *extra):
    return ("--plugin", plugin, "run", "--methods", "pixelbits", "--datasets", "nuswide", "--protocol", "lists",
            "--bits", "4", "--data-root", root, "--results", results, "--cache", root / "cache", *extra)  # fmt: skip


def test_run_refuses_bad_files_unless_told_to_drop_them(invoke, nuswide_root, results, image_plugin):
    plant(nuswide_root, "zero_labels")
    refused = invoke(*run_args(nuswide_root, results, image_plugin))
    assert refused.exit_code == 2
    assert "rows with all-zero labels" in refused.output and "--drop-bad-rows" in refused.output
    assert not results.exists()
    done = invoke(*run_args(nuswide_root, results, image_plugin, "--drop-bad-rows"))
    assert done.exit_code == 0, done.output
    (record_path,) = list(results.glob("runs/*/run.json"))
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok"
    assert record["data"]["dropped_rows"] == 1
    assert record["data"]["dropped_by_reason"] == {"zero_labels": 1}
    assert record["split"]["sizes"] == {"query": 8, "database": 29, "train": 10}
    # The images were decoded once into the cache under --cache.
    assert list((nuswide_root / "cache" / "nuswide").glob("images-224px.npy"))


def test_feature_methods_get_cached_backbone_features(invoke, nuswide_root, results, monkeypatch):
    """LSH on a dataset without feature vectors: backbone features, cached under --cache."""
    import torch

    import hashbench.toolkit.backbone_features
    import hashbench.toolkit.backbones

    class TinyBackbone(torch.nn.Module):
        feature_dim = 6

        def forward(self, images):
            pooled = images.mean(dim=(2, 3))
            return torch.cat([pooled, pooled**2], dim=1)

    built = []

    def factory(backbone, weights, pretrained, image_shape):
        def build():
            built.append(backbone)
            return TinyBackbone(), lambda images, device: images.to(device).permute(0, 3, 1, 2).float() / 255.0

        return build

    monkeypatch.setattr(hashbench.toolkit.backbone_features, "_default_factory", factory)
    monkeypatch.setattr(hashbench.toolkit.backbones, "weights_id", lambda *args, **kwargs: "tiny-test")
    args = ("run", "--methods", "lsh", "--datasets", "nuswide", "--protocol", "lists", "--bits", "4,6",
            "--data-root", nuswide_root, "--results", results, "--cache", nuswide_root / "cache")  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    records = [json.loads(path.read_text()) for path in results.glob("runs/*/run.json")]
    assert len(records) == 2 and all(record["status"] == "ok" for record in records)
    assert built == ["vgg16"]  # computed once for both code lengths
    (cached,) = (nuswide_root / "cache" / "features").glob("nuswide-*-vgg16-tiny-test.npy")
    assert np.load(cached).shape == (38, 6)


# -- hollow list files, symbolic links out of the folder, every bad row, where files go ---------


@pytest.mark.parametrize("file_name", ["test.txt", "database.txt", "train.txt"])
def test_an_empty_list_file_is_not_ready_to_run(invoke, nuswide_root, results, image_plugin, file_name):
    (nuswide_root / "nuswide" / file_name).write_text("")
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1, result.output
    assert "OK" not in result.output
    assert f"protocol lists: {file_name} lists no usable images" in result.output
    assert "--protocol" in result.output.splitlines()[-1]
    refused = invoke(*run_args(nuswide_root, results, image_plugin))
    assert refused.exit_code == 2, refused.output
    assert f"{file_name} lists no usable images" in refused.output
    assert not list(results.glob("runs/*"))  # refused before any training


def test_a_list_file_of_bad_rows_only_leaves_nothing_to_query(invoke, nuswide_root):
    folder = nuswide_root / "nuswide"
    for line in (folder / "test.txt").read_text().splitlines():
        (folder / line.split()[0]).unlink()
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1
    assert "error: 8 rows whose image file is missing" in result.output
    assert "test.txt lists no usable images" in result.output


def test_a_split_with_nothing_in_it_is_an_error_for_any_protocol(tmp_path):
    from hashbench.data import DatasetArrays
    from hashbench.data.checks import check_dataset
    from hashbench.data.splits import SplitProtocol

    class NoTrain(SplitProtocol):
        name, description, topk = "notrain", "draws no training images", 5

        def draw(self, arrays, rng):
            return {"query": np.arange(2), "database": np.arange(2, 10), "train": np.arange(0)}

    class Tiny:
        name, classes, protocols = "tiny", ("a", "b"), {"notrain": NoTrain()}

        def protocol(self, name=None):
            return self.protocols["notrain"]

        def load(self, root, **options):
            labels = np.zeros((10, 2), dtype=bool)
            labels[np.arange(10), np.arange(10) % 2] = True
            return DatasetArrays(labels=labels, features=np.zeros((10, 3), dtype=np.float32))

    report = check_dataset(Tiny(), tmp_path)
    assert not report.ok
    assert "no train images, and a run needs query, database and train images" in report.errors[0].message


def _link_out(nuswide_root, relative, target):
    path = nuswide_root / "nuswide" / relative
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def test_symbolic_links_out_of_the_folder_are_escaping_rows(invoke, nuswide_root, results, image_plugin, monkeypatch):
    import hashbench.data.images

    outside = nuswide_root / "elsewhere"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes((nuswide_root / "nuswide" / "images" / "00002.jpg").read_bytes())
    database = (nuswide_root / "nuswide" / "database.txt").read_text().splitlines()
    image_row = database[0].split()[0]
    _link_out(nuswide_root, image_row, secret)  # an image file that is a link out
    _link_out(nuswide_root, "linked", outside)  # a folder that is a link out
    database.append("linked/secret.jpg " + " ".join(["1"] + ["0"] * 20))
    (nuswide_root / "nuswide" / "database.txt").write_text("\n".join(database) + "\n")
    # A link that stays inside the folder is fine.
    _link_out(nuswide_root, "images/alias.jpg", nuswide_root / "nuswide" / "images" / "00003.jpg")
    (nuswide_root / "nuswide" / "train.txt").write_text(
        (nuswide_root / "nuswide" / "train.txt").read_text() + "images/alias.jpg " + " ".join(["0", "1"] + ["0"] * 19) + "\n"
    )
    opened = []
    real_decode = hashbench.data.images.decode_image
    monkeypatch.setattr(hashbench.data.images, "decode_image", lambda path, size=224: opened.append(os.path.realpath(path)) or real_decode(path, size))
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1, result.output
    assert "error: 2 rows whose path escapes the dataset folder" in result.output
    assert f"database.txt:1: {image_row} (a symbolic link to {secret})" in result.output
    assert f"database.txt:31: linked/secret.jpg (a symbolic link to {secret})" in result.output
    assert "alias.jpg" not in result.output
    assert str(secret) not in opened  # never opened through the links
    assert "--drop-bad-rows" in result.output.splitlines()[-1]
    refused = invoke(*run_args(nuswide_root, results, image_plugin))
    assert refused.exit_code == 2 and "rows whose path escapes the dataset folder" in refused.output


def test_a_dataset_folder_that_is_itself_a_link_is_fine(invoke, nuswide_root, tmp_path):
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    (elsewhere / "nuswide").symlink_to(nuswide_root / "nuswide")
    result = invoke("data", "check", "nuswide", "--data-root", elsewhere, "--protocol", "lists")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("file_name", ["test.txt", "database.txt"])
def test_a_list_file_that_links_out_is_refused_unread(invoke, nuswide_root, tmp_path, file_name):
    system_file = tmp_path / "passwd"
    system_file.write_text("root:x:0:0:root:/root:/bin/bash\n")
    _link_out(nuswide_root, file_name, system_file)
    result = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists")
    assert result.exit_code == 1
    assert f"{file_name} is a symbolic link leading out of the dataset folder" in result.output
    assert "root:x" not in result.output


def test_all_lists_every_bad_row(invoke, nuswide_root):
    folder = nuswide_root / "nuswide"
    lines = (folder / "database.txt").read_text().splitlines()
    gone = {line.split()[0] for line in lines[:25]}
    for path in gone:
        (folder / path).unlink()
    in_train = [line.split()[0] for line in (folder / "train.txt").read_text().splitlines() if line.split()[0] in gone]
    count = 25 + len(in_train)  # train images are database images too
    default = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists", "--no-decode")
    assert f"error: {count} rows whose image file is missing" in default.output
    assert f"... and {count - 20} more (--all lists every one)" in default.output
    assert f"database.txt:21: {lines[20].split()[0]}" not in default.output
    every = invoke("data", "check", "nuswide", "--data-root", nuswide_root, "--protocol", "lists", "--no-decode", "--all")
    assert "more" not in every.output
    for number, line in enumerate(lines[:25], start=1):
        assert f"database.txt:{number}: {line.split()[0]}" in every.output
    assert sum("train.txt:" in row and row.split()[-1] in in_train for row in every.output.splitlines()) == len(in_train)


def test_missing_official_files_say_where_they_go(invoke, tmp_path):
    result = invoke("data", "check", "cifar10", "--data-root", tmp_path)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("FAILED") and "--drop-bad-rows" not in last
    assert f"The files go under the data root {tmp_path}" in last and "cifar-10-batches-py/" in last
    assert f"`hashbench data get cifar10 --data-root {tmp_path}`" in last
    coco = invoke("data", "check", "coco", "--data-root", tmp_path)
    last = coco.output.strip().splitlines()[-1]
    assert "<data root>/coco" in last and "data get" not in last and "--drop-bad-rows" not in last
