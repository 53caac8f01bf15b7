"""The torch side of SGH (:mod:`hashbench.methods.sgh`): the doubly stochastic neuron, the
linear encoder and Gaussian decoder, and the released loss of one batch.

Imported by the method only when it trains or encodes, so that describing it stays light.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# The released clip of the per-dimension variance that initialises the decoder's scale.
VARIANCE_FLOOR = 1e-7


class _DoublyStochasticNeuron(torch.autograd.Function):
    """(h, p) from logits and thresholds ε: p = sigmoid(logits), h = (sign(p − ε) + 1)/2.

    Backward, the released approximate distributional derivative: d logits = p(1 − p)·(g_h +
    g_p), d ε = g_h.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability = torch.sigmoid(logits)
        ctx.save_for_backward(probability)
        return (torch.sign(probability - epsilon) + 1) / 2, probability

    @staticmethod
    def backward(ctx: Any, grad_codes: torch.Tensor, grad_probability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (probability,) = ctx.saved_tensors
        return probability * (1 - probability) * (grad_codes + grad_probability), grad_codes


def doubly_stochastic_neuron(logits: torch.Tensor, epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _DoublyStochasticNeuron.apply(logits, epsilon)


def sigmoid_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """max(l, 0) − l·t + log(1 + exp(−|l|)) elementwise, differentiable in the targets too
    (the composite form of the released TensorFlow op)."""
    return F.relu(logits) - logits * targets + torch.log1p(torch.exp(-logits.abs()))


class SGHNet(nn.Module):
    """q(h|x) = Bernoulli(sigmoid(W x + b)); x̂ = (h U) ⊙ |s| + m, s and m trained."""

    def __init__(self, input_dim: int, bits: int, mean: torch.Tensor, variance: torch.Tensor) -> None:
        super().__init__()
        self.encoder = nn.Linear(input_dim, bits)
        self.decoder = nn.Parameter(torch.empty(bits, input_dim))
        self.scale = nn.Parameter(variance.clamp_min(VARIANCE_FLOOR).detach().clone())
        self.shift = nn.Parameter(mean.detach().clone())
        # The released initialisers: normal with standard deviation 1/sqrt(fan-in) for both
        # weights, a standard normal encoder bias.
        with torch.no_grad():
            self.encoder.weight.normal_(0.0, 1.0 / math.sqrt(input_dim))
            self.encoder.bias.normal_(0.0, 1.0)
            self.decoder.normal_(0.0, 1.0 / math.sqrt(bits))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.encoder(features)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes @ self.decoder) * self.scale.abs() + self.shift


def sgh_losses(
    model: SGHNet, features: torch.Tensor, alpha: float, beta: float, stochastic: bool
) -> dict[str, torch.Tensor]:
    """The released loss of one batch and its terms (sums over the batch, as released).

    loss = ½‖x̂ − x‖² + α·Σ CE(logits, h) + β·½‖U‖² + β·½‖W‖²; ε = 0.5 (the released
    script's deterministic neuron) or, ``stochastic``, ε ~ U(0, 1) per code.
    """
    logits = model.logits(features)
    epsilon = torch.rand_like(logits) if stochastic else torch.full_like(logits, 0.5)
    codes, _ = doubly_stochastic_neuron(logits, epsilon)
    reconstruction = 0.5 * ((model.decode(codes) - features) ** 2).sum()
    entropy = sigmoid_cross_entropy(logits, codes).sum()
    decay = 0.5 * (model.decoder**2).sum() + 0.5 * (model.encoder.weight**2).sum()
    loss = reconstruction + alpha * entropy + beta * decay
    return {"loss": loss, "reconstruction": reconstruction, "cross_entropy": entropy, "weight_decay": decay}
