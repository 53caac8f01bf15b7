"""Two-view image augmentation on whole batches of tensors (CPU or GPU alike).

The contrastive methods (CIBHash and its relatives) see two random views of each training
image. The released CIBHash code builds them per image with PIL in data-loader workers; here
every step is a torch operation on a whole batch ``(n, C, H, W)`` with per-image random
parameters, so on CUDA the augmentation runs on the GPU next to the network, and the same
code runs on the CPU. Each step follows torchvision's semantics (checked against torchvision
image by image in the tests):

1. ``RandomResizedCrop(size, scale, ratio)`` — torchvision's parameter draw (10 tries, then a
   centre crop), bilinear resampling,
2. horizontal flip with probability ``flip_p``,
3. ``ColorJitter(brightness, contrast, saturation, hue)`` applied with probability
   ``jitter_p``, its four adjustments in a random order per image,
4. ``RandomGrayscale(grayscale_p)``,
5. Gaussian blur ``blur_kernel``×``blur_kernel`` with σ ~ U(blur_sigma) with probability
   ``blur_p`` (reflect-101 borders, as OpenCV's ``GaussianBlur`` in the released code),
6. normalisation with ``mean`` / ``std``.

Crop, resize and flip are one ``grid_sample`` per batch. When the crop is resampled to fewer
pixels than it has (large source images), the bilinear sampling is not antialiased, unlike
PIL; for the datasets here (32×32 CIFAR upsampled to 224, tiny images at native size) the
crop is always upsampled and the two agree.

Randomness comes from torch's generator of the images' device (seeded by the run seed, and
saved in training checkpoints), so a run is reproducible on a given device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hashbench.toolkit.backbones import IMAGENET_MEAN, IMAGENET_STD

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentPolicy:
    """Parameters of the two-view pipeline (see the module docstring for the steps)."""

    size: int | None  # output side; None keeps the input size
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.7
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_kernel: int = 3
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }


def paper_policy() -> AugmentPolicy:
    """The released CIBHash pipeline for natural images at 224×224 (docs/PROTOCOLS.md, "CIBHash")."""
    return AugmentPolicy(size=224)


def tiny_policy(
    image_shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> AugmentPolicy:
    """The paper's pipeline scaled down to tiny images at their native size.

    Kept: the crop's scale and aspect range (relative quantities, so size-independent) and
    the colour jitter, with its strength and probability. Dropped, because at this size they
    do not mean what they mean at 224 px:

    * the 3×3 blur: at 224 px it spans 1.3% of the image; on a 32 px image the equivalent is
      a fraction of a pixel, so the scaled-down blur is no blur;
    * on single-channel images (handwriting): horizontal flips, which change what a glyph is
      (a mirrored 2 or 7 is not a digit), and grayscale/saturation/hue, which do nothing to
      grey pixels.
    """
    channels = int(image_shape[2])
    colour = channels == 3
    return AugmentPolicy(
        size=None,
        flip_p=0.5 if colour else 0.0,
        saturation=0.4 if colour else 0.0,
        hue=0.1 if colour else 0.0,
        grayscale_p=0.2 if colour else 0.0,
        blur_p=0.0,
        mean=tuple(mean),
        std=tuple(std),
    )


# --------------------------------------------------------------------------------------------
# random parameters


def _uniform(low: float, high: float, count: int, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, device=device)


def crop_boxes(
    count: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device,
) -> torch.Tensor:
    """``(count, 4)`` integer boxes ``(top, left, h, w)`` drawn as torchvision's RandomResizedCrop.

    Ten candidate boxes per image; the first that fits is kept, else a centre crop with the
    aspect ratio clamped to ``ratio``.
    """
    tries = 10
    area = float(height * width)
    target_area = area * (
        scale[0] + (scale[1] - scale[0]) * torch.rand(count, tries, device=device)
    )
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(count, tries, device=device))
    box_w = torch.round(torch.sqrt(target_area * aspect))
    box_h = torch.round(torch.sqrt(target_area / aspect))
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.float().argmax(dim=1)  # index of the first fitting try (0 when none fits)
    rows = torch.arange(count, device=device)
    box_w, box_h = box_w[rows, first], box_h[rows, first]
    top = torch.floor(torch.rand(count, device=device) * (height - box_h + 1))
    left = torch.floor(torch.rand(count, device=device) * (width - box_w + 1))
    # Centre-crop fallback for the images where no try fitted.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = int(round(height * ratio[1])), height
    else:
        fallback_w, fallback_h = width, height
    none_fit = ~fits.any(dim=1)
    box_w = torch.where(none_fit, torch.full_like(box_w, fallback_w), box_w)
    box_h = torch.where(none_fit, torch.full_like(box_h, fallback_h), box_h)
    top = torch.where(none_fit, torch.full_like(top, (height - fallback_h) // 2), top)
    left = torch.where(none_fit, torch.full_like(left, (width - fallback_w) // 2), left)
    return torch.stack([top, left, box_h, box_w], dim=1)


# --------------------------------------------------------------------------------------------
# operations on batches with per-image parameters


def resized_crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop ``boxes`` (top, left, h, w) of each image, resize to ``size`` bilinearly, flip.

    Output pixel centre u of an ``S``-pixel side samples the source at
    ``left + (u + 0.5)·w/S − 0.5``, clamped to the crop, the half-pixel convention of
    torchvision's resize.
    """
    count, _, height, width = images.shape
    top, left, box_h, box_w = boxes.to(images.dtype).unbind(dim=1)
    theta = torch.zeros(count, 2, 3, device=images.device, dtype=images.dtype)
    scale_x = box_w / width
    if flip is not None:
        scale_x = torch.where(flip, -scale_x, scale_x)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [count, images.shape[1], size[0], size[1]], align_corners=False)
    # Clamp the samples to the crop's outer pixel centres: resizing a crop replicates its own
    # edge pixels, it does not read the image beyond the crop.
    low = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], dim=1).view(
        count, 1, 1, 2
    )
    high = torch.stack(
        [(2 * (left + box_w) - 1) / width - 1, (2 * (top + box_h) - 1) / height - 1], dim=1
    ).view(count, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, high), low)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``(n, 1, H, W)`` of RGB images (the image itself when it has one channel)."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(dim=1)
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    factor = factor.view(-1, 1, 1, 1)
    return (factor * images + (1 - factor) * other).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    return _blend(images, grayscale(images), factor)


