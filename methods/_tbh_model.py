"""The torch side of TBH (:mod:`hashbench.methods.tbh`): the binary activation, the code graph,
the twin-bottleneck network with its critics, and the losses of one batch.

Imported by the method only when it trains or encodes, so that describing it stays light.
The graph exponent is the method's parameter (``TBHParams.exponent``, 1.4 as released).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEGREE_MARGIN = 1e-8  # the released code's OVERFLOW_MARGIN


class _BinaryActivation(torch.autograd.Function):
    """(code, p) from logits: p = sigmoid, code = 1[p > 0.5]; d logits = p(1 − p)(g_code + g_p)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability = torch.sigmoid(logits)
        ctx.save_for_backward(probability)
        return (probability > 0.5).to(probability.dtype), probability

    @staticmethod
    def backward(ctx: Any, grad_code: torch.Tensor, grad_probability: torch.Tensor) -> torch.Tensor:
        (probability,) = ctx.saved_tensors
        return probability * (1 - probability) * (grad_code + grad_probability)


def binary_activation(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _BinaryActivation.apply(logits)


def hamming_adjacency(codes: torch.Tensor, exponent: float) -> torch.Tensor:
    """A_ij = (1 − d_H(b_i, b_j)/bits)^exponent for {0, 1} codes, differentiable in the codes.

    d_H = |b_i·(b_j − 1) + (b_i − 1)·b_j| summed over bits, as in the released code (exact for
    binary codes; the form carries the straight-through gradient into the encoder).
    """
    bits = codes.shape[1]
    shifted = codes - 1
    distance = torch.abs(codes @ shifted.T + shifted @ codes.T) / bits
    return torch.pow((1 - distance).clamp_min(0), exponent)


def normalized_adjacency(adjacency: torch.Tensor) -> torch.Tensor:
    """D^−½ A D^−½ with D the row sums of A (plus the released code's 1e-8 margin)."""
    inverse_root = torch.pow(adjacency.sum(dim=1) + DEGREE_MARGIN, -0.5)
    return inverse_root[:, None] * adjacency * inverse_root[None, :]


def adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean BCE(1, D(real)) + mean BCE(0, D(fake)) of a logistic critic (from its logits)."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


_OUTPUTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class TwinBottleneckNet(nn.Module):
    """Encoder, twin bottlenecks with the graph layer, decoder, and the two critics."""

    def __init__(
        self, input_dim: int, bits: int, hidden: int, continuous: int, decoder_output: str, exponent: float
    ) -> None:
        super().__init__()
        self.exponent = exponent
        self.encoder = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU())
        self.binary_head = nn.Linear(hidden, bits)
        self.continuous_head = nn.Sequential(nn.Linear(hidden, continuous), nn.Sigmoid())
        self.graph = nn.Linear(continuous, continuous)  # the GCN layer's Dense
        self.decoder = nn.Sequential(
            nn.Linear(continuous, hidden), nn.ReLU(), nn.Linear(hidden, input_dim), _OUTPUTS[decoder_output]()
        )
        self.code_critic = nn.Linear(bits, 1)
        self.latent_critic = nn.Linear(continuous, 1)
        for module in self.modules():  # Keras Dense defaults, as the released code
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def actor_parameters(self) -> list[nn.Parameter]:
        modules = (self.encoder, self.binary_head, self.continuous_head, self.graph, self.decoder)
        return [parameter for module in modules for parameter in module.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [*self.code_critic.parameters(), *self.latent_critic.parameters()]

    def bottlenecks(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(features)
        codes, _ = binary_activation(self.binary_head(hidden))
        return codes, self.continuous_head(hidden)

    def twin(self, codes: torch.Tensor, continuous: torch.Tensor) -> torch.Tensor:
        """z' = sigmoid(Â · Dense(continuous)), Â from the codes of the batch."""
        adjacency = normalized_adjacency(hamming_adjacency(codes.to(continuous.dtype), self.exponent))
        return torch.sigmoid(adjacency @ self.graph(continuous))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        codes, continuous = self.bottlenecks(features)
        latent = self.twin(codes, continuous)
        return {"codes": codes, "latent": latent, "reconstruction": self.decoder(latent)}


def tbh_losses(model: TwinBottleneckNet, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Actor and critic losses of one batch (the released ``train_step``), with priors drawn here."""
    out = model(features)
    codes, latent = out["codes"], out["latent"]
    # Bernoulli(0.5) codes and U[0, 1] latents: the critics' "real" samples.
    prior_codes = (torch.rand_like(codes) > 0.5).to(codes.dtype)
    prior_latent = torch.rand_like(latent)
    code_adv = adversarial_loss(model.code_critic(prior_codes), model.code_critic(codes))
    latent_adv = adversarial_loss(model.latent_critic(prior_latent), model.latent_critic(latent))
    reconstruction = 0.5 * ((out["reconstruction"] - features) ** 2).sum()
    return {
        "actor": reconstruction - code_adv - latent_adv,
        "critic": code_adv + latent_adv,
        "reconstruction": reconstruction,
        "code_adversarial": code_adv,
        "latent_adversarial": latent_adv,
    }
