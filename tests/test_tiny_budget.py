"""The tiny profiles on larger training sets: step caps, the thread rule, channels-last images,
the small backbone's stem, and the grey colour jitter's shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.deep import PARALLEL_THREADS, TinyBudget, steps_per_epoch, training_threads
from hashbench.method import RunContext
from hashbench.methods.bgan import BGAN
from hashbench.methods.cibhash import CIBHash, CIBHashParams
from hashbench.methods.greedyhash import GreedyHash
from hashbench.methods.tbh import TBH
from hashbench.toolkit import augment as A
from hashbench.toolkit.backbones import SmallConvNet
from hashbench.toolkit.training import cpu_threads

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def split_of(count: int, shape: tuple[int, ...] = (8, 8, 1), seed: int = 0) -> DataSplit:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    arrays = DatasetArrays(
        labels=np.eye(2, dtype=bool)[np.arange(count) % 2],
        images=images,
        features=images.reshape(count, -1).astype(np.float32) / 255,
    )
    return DataSplit("train", np.arange(count), arrays)


# --------------------------------------------------------------------------------------------
# the step cap


def test_a_budget_keeps_its_epochs_on_small_sets_and_caps_the_steps_on_larger_ones():
    budget = TinyBudget(epochs=100, eval_every=20, max_steps=800)
    # digits' 500 training images in batches of 64: 8 steps an epoch, 800 in 100 epochs.
    assert budget.schedule(500, 64) == {"epochs": 100, "eval_every": 20}
    # 5,000: 79 steps an epoch; 10 whole epochs fit in 800 steps, validated as often (5 times).
    assert budget.schedule(5_000, 64) == {"epochs": 10, "eval_every": 2}
    assert 10 * steps_per_epoch(5_000, 64) == 790
    # An epoch longer than the cap: one epoch all the same; no validation stays none.
    assert budget.schedule(200_000, 64) == {"epochs": 1, "eval_every": 1}
    assert TinyBudget(epochs=100, eval_every=0, max_steps=800).schedule(5_000, 64) == {"epochs": 10, "eval_every": 0}
    assert budget.describe() == "100 epochs, at most 800 steps"


@pytest.mark.parametrize(
    ("method", "digits", "larger"),
    [
        # (epochs, steps) on digits' 500 training images, then on 5,000.
        (CIBHash, (100, 800), (30, 2370)),
        (TBH, (1000, 2000), (100, 2000)),
        (BGAN, (20, 260), (4, 500)),
        (GreedyHash, (100, 500), (100, 5000)),
    ],
)
def test_digits_budgets_are_unchanged_and_larger_sets_are_capped(method, digits, larger):
    for count, (epochs, steps) in ((500, digits), (5_000, larger)):
        settings = method(32).resolve_settings(split_of(count))
        assert (settings.profile, settings.epochs, settings.steps) == ("tiny", epochs, steps)
        assert settings.max_steps is not None and settings.steps <= max(settings.max_steps, steps_per_epoch(count, settings.batch_size))
        assert settings.released_steps is None


def test_asked_epochs_are_not_capped_and_the_paper_profile_has_no_cap():
    asked = CIBHash(32, CIBHashParams(epochs=40)).resolve_settings(split_of(5_000))
    assert (asked.epochs, asked.steps, asked.max_steps) == (40, 40 * 79, None)
    paper = CIBHash(32, CIBHashParams(profile="paper")).resolve_settings(split_of(5_000, (32, 32, 3)))
    assert paper.max_steps is None and paper.released_steps == paper.steps


def test_the_cap_and_the_thread_choice_are_recorded_in_the_settings():
    context = RunContext(seed=0)
    method = CIBHash(8, CIBHashParams(epochs=1, eval_every=0, batch_size=16), context)
    method.fit(split_of(40, (28, 28, 1)))
    settings = context.record["settings"]
    assert settings["memory_format"] == "channels_last" and settings["max_steps"] is None
    assert settings["cpu_threads"] == context.record["cpu_threads"] == min(PARALLEL_THREADS, torch.get_num_threads())
    assert method.encode(split_of(10, (28, 28, 1))).shape == (10, 8)
    tbh = TBH(8)
    tbh.settings = tbh.resolve_settings(split_of(60))
    assert tbh.settings.max_steps == 2000
    assert tbh.deviations(split_of(60))[0].endswith("1,000 epochs, at most 2,000 steps (released: fc7, 1024/512, ReLU output, 1e-4, 400, 100,000 steps)")
    # A feature method on 784 pixel values: one thread still (its dense layers gain little).
    context = RunContext(seed=0)
    GreedyHash(8, GreedyHash.Params(epochs=1), context).fit(split_of(40, (28, 28, 1)))
    assert (context.record["settings"]["cpu_threads"], context.record["settings"]["memory_format"]) == (1, "contiguous")


# --------------------------------------------------------------------------------------------
# threads


def test_thread_rule_one_thread_for_small_images_and_features_two_for_larger_images():
    assert training_threads(None, "tiny", CPU, 8 * 8) == 1  # digits
    assert training_threads(None, "tiny", CPU, 255) == 1
    with cpu_threads(4):
        assert training_threads(None, "tiny", CPU, 28 * 28) == PARALLEL_THREADS == 2  # not the 4 available
        assert training_threads(None, "tiny", CPU, 256) == 2
    with cpu_threads(1):  # a worker's share of one thread is respected
        assert training_threads(None, "tiny", CPU, 28 * 28) == 1
    assert training_threads(None, "tiny", CPU, 0) == 1  # a feature method
    assert training_threads(3, "tiny", CPU, 8 * 8) == 3  # as asked
    assert training_threads(None, "paper", CPU, 28 * 28) is None  # torch's own setting
    assert training_threads(None, "tiny", CUDA, 28 * 28) is None


# --------------------------------------------------------------------------------------------
# the small backbone


def layer_kinds(network: torch.nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in network.features]


def test_small_backbone_keeps_its_shape_up_to_16_pixels_and_gets_a_stem_above():
    digits = SmallConvNet((8, 8, 1))
    assert not digits.stem
    assert layer_kinds(digits) == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 + ["MaxPool2d"]
    assert digits.fc[1].in_features == 32 * 4 * 4
    assert not SmallConvNet((16, 16, 1)).stem
    mnist = SmallConvNet((28, 28, 1))
    stem = mnist.features[0]
    assert mnist.stem and (stem.stride, stem.in_channels, stem.out_channels) == ((2, 2), 1, 16)
    convs = [layer for layer in mnist.features if isinstance(layer, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == [16, 32, 64]  # one convolution per stage after the stem
    assert mnist.fc[1].in_features == 64 * 3 * 3  # 28 → 14 → 7 → 3
    assert mnist(torch.zeros(2, 1, 28, 28)).shape == (2, 256)
    cifar = SmallConvNet((32, 32, 3))
    assert cifar.fc[1].in_features == 64 * 4 * 4  # 32 → 16 → 8 → 4


def test_the_small_backbone_is_initialised_as_before_on_digits():
    # No stem on 8×8 images: the same layers drawn from the generator in the same order.
    torch.manual_seed(0)
    first = [parameter.detach().clone() for parameter in SmallConvNet((8, 8, 1)).parameters()]
    torch.manual_seed(0)
    shapes = [(32, 1, 3, 3), (32,), (32,), (32, 32, 3, 3), (32,), (32,), (256, 512), (256,)]
    assert [tuple(parameter.shape) for parameter in first] == shapes


# --------------------------------------------------------------------------------------------
# the colour jitter on grey images


def reference_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Every slot's adjustment gathered and scattered, the identities on grey images included."""
    images = images.clone()
    for slot in range(4):
        for operation, adjust in enumerate(A._ADJUSTMENTS):
            chosen = torch.nonzero(order[:, slot] == operation).flatten()
            if chosen.numel():
                images[chosen] = adjust(images[chosen], factors[chosen, operation])
    return images


def test_grey_jitter_skips_the_identities_and_gives_the_same_bits():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=generator)
    factors = torch.stack([0.6 + 0.8 * torch.rand(64, generator=generator) for _ in range(3)] + [torch.zeros(64)], dim=1)
    order = torch.argsort(torch.rand(64, 4, generator=generator), dim=1)
    assert torch.equal(A.color_jitter(images, factors, order), reference_jitter(images, factors, order))
    colour = torch.rand(8, 3, 8, 8, generator=generator)  # colour images still take all four
    factors = torch.full((8, 4), 1.3)
    factors[:, 3] = 0.1
    assert torch.equal(A.color_jitter(colour, factors, order[:8]), reference_jitter(colour, factors, order[:8]))
