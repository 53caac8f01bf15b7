"""The torch side of SSDH (:mod:`hashbench.methods.ssdh`): the encoder (backbone → hash layer
→ tanh), the released pairwise loss, and TensorFlow 1's Adam update (the released optimiser).

Imported by the method only when it trains or encodes, so that describing it stays light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

HEAD_INIT_STD = 1e-3  # my_generator.py get_fc_var: tf.truncated_normal(..., 0.0, 0.001)


class Encoder(nn.Module):
    """Backbone features → Linear(bits) → tanh (``fc8_`` and ``fc9`` of ``my_generator.py``)."""

    def __init__(self, backbone: nn.Module, bits: int, train_backbone: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.train_backbone = train_backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(train_backbone)
        self.hash = nn.Linear(backbone.feature_dim, bits)
        # TensorFlow's truncated normal: redrawn beyond two standard deviations.
        for tensor in (self.hash.weight, self.hash.bias):
            nn.init.trunc_normal_(tensor, std=HEAD_INIT_STD, a=-2 * HEAD_INIT_STD, b=2 * HEAD_INIT_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.train_backbone:
            features = self.backbone(images)
        else:
            with torch.no_grad():
                features = self.backbone(images)
        # float32 hash layer also under CUDA autocast: its sign is the code.
        with torch.autocast(features.device.type, enabled=False):
            return torch.tanh(self.hash(features.float()))


def pair_loss(codes: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """main.py ``loss``: mean over all B × B pairs of |S| · (codes codesᵀ / bits − S)².

    Pairs with S = 0 weigh nothing but count in the mean (``tf.reduce_mean`` over the batch
    matrix), as released.
    """
    inner = codes @ codes.T / codes.shape[1]
    return (similarity.abs() * (inner - similarity) ** 2).mean()


class TFAdam(torch.optim.Optimizer):
    """Adam as TensorFlow 1's ``tf.train.AdamOptimizer`` applies it:

        m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,
        θ ← θ − lr · √(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (√v + ε).

    It differs from ``torch.optim.Adam`` only in where ε sits (outside the bias correction
    of v); with the released ε = 1.0 that matters: the early steps are √(1 − β₂ᵗ) times
    shorter than torch's (0.03 at the first step, 0.3 after 100).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None if closure is None else closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                    state["v"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                grad = parameter.grad
                state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
                state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                rate = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                parameter.addcdiv_(state["m"], state["v"].sqrt().add_(group["eps"]), value=-rate)
        return loss
