"""Batched two-view augmentation: each step equals torchvision's, image by image."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from hashbench.toolkit import augment as A

CPU = torch.device("cpu")


@pytest.fixture
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=generator)


def test_resized_crop_and_flip_equal_torchvision(images):
    torch.manual_seed(1)
    boxes = A.crop_boxes(6, 32, 32, (0.5, 1.0), (3 / 4, 4 / 3), CPU)
    flip = torch.tensor([False, True, False, True, True, False])
    views = A.resized_crop(images, boxes, (224, 224), flip)
    for index in range(6):
        top, left, height, width = (int(value) for value in boxes[index])
        expected = TF.resized_crop(
            images[index], top, left, height, width, [224, 224], antialias=True
        )
        if flip[index]:
            expected = TF.horizontal_flip(expected)
        torch.testing.assert_close(views[index], expected, atol=2e-5, rtol=0)


def test_resized_crop_at_native_size_equals_torchvision():
    torch.manual_seed(2)
    digits = torch.rand(8, 1, 8, 8)
    boxes = A.crop_boxes(8, 8, 8, (0.5, 1.0), (3 / 4, 4 / 3), CPU)
    views = A.resized_crop(digits, boxes, (8, 8))
    for index in range(8):
        top, left, height, width = (int(value) for value in boxes[index])
        expected = TF.resized_crop(digits[index], top, left, height, width, [8, 8], antialias=True)
        torch.testing.assert_close(views[index], expected, atol=2e-6, rtol=0)


def test_crop_boxes_follow_random_resized_crop_rules():
    torch.manual_seed(3)
    boxes = A.crop_boxes(2000, 32, 40, (0.5, 1.0), (3 / 4, 4 / 3), CPU)
    top, left, height, width = boxes.unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 32).all() and (left + width <= 40).all()
    area = height * width / (32 * 40)
    # Rounding of the sides moves the area and ratio slightly beyond the drawn range.
    assert area.min() > 0.45 and area.max() <= 1.0
    aspect = width / height
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    # Both ends of the ranges are reached, not a constant box.
    assert area.min() < 0.55 and area.max() > 0.9


def test_crop_boxes_fall_back_to_a_centre_crop():
    boxes = A.crop_boxes(5, 32, 64, (2.0, 3.0), (3 / 4, 4 / 3), CPU)  # no try can fit
    # Aspect 2 > 4/3: the height is kept and the width clamped to round(32 · 4/3) = 43.
    expected = torch.tensor([(32 - 32) // 2, (64 - 43) // 2, 32, 43], dtype=boxes.dtype)
    assert (boxes == expected).all()


@pytest.mark.parametrize(
    ("ours", "theirs", "factor"),
    [
        (A.adjust_brightness, TF.adjust_brightness, 1.3),
        (A.adjust_brightness, TF.adjust_brightness, 0.6),
        (A.adjust_contrast, TF.adjust_contrast, 1.4),
        (A.adjust_contrast, TF.adjust_contrast, 0.7),
        (A.adjust_saturation, TF.adjust_saturation, 1.2),
        (A.adjust_saturation, TF.adjust_saturation, 0.6),
        (A.adjust_hue, TF.adjust_hue, 0.08),
        (A.adjust_hue, TF.adjust_hue, -0.1),
    ],
)
def test_colour_adjustments_equal_torchvision(images, ours, theirs, factor):
    adjusted = ours(images, torch.full((6,), factor))
    for index in range(6):
        torch.testing.assert_close(
            adjusted[index], theirs(images[index], factor), atol=2e-6, rtol=0
        )


def test_colour_adjustments_on_grey_images_equal_torchvision():
    grey = torch.rand(3, 1, 8, 8)
    for ours, theirs, factor in [
        (A.adjust_contrast, TF.adjust_contrast, 1.3),
        (A.adjust_brightness, TF.adjust_brightness, 0.8),
        (A.adjust_saturation, TF.adjust_saturation, 1.4),
        (A.adjust_hue, TF.adjust_hue, 0.1),
    ]:
        adjusted = ours(grey, torch.full((3,), factor))
        for index in range(3):
            torch.testing.assert_close(
                adjusted[index], theirs(grey[index], factor), atol=2e-6, rtol=0
            )


def test_colour_jitter_applies_each_images_own_order(images):
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05]] * 6)
    orders = torch.stack(
        [torch.randperm(4, generator=torch.Generator().manual_seed(k)) for k in range(6)]
    )
    jittered = A.color_jitter(images, factors, orders)
    steps = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for index in range(6):
        expected = images[index]
        for operation in orders[index].tolist():
            expected = steps[operation](expected, float(factors[index, operation]))
        torch.testing.assert_close(jittered[index], expected, atol=5e-6, rtol=0)


def test_gaussian_blur_equals_torchvision_with_reflect_borders(images):
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    blurred = A.gaussian_blur(images, sigma, 3)
    for index in range(6):
        expected = TF.gaussian_blur(images[index], [3, 3], [float(sigma[index])] * 2)
        torch.testing.assert_close(blurred[index], expected, atol=2e-6, rtol=0)


def test_grayscale_uses_itu_luma(images):
    grey = A.grayscale(images)
    for index in range(6):
        torch.testing.assert_close(
            grey[index], TF.rgb_to_grayscale(images[index]), atol=1e-6, rtol=0
        )


def test_augment_without_randomness_is_normalisation(images):
    policy = A.AugmentPolicy(
        size=None,
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=0.0,
    )
    mean = torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(A.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(A.augment(images, policy), (images - mean) / std, atol=1e-5, rtol=0)


def test_paper_views_are_random_seeded_and_normalised(images):
    policy = A.paper_policy()
    torch.manual_seed(5)
    first, second = A.two_views(images[:2], policy)
    torch.manual_seed(5)
    again, _ = A.two_views(images[:2], policy)
    assert first.shape == (2, 3, 224, 224)
    assert not torch.equal(first, second)  # two independent views
    assert torch.equal(first, again)  # the same seed gives the same views
    # Normalised pixels of [0, 1] images stay within [−mean/std, (1−mean)/std].
    low = min(-m / s for m, s in zip(A.IMAGENET_MEAN, A.IMAGENET_STD, strict=True))
    high = max((1 - m) / s for m, s in zip(A.IMAGENET_MEAN, A.IMAGENET_STD, strict=True))
    assert first.min() >= low - 1e-5 and first.max() <= high + 1e-5


def test_paper_policy_matches_the_released_pipeline():
    policy = A.paper_policy()
    assert policy.size == 224 and policy.crop_scale == (0.5, 1.0)
    assert (policy.brightness, policy.contrast, policy.saturation, policy.hue) == (
        0.4,
        0.4,
        0.4,
        0.1,
    )
    assert (policy.flip_p, policy.jitter_p, policy.grayscale_p, policy.blur_p) == (
        0.5,
        0.7,
        0.2,
        0.5,
    )
    assert policy.blur_kernel == 3 and policy.blur_sigma == (0.1, 2.0)
    assert math.isclose(policy.crop_ratio[0], 3 / 4) and math.isclose(policy.crop_ratio[1], 4 / 3)


def test_tiny_policy_for_grey_digits_keeps_glyphs():
    policy = A.tiny_policy((8, 8, 1), (0.5,), (0.5,))
    assert policy.size is None and policy.flip_p == 0.0 and policy.blur_p == 0.0
    assert policy.saturation == 0.0 and policy.hue == 0.0 and policy.grayscale_p == 0.0
    assert (policy.brightness, policy.contrast, policy.jitter_p) == (0.4, 0.4, 0.7)
    views = A.augment(torch.rand(4, 1, 8, 8), policy)
    assert views.shape == (4, 1, 8, 8)
    colour = A.tiny_policy((32, 32, 3), (0.5,) * 3, (0.5,) * 3)
    assert colour.flip_p == 0.5 and colour.grayscale_p == 0.2 and colour.hue == 0.1
