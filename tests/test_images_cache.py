"""The image store, the decoded-image cache and the backbone-feature cache: keyed, atomic,
verified, and rebuilt when stale, truncated or half-written."""

from __future__ import annotations

import os
import pickle
import threading

import numpy as np
import pytest
import torch
from dataset_fixtures import write_image

from hashbench.data.cache import CacheEntry
from hashbench.data.images import ImageStore, decode_image
from hashbench.errors import UserError
from hashbench.toolkit.backbone_features import BackboneFeatures

SIZE = 24  # small decoded size: the cache logic does not depend on it


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for index in range(21):
        suffix = "png" if index % 5 == 0 else "jpg"  # both formats
        path = f"img/{index:03d}.{suffix}"
        write_image(tmp_path / "data" / path, rng, size=(30 + index, 20 + index))
        paths.append(path)
    return tmp_path / "data", paths


class CountingStore(ImageStore):
    """Counts cache builds (class attribute: every instance shares it)."""

    builds = 0

    def _fill(self, array):
        CountingStore.builds += 1
        super()._fill(array)


@pytest.fixture
def counting():
    CountingStore.builds = 0
    return CountingStore


def reference(folder, paths, indices):
    return np.stack([decode_image(folder / paths[index], SIZE) for index in indices])


def test_store_decodes_lazily_with_numpy_indexing(image_folder):
    folder, paths = image_folder
    store = ImageStore(folder, paths, size=SIZE)
    assert len(store) == 21 and store.shape == (21, SIZE, SIZE, 3)
    assert np.array_equal(store[np.array([4, 0, 4])], reference(folder, paths, [4, 0, 4]))
    assert np.array_equal(store[3], reference(folder, paths, [3])[0])
    assert np.array_equal(store[2:5], reference(folder, paths, [2, 3, 4]))
    assert store[np.array([], dtype=np.int64)].shape == (0, SIZE, SIZE, 3)
    with pytest.raises(IndexError):
        store[np.array([21])]
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone[np.array([1])], store[np.array([1])])


def test_cache_is_built_once_and_equals_decoding(image_folder, tmp_path, counting):
    folder, paths = image_folder
    cache = tmp_path / "cache"
    first = counting(folder, paths, size=SIZE, cache_dir=cache, workers=2)
    everything = first[np.arange(21)]
    assert np.array_equal(everything, reference(folder, paths, range(21)))
    assert counting.builds == 1
    entry = first.cache_entry()
    assert entry.path.is_file() and entry.meta_path.is_file() and entry.why_invalid() is None
    assert not list(cache.glob(".*.tmp"))
    # A new process (a new store) opens the memory map; nothing is decoded again.
    second = counting(folder, paths, size=SIZE, cache_dir=cache)
    assert np.array_equal(second[np.array([7, 3])], everything[[7, 3]])
    assert isinstance(second.cached(), np.memmap)
    assert counting.builds == 1
    # Pickling (DataLoader workers) never ships the memory map.
    assert len(pickle.dumps(second)) < 10_000


