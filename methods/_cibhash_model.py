"""The torch side of CIBHash (:mod:`hashbench.methods.cibhash`): the head, the bit
probabilities of a batch, and the loss (binary layer, NT-Xent, Bernoulli KL).

Imported by the method only when it trains or encodes, so that describing it stays light.
"""

from __future__ import annotations

import torch
from torch import nn

from hashbench.errors import UserError
from hashbench.toolkit.layers import nt_xent, straight_through_sign
from hashbench.toolkit.training import autocast

HEAD_HIDDEN = 1024
KL_EPS = 1e-8  # as the released code


def build_head(feature_dim: int, bits: int) -> nn.Sequential:
    """The trained head: Linear(features → 1024) → ReLU → Linear(1024 → bits)."""
    return nn.Sequential(
        nn.Linear(feature_dim, HEAD_HIDDEN),
        nn.ReLU(),
        nn.Linear(HEAD_HIDDEN, bits),
    )


def forward_probabilities(model: nn.ModuleDict, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Bit probabilities of a normalised batch; the head runs in float32."""
    backbone, head = model["backbone"], model["head"]
    with autocast(device):
        if backbone.trainable:
            features = backbone(images)
        else:
            with torch.no_grad():  # frozen trunk: no activations kept for backward
                features = backbone(images)
    # float32 head: bf16 would round many probabilities to exactly 0.5.
    return torch.sigmoid(head(features.float()))


# --------------------------------------------------------------------------------------------
# the pieces of the loss


def binary_layer(probabilities: torch.Tensor, variant: str = "deterministic") -> torch.Tensor:
    """Codes in {−1, +1} from bit probabilities, with a straight-through gradient to them."""
    if variant == "deterministic":
        return straight_through_sign(probabilities - 0.5)
    if variant == "stochastic":
        return straight_through_sign(probabilities - torch.rand_like(probabilities))
    raise UserError(f"unknown CIBHash variant {variant!r}; use deterministic or stochastic")


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) ‖ Bernoulli(sg q)) summed over bits, averaged over the batch."""
    q = q.detach()
    kl = p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS)) + (1 - p) * (
        torch.log(1 - p + KL_EPS) - torch.log(1 - q + KL_EPS)
    )
    return kl.sum(dim=1).mean()


def cibhash_loss(
    p_i: torch.Tensor, p_j: torch.Tensor, tau: float, beta: float, variant: str = "deterministic"
) -> dict[str, torch.Tensor]:
    """The CIBHash objective for the bit probabilities of two views; β = 0 drops the KL term."""
    contrastive = nt_xent(binary_layer(p_i, variant), binary_layer(p_j, variant), tau)
    if beta == 0:
        return {"loss": contrastive, "contrastive": contrastive}
    kl = 0.5 * (bernoulli_kl(p_i, p_j) + bernoulli_kl(p_j, p_i))
    return {"loss": contrastive + beta * kl, "contrastive": contrastive, "kl": kl}
