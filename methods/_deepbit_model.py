"""DeepBit's network pieces and its three loss terms (see :mod:`hashbench.methods.deepbit`).

The loss values are those of the released Caffe layers (``src/caffe/layers/``
``K2_min_quantize_loss_layer.cpp``, ``K1_even_dist_loss_layer.cpp``,
``K3_transform_loss_layer.cpp``), each normalised by the batch size N as there:

* quantisation ``MinQuantizeLoss``: Σ (b − x)² / (2N), b = [x > 0.5];
* balance ``EvenDistLoss``: Σ_k (μ_k − 0.5)² / (2N), μ_k the fraction of the batch with
  x_k > 0.5;
* rotation ``TransformLoss``: Σ_n w_n w'_n ‖x'_n − x_n‖² / (2N), the rotated image's code x'
  against its original's, weighted by both images' weights (the original's is 1, the rotated
  one's exp(−(θ / step)² / 2)).

Gradients, ``gradients="objective"``: each term's own gradient (the balance term, a count of
bits, through a straight-through mean: μ_k computed from the bits, differentiated as the mean
of x_k). ``gradients="released"``: what the released network back-propagates. Both the
quantisation and the balance layer take the same blob twice (``bottom: "fc8_kevin"`` twice in
``vgg_train*_stage*.prototxt``) and send +g to the first bottom and −g to the second; Caffe
sums the two into that blob, so neither term moves the network. The rotation layer's backward
is the unweighted (x' − x) / N (its weights enter only its value).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BINARY_THRESHOLD = 0.5  # the released layers' binarisation (data > 0.5)


class LatentLayer(nn.Module):
    """fc8_kevin: Linear(features → bits), weights N(0, 0.01²), bias 0, then the activation
    (released: ReLU, ``relu8_kevin``; the paper: sigmoid)."""

    def __init__(self, in_features: int, bits: int, activation: str = "relu") -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, bits)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)
        self.activation = activation

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.linear(features)
        return torch.relu(out) if self.activation == "relu" else torch.sigmoid(out)


def _value_only(value: torch.Tensor) -> torch.Tensor:
    """The value of a term that sends no gradient (the released cancelling bottoms)."""
    return value.detach()


def quantization_loss(x: torch.Tensor, gradients: str = "objective") -> torch.Tensor:
    """MinQuantizeLoss: Σ (b − x)² / (2N), b = [x > 0.5]."""
    bits = (x > BINARY_THRESHOLD).to(x.dtype)
    value = ((bits - x) ** 2).sum() / (2 * x.shape[0])
    return value if gradients == "objective" else _value_only(value)


def balance_loss(x: torch.Tensor, gradients: str = "objective") -> torch.Tensor:
    """EvenDistLoss: Σ_k (μ_k − 0.5)² / (2N), μ_k the fraction of x_k > 0.5 in the batch."""
    bits = (x > BINARY_THRESHOLD).to(x.dtype)
    relaxed = x + (bits - x).detach()  # the value of the bits, the gradient of x
    mean = relaxed.mean(dim=0)
    value = ((mean - 0.5) ** 2).sum() / (2 * x.shape[0])
    return value if gradients == "objective" else _value_only(value)


def rotation_loss(
    rotated: torch.Tensor, original: torch.Tensor, weight_rotated: torch.Tensor, weight_original: torch.Tensor,
    gradients: str = "objective",
) -> torch.Tensor:  # fmt: skip
    """TransformLoss: Σ_n w'_n w_n ‖x'_n − x_n‖² / (2N)."""
    distance = ((rotated - original) ** 2).sum(dim=1)
    count = 2 * rotated.shape[0]
    value = (weight_rotated * weight_original * distance).sum() / count
    if gradients == "objective":
        return value
    unweighted = distance.sum() / count  # the released backward ignores the weights
    return value.detach() + unweighted - unweighted.detach()


def rotation_angles(rotations: int, step: float) -> list[float]:
    """aug_img_faster.m: θ = step · (k − (R + 1) / 2) for k = 1..R (5° · (−2..2) as released)."""
    return [step * (k - (rotations + 1) / 2) for k in range(1, rotations + 1)]


def rotation_weight(angle: float, step: float) -> float:
    """aug_img_faster.m: the rotated image's weight exp(−(k − 3)² / 2), k − 3 = θ / step."""
    return math.exp(-((angle / step) ** 2) / 2)


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Each image ``(n, C, H, W)`` rotated by its angle (degrees; the released angles are
    symmetric about 0, so the sense does not matter) about its centre, nearest-neighbour, zeros outside, the same size: MATLAB's ``imrotate`` (nearest,
    'loose') followed by the centre crop to the original size in aug_img_faster.m."""
    radians = angles.to(images.dtype) * (math.pi / 180)
    cos, sin = torch.cos(radians), torch.sin(radians)
    height, width = images.shape[-2:]
    zero = torch.zeros_like(cos)
    # Output → input in normalised coordinates, with the aspect ratio of non-square images.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * height / width, zero], dim=1),
            torch.stack([sin * width / height, cos, zero], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def deepbit_terms(
    codes: torch.Tensor, gradients: str, alpha: float, beta: float,
    rotated: torch.Tensor | None = None, weights: torch.Tensor | None = None, gamma: float = 0.0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The loss of one step: stage one (``rotated`` None) α·K2(x) + β·K1(x); stage two also
    α·K2(x') + β·K1(x') + γ·K3(x', x) with ``weights`` the rotated images' (the originals' 1)."""
    quantization = quantization_loss(codes, gradients)
    balance = balance_loss(codes, gradients)
    rotation = codes.new_zeros(())
    if rotated is not None:
        quantization = quantization + quantization_loss(rotated, gradients)
        balance = balance + balance_loss(rotated, gradients)
        rotation = rotation_loss(rotated, codes, weights, torch.ones_like(weights), gradients)
    loss = alpha * quantization + beta * balance + gamma * rotation
    if not loss.requires_grad and codes.requires_grad:
        loss = loss + 0 * codes.sum()  # zero gradients: the step still applies weight decay
    return {"loss": loss, "quantization": quantization, "balance": balance, "rotation": rotation}