def test_truncated_cache_file_is_rebuilt(image_folder, tmp_path, counting):
    folder, paths = image_folder
    store = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    expected = store[np.arange(21)]
    path = store.cache_entry().path
    os.truncate(path, path.stat().st_size // 2)
    assert "truncated" in store.cache_entry().why_invalid()
    fresh = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    assert np.array_equal(fresh[np.arange(21)], expected)
    assert counting.builds == 2
    assert fresh.cache_entry().why_invalid() is None


def test_stale_cache_is_rebuilt_when_an_image_changes(image_folder, tmp_path, counting):
    folder, paths = image_folder
    store = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    before = store[np.array([6])]
    write_image(folder / paths[6], np.random.default_rng(99), size=(33, 21))
    os.utime(folder / paths[6], ns=(1, 1))  # a new mtime even on coarse clocks
    fresh = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    assert fresh.cache_entry().why_invalid().startswith("stale")
    after = fresh[np.array([6])]
    assert counting.builds == 2
    assert not np.array_equal(before, after)
    assert np.array_equal(after, reference(folder, paths, [6]))


def test_other_image_list_is_stale_not_trusted(image_folder, tmp_path, counting):
    folder, paths = image_folder
    counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")[np.array([0])]
    reordered = paths[::-1]
    store = counting(folder, reordered, size=SIZE, cache_dir=tmp_path / "cache")
    assert np.array_equal(store[np.array([0])], reference(folder, reordered, [0]))
    assert counting.builds == 2


def test_corrupted_content_fails_its_checksums_and_is_rebuilt(image_folder, tmp_path, counting):
    folder, paths = image_folder
    store = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    expected = store[np.arange(21)]
    path = store.cache_entry().path
    with open(path, "r+b") as handle:  # flip bytes of the last row, which is checksummed
        handle.seek(path.stat().st_size - 10)
        handle.write(b"\xff" * 10)
    assert "checksums" in store.cache_entry().why_invalid()
    fresh = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    assert np.array_equal(fresh[np.arange(21)], expected)


def test_missing_record_means_an_interrupted_build(image_folder, tmp_path, counting):
    folder, paths = image_folder
    store = counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")
    store[np.array([0])]
    store.cache_entry().meta_path.unlink()  # killed between the rename and the record
    counting(folder, paths, size=SIZE, cache_dir=tmp_path / "cache")[np.array([0])]
    assert counting.builds == 2


def test_a_failed_build_leaves_nothing_that_claims_to_be_complete(tmp_path):
    entry = CacheEntry(tmp_path / "c" / "thing.npy", {"k": 1})

    def fill(array):
        array[:2] = 1
        raise KeyboardInterrupt  # killed midway

    with pytest.raises(KeyboardInterrupt):
        entry.get_or_build((4, 3), np.uint8, fill)
    assert sorted(path.name for path in (tmp_path / "c").iterdir()) == ["thing.lock"]
    assert entry.open() is None
    built = entry.get_or_build((4, 3), np.uint8, lambda array: array.fill(7))
    assert (built == 7).all()
    assert CacheEntry(entry.path, {"k": 2}).why_invalid().startswith("stale")


def test_two_builders_at_once_build_once(tmp_path):
    """The second builder finds no entry, waits for the first one's lock, then opens what it built.

    Synchronised on events, not on time: the first builder holds the lock inside its fill
    until the second has looked for the entry (and found none), so the second always has
    to rely on the re-check it makes under the lock.
    """
    path, key = tmp_path / "x.npy", {"k": 1}
    filling = threading.Event()  # the first builder holds the lock and is writing
    looked = threading.Event()  # the second builder has looked for a finished entry
    calls = []

    def fill(array):
        calls.append(threading.current_thread().name)
        filling.set()
        assert looked.wait(timeout=120), "the second builder never looked for the entry"
        array.fill(3)

    second_entry = CacheEntry(path, key)
    first_look = second_entry.open

    def open_and_tell():
        found = first_look()
        looked.set()
        return found

    second_entry.open = open_and_tell
    results, errors = {}, []

    def build(name, entry):
        try:
            results[name] = entry.get_or_build((5,), np.int32, fill)
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)
            filling.set()
            looked.set()

    first = threading.Thread(target=build, args=("first", CacheEntry(path, key)), name="first")
    first.start()
    assert filling.wait(timeout=120), "the first builder never started filling"
    second = threading.Thread(target=build, args=("second", second_entry), name="second")
    second.start()
    for thread in (first, second):
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert not errors, errors
    assert calls == ["first"]
    assert all((results[name] == 3).all() for name in ("first", "second"))


def test_cache_refuses_a_disk_too_small(tmp_path):
    entry = CacheEntry(tmp_path / "huge.npy", {"k": 1})
    with pytest.raises(UserError, match="point --cache at a larger disk"):
        entry.get_or_build((10**9, 10**6), np.uint8, lambda array: None)


