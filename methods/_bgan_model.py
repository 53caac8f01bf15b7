"""The torch side of BGAN (:mod:`hashbench.methods.bgan`): encoder, generator and
discriminator, and the losses of one batch.

Imported by the method only when it trains or encodes, so that describing it stays light.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROBABILITY_FLOOR = 1e-5  # the released code clips D's outputs here before the logs
LOG_VAR_CLIP = 10.0  # and the KL term's inputs to ±10
HEAD_INIT_STD = 1e-3
BN_EPS = 1e-3  # BGAN.py's defaults scope: variance_epsilon=0.001


def upsampling_plan(height: int, width: int, max_steps: int = 3) -> int:
    """How many stride-2 layers the generator uses: halvings of both sides down to >= 2 pixels."""
    steps = 0
    while steps < max_steps and height % 2 == 0 and width % 2 == 0 and height // 2 >= 2 and width // 2 >= 2:
        height, width, steps = height // 2, width // 2, steps + 1
    return steps


def _channels(count: int, width: float) -> int:
    return max(1, round(count * width))


def _normalised(layer: nn.Module, channels: int, activation: nn.Module) -> list[nn.Module]:
    """A (transposed) convolution with batch norm, then its activation (prettytensor's order)."""
    return [layer, nn.BatchNorm2d(channels, eps=BN_EPS), activation]


def xavier_init(module: nn.Module) -> None:
    """prettytensor's defaults (the released generator and discriminator): Xavier weights, zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    """z (bits) → image (C, H, W) in [0, 1]."""

    def __init__(self, bits: int, image_chw: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = image_chw
        steps = upsampling_plan(height, width_px)
        self.start = (height >> steps, width_px >> steps)
        base = _channels(256, width)
        self.base = base
        # prettytensor's fully_connected has no batch norm: Dense → ELU.
        self.fc = nn.Sequential(nn.Linear(bits, base * self.start[0] * self.start[1]), nn.ELU())
        layers: list[nn.Module] = []
        in_channels = base
        for index, out in enumerate((256, 128, 32)):
            stride = 2 if index < steps else 1
            out_channels = _channels(out, width)
            deconv = nn.ConvTranspose2d(in_channels, out_channels, 5, stride=stride, padding=2, output_padding=stride - 1)
            layers += _normalised(deconv, out_channels, nn.ELU())
            in_channels = out_channels
        # The last deconv2d takes the scope's batch norm too; only its activation is given.
        layers += _normalised(nn.ConvTranspose2d(in_channels, channels, 1), channels, nn.Sigmoid())
        self.deconvs = nn.Sequential(*layers)
        xavier_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(z).view(z.shape[0], self.base, *self.start)
        return self.deconvs(hidden)


class Discriminator(nn.Module):
    """image → (probability of being real, the feature-matching layer)."""

    def __init__(self, image_chw: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        channels, height, width_px = image_chw
        layers: list[nn.Module] = []
        in_channels = channels
        for out, stride in ((32, 1), (128, 2), (256, 2), (256, 2)):
            out_channels = _channels(out, width)
            layers += _normalised(nn.Conv2d(in_channels, out_channels, 5, stride=stride, padding=2), out_channels, nn.ELU())
            in_channels = out_channels
            if stride == 2:
                height, width_px = (height + 1) // 2, (width_px + 1) // 2
        self.convs = nn.Sequential(*layers, nn.Flatten())
        feature_dim = _channels(1024, width)
        # The feature-matching layer: fully_connected(1024, elu), no batch norm.
        self.features = nn.Sequential(nn.Linear(in_channels * height * width_px, feature_dim), nn.ELU())
        self.output = nn.Linear(feature_dim, 1)
        xavier_init(self)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.convs(images))
        return torch.sigmoid(self.output(features).float()), features.float()


class Encoder(nn.Module):
    """Backbone → (μ = tanh(Dense), log σ² = Dense)."""

    def __init__(self, backbone: nn.Module, bits: int, train_backbone: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.train_backbone = train_backbone
        for parameter in backbone.parameters():
            parameter.requires_grad_(train_backbone)
        self.mean_head = nn.Linear(backbone.feature_dim, bits)
        self.log_var_head = nn.Linear(backbone.feature_dim, bits)
        for head in (self.mean_head, self.log_var_head):  # the released heads: N(0, 0.001²), truncated
            for tensor in (head.weight, head.bias):
                nn.init.trunc_normal_(tensor, std=HEAD_INIT_STD, a=-2 * HEAD_INIT_STD, b=2 * HEAD_INIT_STD)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train_backbone:
            features = self.backbone(images)
        else:
            with torch.no_grad():  # frozen trunk: keep no activations for backward
                features = self.backbone(images)
        features = features.float()
        # float32 heads also under CUDA autocast: μ's sign is the code, and μμᵀ meets S.
        with torch.autocast(features.device.type, enabled=False):
            return torch.tanh(self.mean_head(features)), self.log_var_head(features)


def pair_loss(mean: torch.Tensor, similarity: torch.Tensor, scale: str = "none") -> torch.Tensor:
    """mean((μμᵀ − S)²) + mean((μ − sign μ)²); ``scale="bits"`` compares μμᵀ/bits with S."""
    inner = mean @ mean.T
    if scale == "bits":
        inner = inner / mean.shape[1]
    return ((inner - similarity) ** 2).mean() + ((mean - torch.sign(mean).detach()) ** 2).mean()


def discriminator_loss(real_probability: torch.Tensor, fake_probability: torch.Tensor) -> torch.Tensor:
    """−mean[log D(x) + log(1 − D(G(z)))], probabilities clipped at 1e-5 as released."""
    floor = PROBABILITY_FLOOR
    return -(torch.log(real_probability.clamp(floor, 1.0)) + torch.log((1 - fake_probability).clamp(floor, 1.0))).mean()


def generator_adversarial_loss(fake_probability: torch.Tensor) -> torch.Tensor:
    """−mean log D(G(z)) (the non-saturating generator loss of the released code)."""
    return -torch.log(fake_probability.clamp(PROBABILITY_FLOOR, 1.0)).mean()


def bgan_losses(
    encoder: Encoder,
    generator: Generator,
    discriminator: Discriminator,
    encoder_input: torch.Tensor,
    target: torch.Tensor,
    similarity: torch.Tensor,
    *,
    pair_weight: float = 10.0,
    kl_weight: float = 0.0,
    pair_scale: str = "none",
) -> dict[str, torch.Tensor]:
    """The three losses of one batch (the released ``inference`` and ``loss``)."""
    mean, log_var = encoder(encoder_input)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    reconstruction = generator(z)
    _, reconstruction_features = discriminator(reconstruction)
    prior = generator(torch.randn_like(mean))
    real_probability, real_features = discriminator(target)
    fake_probability, _ = discriminator(prior)
    values = target[0].numel()
    feature_matching = ((real_features - reconstruction_features) ** 2).sum() / values
    pairs = pair_loss(mean, similarity, pair_scale)
    clipped_log_var = log_var.clamp(-LOG_VAR_CLIP, LOG_VAR_CLIP)
    clipped_mean = mean.clamp(-LOG_VAR_CLIP, LOG_VAR_CLIP)
    kl = (-0.5 * (1 + clipped_log_var - clipped_mean**2 - clipped_log_var.exp()).sum(dim=1)).sum() / values
    generator_adversarial = generator_adversarial_loss(fake_probability)
    encoder_loss = feature_matching + pair_weight * pairs
    if kl_weight:
        encoder_loss = encoder_loss + kl_weight * kl
    return {
        "encoder": encoder_loss,
        "generator": feature_matching + generator_adversarial,
        "discriminator": discriminator_loss(real_probability, fake_probability),
        "feature_matching": feature_matching,
        "pair": pairs,
        "kl": kl,
        "generator_adversarial": generator_adversarial,
        "reconstruction_mse": F.mse_loss(reconstruction.float(), target.float()),
    }