def _rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    # torchvision's tensor formulation (functional_tensor._rgb2hsv), batched.
    red, green, blue = images.unbind(dim=-3)
    maxc = images.max(dim=-3).values
    minc = images.min(dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    saturation = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - red) / cr_divisor
    gc = (maxc - green) / cr_divisor
    bc = (maxc - blue) / cr_divisor
    hr = (maxc == red) * (bc - gc)
    hg = ((maxc == green) & (maxc != red)) * (2.0 + rc - bc)
    hb = ((maxc != green) & (maxc != red)) * (4.0 + gc - rc)
    hue = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, maxc), dim=-3)


# For each hue sector 0..5, which of (v, q, p, t) each of r, g, b takes (torchvision's table).
_SECTOR_CHOICES = ((0, 1, 2, 2, 3, 0), (3, 0, 0, 1, 2, 2), (2, 2, 3, 0, 0, 1))


def _hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    # torchvision's formulation, with a gather in place of its one-hot einsum (the einsum
    # becomes millions of tiny matrix products and dominated the whole augmentation).
    hue, saturation, value = images.unbind(dim=-3)
    sector = torch.floor(hue * 6.0)
    fraction = (hue * 6.0) - sector
    sector = sector.to(dtype=torch.int64) % 6
    p = torch.clamp(value * (1.0 - saturation), 0.0, 1.0)
    q = torch.clamp(value * (1.0 - saturation * fraction), 0.0, 1.0)
    t = torch.clamp(value * (1.0 - saturation * (1.0 - fraction)), 0.0, 1.0)
    candidates = torch.stack((value, q, p, t), dim=-3)
    table = torch.tensor(_SECTOR_CHOICES, device=images.device)
    choice = table[:, sector].movedim(0, -3)  # (..., 3, H, W): candidate index per channel
    return torch.gather(candidates, -3, choice)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    hsv = _rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + factor.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Apply the four adjustments with per-image ``factors`` ``(n, 4)`` in per-image ``order``.

    ``factors`` columns: brightness, contrast, saturation (multiplicative) and hue (shift);
    ``order`` ``(n, 4)`` is a permutation of 0..3 per image, as torchvision draws one per call.
    """
    images = images.clone()
    grey = images.shape[1] == 1
    for slot in range(4):
        for operation, adjust in enumerate(_ADJUSTMENTS):
            if grey and adjust in (adjust_saturation, adjust_hue):
                continue  # the identity on grey images: no need to gather and scatter them
            chosen = torch.nonzero(order[:, slot] == operation).flatten()
            if chosen.numel():
                images[chosen] = adjust(images[chosen], factors[chosen, operation])
    return images


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image σ, reflect-101 borders (OpenCV's default)."""
    count, channels, height, width = images.shape
    offsets = torch.arange(kernel, device=images.device, dtype=images.dtype) - (kernel - 1) / 2
    weights = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(images.dtype) ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)  # (n, kernel)
    weights = weights.repeat_interleave(channels, dim=0)  # one filter per (image, channel)
    pad = kernel // 2
    flat = images.reshape(1, count * channels, height, width)
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, weights.view(-1, 1, 1, kernel), groups=count * channels)
    flat = F.conv2d(flat, weights.view(-1, 1, kernel, 1), groups=count * channels)
    return flat.view(count, channels, height, width)


