"""Torch pieces shared by the deep methods: the straight-through sign, the NT-Xent contrastive
loss, a split's features as a tensor, and optimiser steps that update several networks from one forward pass at the same
time (as the released TensorFlow code does with one ``sess.run``).

Kept apart from :mod:`hashbench.deep` so that describing a method (``hashbench
list``) never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.data import DataSplit


class _StraightThroughSign(torch.autograd.Function):
    """Forward: sign in {−1, +1} (an exact 0 maps to +1); backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:
        return torch.where(values >= 0, torch.ones_like(values), -torch.ones_like(values))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def straight_through_sign(values: torch.Tensor) -> torch.Tensor:
    return _StraightThroughSign.apply(values)


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent over the 2B codes of two views: for each anchor, the other view is the positive
    and the remaining 2B − 2 codes are negatives; cosine similarity / τ; mean over anchors."""
    batch = z_i.shape[0]
    codes = F.normalize(torch.cat([z_i, z_j]).float(), dim=1, eps=1e-8)
    similarity = codes @ codes.T / tau
    eye = torch.eye(2 * batch, dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(eye, float("-inf"))  # an anchor is not its own negative
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(
        similarity.device
    )
    return F.cross_entropy(similarity, positives)


def feature_tensor(split: DataSplit, device: torch.device) -> torch.Tensor:
    """The split's features as one float32 tensor on ``device`` (small enough for memory)."""
    return torch.from_numpy(np.ascontiguousarray(split.features, dtype=np.float32)).to(device)


def simultaneous_step(
    losses: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[nn.Parameter]],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Update each group of parameters from its own loss, all from the same forward pass.

    The released GAN-style code computes every network's gradient at the current weights and
    then applies them all; stepping one optimiser before the next network's backward would
    give that network gradients through already-updated weights.
    """
    names = list(groups)
    gradients = {}
    for index, name in enumerate(names):
        parameters = list(groups[name])
        keep = index < len(names) - 1
        grads = torch.autograd.grad(losses[name], parameters, retain_graph=keep, allow_unused=True)
        gradients[name] = (parameters, grads)
    for name in names:
        parameters, grads = gradients[name]
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = None if grad is None else grad.detach()
        optimizers[name].step()
