"""The torch side of GreedyHash and Bi-half (:mod:`hashbench.methods._similarity`,
:mod:`hashbench.methods.greedyhash`, :mod:`hashbench.methods.bihalf`): the shared
cosine-similarity loss and live fc7 network, GreedyHash's cubic penalty and Bi-half's layer.

Imported by the methods only when they train or encode, so that describing them stays light.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hashbench.toolkit.backbones import vgg16_after_fc6


def cosine_similarity_loss(codes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """MSE between the cosine similarities of codes and of features over pairs of the batch.

    As the released GreedyHash and Bi-half code: the first half of the batch is paired with
    the second half, item by item; an odd item out is left unpaired.
    """
    half = codes.shape[0] // 2
    code_similarity = F.cosine_similarity(codes[:half], codes[half : 2 * half])
    feature_similarity = F.cosine_similarity(features[:half], features[half : 2 * half])
    return F.mse_loss(code_similarity, feature_similarity)


def live_network(fc7: nn.Linear, bits: int, dropout: float) -> nn.ModuleDict:
    """fc7 run live on cached fc6 features, then the hash layer: ``tail`` is VGG-16's
    classifier after fc6's ReLU (Dropout, fc7 frozen, ReLU, Dropout), giving x; ``head`` is
    the trained layer h = Wx + b."""
    return nn.ModuleDict({"tail": vgg16_after_fc6(fc7, dropout), "head": nn.Linear(fc7.out_features, bits)})


# --------------------------------------------------------------------------------------------
# GreedyHash


def cubic_penalty(hidden: torch.Tensor) -> torch.Tensor:
    """mean(| |h| − 1 |³), the released code's penalty towards |h| = 1."""
    return torch.abs(torch.pow(torch.abs(hidden) - 1, 3)).mean()


# --------------------------------------------------------------------------------------------
# Bi-half


def half_split(values: torch.Tensor) -> torch.Tensor:
    """Per column, +1 for the ⌊N/2⌋ largest entries and −1 for the others (ties: lower row first)."""
    count = values.shape[0]
    order = torch.sort(values, dim=0, descending=True, stable=True).indices
    ranked = torch.full_like(values, -1.0)
    ranked[: count // 2] = 1.0
    return torch.empty_like(values).scatter_(0, order, ranked)


class _BiHalf(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, gamma: float) -> torch.Tensor:
        codes = half_split(values)
        ctx.save_for_backward(values, codes)
        ctx.gamma = gamma
        return codes

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        values, codes = ctx.saved_tensors
        return grad_output + ctx.gamma * (values - codes) / codes.numel(), None


def bihalf_layer(values: torch.Tensor, gamma: float = 6.0) -> torch.Tensor:
    """The bi-half layer: balanced codes per bit forward, g + γ(u − b)/numel backward."""
    return _BiHalf.apply(values, gamma)
