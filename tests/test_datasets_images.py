"""NUS-WIDE and MS-COCO loaders: list files and raw annotations, on tiny JPEG datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataset_fixtures import plant, write_coco, write_list_dataset, write_nuswide
from PIL import Image

from hashbench.data.images import ImageStore
from hashbench.data.splits import draw_split
from hashbench.datasets.coco import COCO
from hashbench.datasets.nuswide import NUSWide, image_path
from hashbench.errors import UserError


def test_nuswide_raw_keeps_the_21_most_frequent_concepts_and_drops_unlabelled(tmp_path):
    written = write_nuswide(tmp_path, images=50)
    arrays = NUSWide().load(tmp_path, cache_dir=tmp_path / "cache")
    assert isinstance(arrays.images, ImageStore)
    assert arrays.images.paths == written["paths"]  # Windows paths of Imagelist.txt → Flickr/...
    assert arrays.labels.dtype == bool and np.array_equal(arrays.labels, written["labels"])
    assert arrays.labels.any(axis=1).all()
    assert arrays.provenance["unlabelled images dropped"] == 2
    assert arrays.provenance["source"] == "raw annotations"
    assert "classes" not in arrays.provenance  # the derived concepts are the usual 21


def test_nuswide_image_list_paths():
    assert image_path("C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg") == "Flickr/actor/0001_2124494179.jpg"
    assert image_path("actor\\0001_2124494179.jpg") == "Flickr/actor/0001_2124494179.jpg"


def test_nuswide_label_file_of_another_length_is_refused(tmp_path):
    write_nuswide(tmp_path, images=50)
    label_file = tmp_path / "nuswide" / "Groundtruth" / "AllLabels" / "Labels_sky.txt"
    label_file.write_text("0\n1\n")
    with pytest.raises(UserError, match="Labels_sky.txt has 2 rows but ImageList/Imagelist.txt lists 50"):
        NUSWide().load(tmp_path)


def test_coco_raw_categories_by_id_and_unlabelled_images_dropped(tmp_path):
    written = write_coco(tmp_path, train_images=14, val_images=8, unlabelled=2)
    arrays = COCO().load(tmp_path, cache_dir=tmp_path / "cache")
    assert arrays.images.paths == written["paths"]  # train2014 then val2014, each by image id
    assert np.array_equal(arrays.labels, written["labels"])
    assert arrays.provenance["unlabelled images dropped"] == 4
    assert len(arrays) == 18


def test_images_decode_to_the_pixels_written(tmp_path):
    written = write_coco(tmp_path, train_images=4, val_images=2, unlabelled=0)
    store = COCO().load(tmp_path, cache_dir=tmp_path / "cache").images
    batch = store[np.array([2, 0])]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.uint8
    with Image.open(tmp_path / "coco" / written["paths"][2]) as image:
        reference = np.asarray(image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    assert np.array_equal(batch[0], reference)


def test_list_files_canonical_order_groups_and_lists_protocol(tmp_path):
    written = write_list_dataset(tmp_path / "coco", num_classes=80, database=30, test=8, train=10)
    arrays = COCO().load(tmp_path)
    # database.txt first, then test.txt; train.txt adds nothing new (train ⊂ database).
    assert arrays.images.paths == written["paths"]
    assert np.array_equal(arrays.labels, written["labels"])
    assert np.array_equal(arrays.groups["list_database"], np.arange(30))
    assert np.array_equal(arrays.groups["list_query"], np.arange(30, 38))
    assert np.array_equal(arrays.groups["list_train"], written["train"])
    manifest = draw_split("coco", COCO.protocols["lists"], arrays, split_seed=5)
    assert np.array_equal(manifest.splits["train"], written["train"])
    assert arrays.provenance["source"] == "list files"


def test_list_files_win_over_raw_annotations(tmp_path):
    write_coco(tmp_path, train_images=6, val_images=4)
    write_list_dataset(tmp_path / "coco", num_classes=80, database=12, test=4, train=5)
    assert COCO().load(tmp_path).provenance["source"] == "list files"


FAULTS = ["missing", "zero_labels", "duplicate", "escaping", "label_width", "label_values", "leak", "conflict"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_planted_fault_makes_load_refuse_and_drop_bad_rows_removes_it(tmp_path, fault):
    write_list_dataset(tmp_path / "nuswide", num_classes=21, database=30, test=8, train=10)
    clean = NUSWide().load(tmp_path)
    plant(tmp_path, fault)
    with pytest.raises(UserError, match=r"hashbench data check nuswide.*--drop-bad-rows") as error:
        NUSWide().load(tmp_path)
    assert "problems (1 rows" in str(error.value)
    arrays = NUSWide().load(tmp_path, drop_bad_rows=True)
    assert arrays.provenance["dropped_rows"] == 1
    assert arrays.provenance["dropped_by_reason"] == {fault: 1}
    assert arrays.labels.any(axis=1).all()
    expected = len(clean) - 1 if fault in ("missing", "zero_labels", "label_width", "label_values") else len(clean)
    assert len(arrays) == expected


def test_an_unreadable_image_is_dropped_only_when_asked_and_named_when_building_the_cache(tmp_path):
    write_list_dataset(tmp_path / "nuswide", num_classes=21, database=30, test=8, train=10)
    victim = plant(tmp_path, "unreadable")
    # Without --drop-bad-rows, loading checks only that files exist (decoding 200k JPEGs is slow);
    # the cache build then names the bad file.
    arrays = NUSWide().load(tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=rf"1 image\(s\) .* cannot be decoded \({victim}\)"):
        arrays.images[np.array([0])]
    assert not list((tmp_path / "cache").rglob("*.npy"))  # nothing half-built left behind
    dropped = NUSWide().load(tmp_path, drop_bad_rows=True)
    assert dropped.provenance["dropped_by_reason"] == {"unreadable": 1}
    assert victim not in dropped.images.paths


def test_missing_folder_and_files_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"folder .*coco not found; put the images"):
        COCO().load(tmp_path)
    (tmp_path / "coco").mkdir()
    with pytest.raises(UserError, match="neither list files nor raw annotations"):
        COCO().load(tmp_path)
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "instances_val2014.json").write_text(json.dumps({"images": []}))
    with pytest.raises(UserError, match="not a COCO instances file"):
        COCO().load(tmp_path)