# -- backbone features -------------------------------------------------------------------------


class FakeBackbone(torch.nn.Module):
    """Same attributes as hashbench.toolkit.backbones' networks: feature_dim, weights_source, weights_id."""

    feature_dim = 5
    weights_source = "test weights"
    weights_id = "fake-1"

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 5)
        torch.nn.init.constant_(self.linear.weight, 0.5)
        torch.nn.init.zeros_(self.linear.bias)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, images):
        return self.dropout(self.linear(images.mean(dim=(2, 3))))  # dropout proves eval mode


def fake_preprocess(images, device):
    return images.to(device).permute(0, 3, 1, 2).float() / 255.0


def direct_features(images: np.ndarray) -> np.ndarray:
    return np.repeat((images.astype(np.float64) / 255.0).mean(axis=(1, 2)).sum(axis=1, keepdims=True) * 0.5, 5, axis=1)


class Factory:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return FakeBackbone(), fake_preprocess


def features_for(images, covered, cache, factory, manifest_hash="a" * 64, weights_key="fake-1", **options):
    return BackboneFeatures(
        images, covered, dataset="toy", manifest_hash=manifest_hash, cache_dir=cache, factory=factory,
        weights_key=weights_key, batch_size=4, **options,
    )  # fmt: skip


def test_features_are_computed_once_and_match_a_direct_computation(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(30, 8, 8, 3), dtype=np.uint8)
    covered = np.array([1, 2, 5, 8, 13, 21, 29])
    factory = Factory()
    features = features_for(images, covered, tmp_path / "cache", factory)
    values = features(np.array([21, 1, 13]))
    assert values.dtype == np.float32 and values.shape == (3, 5)
    assert np.allclose(values, direct_features(images[[21, 1, 13]]), atol=1e-5)
    again = features_for(images, covered, tmp_path / "cache", factory)
    assert np.allclose(again(covered), direct_features(images[covered]), atol=1e-5)
    assert factory.calls == 1  # the second user read the cache
    with pytest.raises(ValueError, match="outside the split manifest"):
        features(np.array([3]))


def test_feature_cache_key_separates_manifests_and_weights(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    factory = Factory()
    base = features_for(images, np.arange(10), tmp_path, factory)
    base(np.arange(3))
    features_for(images, np.arange(10), tmp_path, factory, manifest_hash="b" * 64)(np.arange(3))
    features_for(images, np.arange(10), tmp_path, factory, weights_key="fake-2")(np.arange(3))
    assert factory.calls == 3
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3
    key = base.key()
    assert (key["dataset"], key["manifest"], key["backbone"], key["weights"]) == ("toy", "a" * 64, "vgg16", "fake-1")


def test_truncated_feature_cache_is_rebuilt(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    factory = Factory()
    features = features_for(images, np.arange(12), tmp_path, factory)
    expected = features(np.arange(12))
    path = features.entry().path
    os.truncate(path, path.stat().st_size - 7)
    fresh = features_for(images, np.arange(12), tmp_path, factory)
    assert np.allclose(fresh(np.arange(12)), expected)
    assert factory.calls == 2


def test_features_read_images_through_the_store_with_workers(image_folder, tmp_path):
    folder, paths = image_folder
    store = ImageStore(folder, paths, size=SIZE, cache_dir=tmp_path / "images")
    factory = Factory()
    features = features_for(store, np.arange(21), tmp_path / "cache", factory, workers=2)
    assert np.allclose(features(np.arange(21)), direct_features(store[np.arange(21)]), atol=1e-5)


def test_unwritable_cache_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    entry = CacheEntry(blocker / "sub" / "x.npy", {"k": 1})
    with pytest.raises(UserError, match="point --cache at a writable folder"):
        entry.get_or_build((2,), np.uint8, lambda array: None)