# --------------------------------------------------------------------------------------------


def augment(images: torch.Tensor, policy: AugmentPolicy) -> torch.Tensor:
    """One random view of each image of a float batch ``(n, C, H, W)`` in [0, 1], normalised."""
    count, channels, height, width = images.shape
    device = images.device
    size = (policy.size, policy.size) if policy.size is not None else (height, width)
    boxes = crop_boxes(count, height, width, policy.crop_scale, policy.crop_ratio, device)
    flip = torch.rand(count, device=device) < policy.flip_p
    views = resized_crop(images, boxes, size, flip)

    jitter = torch.rand(count, device=device) < policy.jitter_p
    strengths = (policy.brightness, policy.contrast, policy.saturation)
    factors = torch.stack(
        [_uniform(max(0.0, 1 - s), 1 + s, count, device) for s in strengths]
        + [_uniform(-policy.hue, policy.hue, count, device)],
        dim=1,
    )
    order = torch.argsort(torch.rand(count, 4, device=device), dim=1)
    chosen = torch.nonzero(jitter).flatten()
    if chosen.numel():
        views[chosen] = color_jitter(views[chosen], factors[chosen], order[chosen])

    if channels == 3:
        gray = torch.nonzero(torch.rand(count, device=device) < policy.grayscale_p).flatten()
        if gray.numel():
            views[gray] = grayscale(views[gray]).expand(-1, 3, -1, -1)

    blur = torch.rand(count, device=device) < policy.blur_p
    sigma = _uniform(policy.blur_sigma[0], policy.blur_sigma[1], count, device)
    chosen = torch.nonzero(blur).flatten()
    if chosen.numel() and policy.blur_kernel > 1:
        views[chosen] = gaussian_blur(views[chosen], sigma[chosen], policy.blur_kernel)

    mean = torch.tensor(policy.mean, device=device, dtype=views.dtype).view(1, -1, 1, 1)
    std = torch.tensor(policy.std, device=device, dtype=views.dtype).view(1, -1, 1, 1)
    return (views - mean) / std


def two_views(images: torch.Tensor, policy: AugmentPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of each image (the contrastive pair)."""
    return augment(images, policy), augment(images, policy)
