"""Bi-half (Li & van Gemert, AAAI 2021): deep unsupervised hashing by maximising bit entropy.

As in the authors' released image-hashing code (``ImageHashing/Cifar10_I.py``):

* features x = VGG-16 fc7 of the images (frozen), one trained layer u = Wx + b;
* the bi-half layer while training: for each bit, the ⌊N/2⌋ items of the batch with the
  largest u get +1 and the rest −1 (each bit splits the batch in half, the optimal transport
  of u to a half-half distribution); backward, the gradient g becomes g + γ·(u − b)/numel(b)
  with γ = 6; codes at test time are sign(u) (0 ↦ +1 here);
* loss = MSE between cos(b_i, b_j) and cos(x_i, x_j) over pairs formed by the first and the
  second half of each batch;
* SGD (lr 1e-4, momentum 0.9, weight decay 5e-4) on the layer, the rate × 0.1 every 120
  epochs, batch 32, 300 epochs, scored every 10 epochs.

Input, ``feature_dropout`` and profiles as GreedyHash (:mod:`hashbench.methods.greedyhash`):
``paper`` the above with Dropout(0.5) on the cached fc7 features while training (the
released code's VGG-16 runs in train mode); ``tiny`` centred pixels, Adam (lr 1e-3), batch
100, 100 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hashbench.methods._similarity import SimilarityHashParams, SimilarityPreservingHash
from hashbench.params import non_negative


@dataclass(frozen=True)
class BiHalfParams(SimilarityHashParams):
    gamma: float = field(default=6.0, metadata=non_negative())  # weight of the (u − b) term in the backward pass


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


class BiHalf(SimilarityPreservingHash):
    name = "bihalf"
    description = "Bi-half (Li & van Gemert 2021): per-bit half/half split of the batch, cosine-similarity loss"
    Params = BiHalfParams
    PAPER = {
        "optimizer": "sgd", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": 32, "epochs": 300,
        "eval_every": 10, "lr_step": 120, "feature_dropout": 0.5, "centre": False,
    }

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        return bihalf_layer(hidden, self.params.gamma)

    def extra_record(self) -> dict[str, Any]:
        return {"gamma": self.params.gamma}
