"""One way from a profile's budget to a schedule, for every deep method.

The paper profiles train for the released number of optimiser steps on any training set:
the fewest whole epochs that reach it, counted as the trainer makes its steps (a last batch
of one joins the one before it). The tiny profiles keep their epochs on small sets and stay
under their step cap on larger ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hashbench.methods as methods_package
from hashbench.data import DatasetArrays, DataSplit
from hashbench.deep import ReleasedBudget, TinyBudget, steps_per_epoch
from hashbench.method import RunContext
from hashbench.methods.bgan import BGAN
from hashbench.methods.bihalf import BiHalf
from hashbench.methods.cibhash import CIBHash, CLHash
from hashbench.methods.greedyhash import GreedyHash
from hashbench.methods.tbh import TBH
from hashbench.params import resolve_params

DEEP = [CIBHash, CLHash, TBH, BGAN, GreedyHash, BiHalf]
# Training-set sizes whose last batch holds one item for some batch size (4,001 = 10 × 400 + 1).
SIZES = [500, 4_001, 5_000, 10_001, 50_000]


def _split(count: int, images: bool) -> DataSplit:
    labels = np.eye(2, dtype=bool)[np.arange(count) % 2]
    if images:
        arrays = DatasetArrays(labels=labels, images=np.zeros((count, 32, 32, 3), dtype=np.uint8))
    else:
        arrays = DatasetArrays(labels=labels, features=np.zeros((count, 8), dtype=np.float32))
    return DataSplit("train", np.arange(count), arrays)


def _settings(cls, profile: str, count: int, bits: int = 64, **asked):
    params = resolve_params(cls.Params, {"profile": profile, **asked}, owner=cls.name)
    method = cls(bits, params, RunContext(seed=0, device="cpu", work_dir="."))
    return method.resolve_settings(_split(count, cls.input == "images"))


@pytest.mark.parametrize("cls", DEEP, ids=lambda cls: cls.name)
@pytest.mark.parametrize("count", SIZES)
def test_a_paper_profile_trains_the_released_steps_and_no_epoch_more(cls, count):
    settings = _settings(cls, "paper", count)
    per_epoch = steps_per_epoch(count, settings.batch_size)
    assert settings.released_steps and settings.steps == settings.epochs * per_epoch
    assert settings.steps >= settings.released_steps > (settings.epochs - 1) * per_epoch
    assert settings.max_steps is None


def test_tbh_on_4001_items_makes_the_released_100000_steps():
    """TBH counted its epochs with ceil(items / batch): 11 a epoch on 4,001 items in batches
    of 400, where the trainer makes 10, so 9,091 epochs were 90,910 steps."""
    settings = _settings(TBH, "paper", 4_001)
    assert (settings.batch_size, settings.epochs, settings.steps) == (400, 10_000, 100_000)
    assert settings.eval_every == 200  # the released 2,000 steps between scorings
    assert TBH.version == "3"


@pytest.mark.parametrize("cls", DEEP, ids=lambda cls: cls.name)
@pytest.mark.parametrize("count", SIZES)
def test_a_tiny_profile_stays_under_its_cap(cls, count):
    settings = _settings(cls, "tiny", count)
    assert settings.released_steps is None and settings.max_steps
    assert settings.steps <= settings.max_steps or settings.epochs == 1


@pytest.mark.parametrize("cls", DEEP, ids=lambda cls: cls.name)
@pytest.mark.parametrize("profile", ["paper", "tiny"])
def test_asked_epochs_and_validation_win_over_the_budget(cls, profile):
    settings = _settings(cls, profile, 5_000, epochs=7, eval_every=0)
    assert (settings.epochs, settings.eval_every, settings.max_steps) == (7, 0, None)
    assert settings.steps == 7 * steps_per_epoch(5_000, settings.batch_size)


def test_released_intervals_become_epochs_of_this_training_set():
    """Bi-half's learning-rate decay every 120 released epochs of 50,000 images, on 5,000."""
    settings = _settings(BiHalf, "paper", 5_000)
    per_epoch = steps_per_epoch(5_000, settings.batch_size)
    assert settings.lr_step == round(120 * steps_per_epoch(50_000, settings.batch_size) / per_epoch)


def test_no_deep_method_does_budget_arithmetic_of_its_own():
    """Budgets become epochs only in DeepHashingMethod.schedule: no method module divides
    a training-set size by a batch size or calls a budget's epoch rules itself."""
    for path in sorted(Path(methods_package.__file__).parent.glob("*.py")):
        text = path.read_text()
        for forbidden in (".schedule(len(", ".epochs(len(", ".every(", "math.ceil(len(", "steps_per_epoch("):
            assert forbidden not in text, f"{path.name} computes a budget itself ({forbidden})"
    assert ReleasedBudget(10, 5).epochs(9, 2) == 3 and TinyBudget(3, 1, 100).schedule(9, 2)["epochs"] == 3


@pytest.mark.parametrize(("declared", "profile"), [("natural", "paper"), ("tiny", "tiny"), (None, "tiny")])
def test_the_profile_comes_from_the_data_given_not_from_the_registry(declared, profile):
    """A dataset's declared image profile travels with its arrays: a method resolves ``auto``
    from the split it is given, even for a dataset no registry knows."""
    arrays = DatasetArrays(
        labels=np.eye(2, dtype=bool)[np.arange(10) % 2],
        images=np.zeros((10, 8, 8, 1), dtype=np.uint8),
        dataset="known-to-no-registry",
        image_profile=declared,
    )
    params = resolve_params(CIBHash.Params, {}, owner="cibhash")
    method = CIBHash(16, params, RunContext(seed=0, device="cpu", work_dir="."))
    assert method.resolve_profile(DataSplit("train", np.arange(10), arrays)) == profile
