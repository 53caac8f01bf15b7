"""BGAN: binary generative adversarial networks for image retrieval (Song et al., AAAI 2018).

As in the authors' released code (github.com/htconquer/BGAN: ``BGAN.py``, ``generator.py``,
``deconv.py``, ``create_S.py``; layer defaults from ``google/prettytensor``):

* encoder: a VGG network (VGG-19 in the released code, all of it trained, dropout 0.5 in
  fc6/fc7), with two heads on fc7: μ = tanh(Dense(bits)) and log σ² = Dense(bits);
  codes = sign(μ);
* generator from z = μ + σ·ε (ε ~ N(0, I)): Dense → ELU → 8×8×256, transposed convolutions
  5×5 with stride 2 to 256, 128 and 32 channels (batch norm, ELU), a 1×1 one to the
  image's channels with batch norm and a sigmoid: a 64×64 image;
* discriminator: convolutions 5×5 with 32 (stride 1), 128, 256, 256 (stride 2) channels
  (batch norm, ELU), a 1024-unit Dense + ELU layer (the feature-matching layer), one sigmoid
  unit; the fakes it sees come from z ~ N(0, I).
  Batch norm: ``BGAN.py`` sets ``batch_normalize=True`` as a default scope (with ELU,
  ε = 0.001); prettytensor's ``conv2d`` and the released ``deconv2d`` take that default,
  ``fully_connected`` has no batch norm at all. So every convolution and transposed
  convolution, the last one before the sigmoid included, has batch norm, and no Dense layer
  has;
* the neighbour structure S in {−1, +1}: from the kNN ranking of pre-extracted features,
  for each point i the K2 = 30 points whose top-(K1 + 1) neighbour lists (K1 = 20, the point
  itself first) overlap most with i's own; S = +1 between i and every point of the union of
  those lists (symmetrically), −1 elsewhere; computed once per training split;
* losses, with F the 1024-d feature layer and HWC the number of values of the target image:
  feature matching LL = Σ‖F(x) − F(G(z_x))‖² / HWC (summed over the batch);
  encoder = LL + 10·[mean((μμᵀ − S)²) + mean((μ − sign μ)²)];
  generator = LL − mean log D(G(z_p)); discriminator = −mean[log D(x) + log(1 − D(G(z_p)))]
  (probabilities clipped at 1e-5 as in the released code); the three networks are updated
  from the same forward pass with Adam (lr 1e-3, ε = 1.0); batch 40;
* budget: ``BGAN.py`` trains 51 epochs over 10,000 CIFAR-10 images in 250 full batches
  (the remainder dropped): 12,750 optimiser steps, then writes the codes. The paper profile
  trains for as many epochs of its training split as make those steps (``training.settings``:
  ``steps``, ``epochs``, ``released_steps``). The released ``evaluate.py`` reads the codes of
  epoch 20 (``codes/32_00020_beta.npz``), a file ``BGAN.py`` as released does not write;
  the 51-epoch budget of ``BGAN.py`` is the one used, and the record says so
  (``training.released_budget``).

Profiles (``profile``):

``paper``  the above on natural images: the frozen-by-default project VGG-16 trunk is made
           trainable (``finetune_backbone=true``, as the released code trains its VGG),
           encoder input 224×224 with ImageNet normalisation, reconstruction target the
           image resized to 64×64 in [0, 1]; S from VGG-16 fc7 features (the backbone cache;
           the released code used ResNet features it does not ship, ``cifar_KNN.npz``);
           validated every 2,500 steps (10 released epochs; the released code does not
           validate);
``tiny``   for tiny images (8×8 digits, 28×28 MNIST) on a CPU: the small backbone of
           :mod:`hashbench.toolkit.backbones` trained end to end as the encoder; generator and
           discriminator scaled down (see below) to reconstruct the image at its native
           size; S from the flattened pixels with K1 = K2 = 5 (K1 = 20 and K2 = 30 were
           set for 10,000 training images: on 500 images their union covers most of the
           training set and S carries no information); the encoder's Adam with ε = 1e-8
           instead of the released 1.0 (ε = 1.0 shrinks the steps of every weight whose
           gradients are much smaller than 1, and a small encoder trained from scratch for a
           few hundred steps then barely moves); the generator and the discriminator keep
           the released 1.0 (with 1e-8 the discriminator, whose feature-matching layer has
           no batch norm, wins within a few epochs and the feature-matching loss explodes:
           on digits, 16 bits, mAP@100 0.44 against 0.76); 20 epochs validated every 5
           (260 steps on digits' 500 images), at most 500 steps: 4 epochs of 5,000 images,
           validated every epoch (``training.settings``: ``max_steps``; a 28×28 step takes
           0.3 s on two idle CPU cores, three backward passes through a generator and a
           discriminator at full size); on the CPU, 28×28 and larger images train on 2
           threads in channels-last memory format, smaller ones on one;
``auto``   what the dataset declares, else ``tiny`` for grey images or images smaller than
           32 pixels, ``paper`` otherwise.

Scaling to other image sizes: the generator starts at (H/2^u)×(W/2^u) where u ≤ 3 is the
number of times both sides halve evenly down to at least 2 pixels (64 → 8×8 with u = 3, as
released; 8 → 2×2 with u = 2; 28 → 7×7 with u = 2); the first u transposed convolutions
have stride 2 and the rest stride 1. The discriminator's strided convolutions shrink any
size ('same' padding, 8 → 4 → 2 → 1). ``width`` multiplies every channel count and the
1024-unit feature layer (1.0 released; the tiny profile uses 0.25).

Options recorded in the run record (``training``): ``backbone`` (vgg16 or small),
``finetune_backbone`` (false keeps VGG-16 frozen, a cheaper variant), ``kl_weight`` (one
released version adds the VAE's KL term to the encoder loss; 0 by default, as ``BGAN.py``'s
encoder loss), ``pair_weight`` (10; another released version uses 1), ``pair_scale``
(``none``: μμᵀ against S as released; ``bits``: μμᵀ/bits, so that the targets ±1 are
reachable by binary codes).

Deviations (recorded as ``training.deviations``): VGG-16 (the project's shared backbone,
with torchvision's ImageNet weights) replaces the released VGG-19; S comes from VGG-16 fc7
features instead of the released ResNet features; the protocol's training split replaces
the released 10,000 images (the step count is kept); batches are the epoch's shuffled order
(the last one may be smaller) instead of dropping the remainder; the best validated epoch
is kept (the released code keeps the last); ties in the kNN and overlap rankings go to the
lower index (the released code's quicksort leaves them arbitrary).

Versions: 1, the first; 2, batch norm where the released code has it (not after the
generator's first Dense layer nor the discriminator's feature-matching layer; after the
generator's last transposed convolution), the paper profile's epochs from the released
12,750 steps, and the tiny profile's ε = 1e-8 for the encoder only; 3, the tiny profile's
500-step cap, and on images wider than 16 pixels the small backbone's stride-2 stem, two
CPU threads and channels-last batches (digits' runs are unchanged, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.deep import (
    DeepHashingMethod,
    DeepParams,
    DeepSettings,
    ReleasedBudget,
    TinyBudget,
    check_backbone_weights,
    describe_features,
    training_set_deviation,
)
from hashbench.errors import UserError
from hashbench.params import (
    MAX_BATCH_SIZE,
    MAX_IMAGE_SIZE,
    MAX_ITERATIONS,
    at_least,
    non_negative,
    positive,
)

if TYPE_CHECKING:
    import torch

# What needs torch or scipy is imported where the method trains or encodes, so that
# describing it stays light: the networks and losses (hashbench.methods._bgan_model) and the
# neighbour structure S (hashbench.methods._bgan_neighbours).

# BGAN.py: 10,000 CIFAR-10 training images, batch 40, floor(10,000 / 40) = 250 full batches
# per epoch (data_iterator drops the rest), num_epochs = 51. It does not validate: every
# 10 released epochs (2,500 steps) is the harness's choice.
RELEASED_TRAIN_IMAGES = 10_000
RELEASED_BATCH = 40
RELEASED_EPOCHS = 51
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, RELEASED_EPOCHS, validate_epochs=10, drop_last=True)
# evaluate.py reads codes/32_00020_beta.npz: the codes of epoch 20.
RELEASED_EVALUATED_EPOCH = 20


def _is_backbone(split: DataSplit) -> bool:
    from hashbench.toolkit.backbone_features import BackboneFeatures

    return isinstance(split.feature_source, BackboneFeatures)


# --------------------------------------------------------------------------------------------
# hyperparameters and profiles


@dataclass(frozen=True)
class BGANParams(DeepParams):
    backbone: Literal["auto", "vgg16", "small"] = "auto"  # auto: vgg16 (paper), small (tiny)
    finetune_backbone: bool = True  # train the VGG-16 trunk too (the released code trains its VGG)
    backbone_weights: str | None = None  # a VGG-16 state dict file
    pretrained: bool = True  # False: random VGG-16 weights (recorded; not the paper's setting)
    lr: float = field(default=1e-3, metadata=positive())
    # Adam's ε for all three networks; None: the profile's (paper 1.0 as released; tiny 1e-8
    # for the encoder and the released 1.0 for the generator and the discriminator).
    adam_eps: float | None = field(default=None, metadata=positive())
    batch_size: int = field(default=40, metadata=at_least(2, at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # None: the profile's (paper: the released 12,750 steps)
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between validations; 0: never
    pair_weight: float = field(default=10.0, metadata=non_negative())
    pair_scale: Literal["none", "bits"] = "none"
    kl_weight: float = field(default=0.0, metadata=non_negative())
    k1: int | None = field(default=None, metadata=at_least(1, at_most=MAX_BATCH_SIZE))  # None: the profile's (paper 20)
    k2: int | None = field(default=None, metadata=at_least(1, at_most=MAX_BATCH_SIZE))  # None: the profile's (paper 30)
    image_size: int | None = field(default=None, metadata=at_least(4, at_most=MAX_IMAGE_SIZE))  # reconstruction side; None: 64 (paper) or native (tiny)
    width: float | None = field(default=None, metadata=positive(at_most=64))  # channel multiplier of generator and discriminator; None: the profile's

    def validate(self) -> None:
        check_backbone_weights(self, "bgan")


@dataclass(frozen=True)
class BGANSettings(DeepSettings):
    backbone: str
    train_backbone: bool
    k1: int
    k2: int
    image_size: tuple[int, int] | None  # None: native
    width: float
    adam_eps: float  # the encoder's
    adam_eps_gan: float  # the generator's and the discriminator's


# epochs / eval_every None: from the released step budget (see profile_settings).
PAPER = {"backbone": "vgg16", "k1": 20, "k2": 30, "image_size": 64, "width": 1.0, "adam_eps": 1.0}
TINY = {"backbone": "small", "k1": 5, "k2": 5, "image_size": None, "width": 0.25, "adam_eps": 1e-8}
# The tiny profile's epochs and validations (5 epochs apart) on small training sets: 20 epochs
# of digits' 500 images in batches of 40 are 260 optimiser steps; larger sets stop at 500.
TINY_BUDGET = TinyBudget(epochs=20, eval_every=5, max_steps=500)
RELEASED_ADAM_EPS = 1.0  # BGAN.py: AdamOptimizer(..., epsilon=1.0) for all three networks


# --------------------------------------------------------------------------------------------


class BGAN(DeepHashingMethod):
    name = "bgan"
    family = "generative"
    version = "3"
    description = "Binary generative adversarial networks (Song et al. 2018): VAE-GAN encoder with tanh codes, kNN neighbour structure"
    Params = BGANParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> BGANSettings:
        params = self.params
        values = self.profile_values(PAPER if profile == "paper" else TINY)
        values.update(self.schedule(RELEASED_BUDGET if profile == "paper" else TINY_BUDGET, train, params.batch_size))
        if values["backbone"] == "small" and params.backbone_weights is not None:
            raise UserError("bgan.backbone_weights is set but the small backbone is trained from scratch; drop it or use backbone=vgg16")
        size = values["image_size"]
        values["image_size"] = None if size is None else (int(size), int(size))
        values["width"], values["adam_eps"] = float(values["width"]), float(values["adam_eps"])
        # The tiny profile's small ε is for its encoder only: with it, the generator and the
        # discriminator (without batch norm on its feature layer, as released) race apart.
        values["adam_eps_gan"] = float(params.adam_eps) if params.adam_eps is not None else RELEASED_ADAM_EPS
        return BGANSettings(
            profile=profile,
            lr=params.lr,
            batch_size=params.batch_size,
            # The small backbone is randomly initialised: it is always trained.
            train_backbone=bool(params.finetune_backbone) or values["backbone"] == "small",
            **values,
        )

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        import torch.nn.functional as F
        from torch import nn

        from hashbench.methods._bgan_model import Discriminator, Encoder, Generator, bgan_losses
        from hashbench.methods._bgan_neighbours import neighbour_structure, similarity_block
        from hashbench.toolkit.backbones import build_backbone, preprocess_for, to_float_images
        from hashbench.toolkit.layers import simultaneous_step
        from hashbench.toolkit.training import autocast, image_loader

        params, settings = self.params, self.settings
        height, width, channels = self.input_shape
        target_chw = (channels, *(settings.image_size or (height, width)))
        backbone = build_backbone(
            settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape
        )
        encoder = Encoder(backbone, self.bits, settings.train_backbone)
        generator = Generator(self.bits, target_chw, settings.width)
        discriminator = Discriminator(target_chw, settings.width)
        self.model = self.to_memory_format(
            nn.ModuleDict({"encoder": encoder, "generator": generator, "discriminator": discriminator}).to(self.device)
        )
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        groups = {
            "encoder": [parameter for parameter in encoder.parameters() if parameter.requires_grad],
            "generator": list(generator.parameters()),
            "discriminator": list(discriminator.parameters()),
        }
        eps = {"encoder": settings.adam_eps, "generator": settings.adam_eps_gan, "discriminator": settings.adam_eps_gan}
        optimizers = {name: torch.optim.Adam(group, lr=settings.lr, eps=eps[name]) for name, group in groups.items()}

        # S once per training split, from the split's feature vectors (fc7 / pixels).
        positive = neighbour_structure(train.features, settings.k1, settings.k2, self.device)
        self.context.record.update(
            backbone={
                "name": settings.backbone,
                "weights_source": backbone.weights_source,
                "weights_id": backbone.weights_id,
                "trained": settings.train_backbone,
                "feature_dim": backbone.feature_dim,
            },
            neighbour_structure={
                "features": describe_features(train),
                "k1": settings.k1,
                "k2": settings.k2,
                "metric": "euclidean",
                "positives_per_item": float(positive.sum() / max(len(train), 1)),
            },
            losses={"pair_weight": params.pair_weight, "pair_scale": params.pair_scale, "kl_weight": params.kl_weight},
            optimizer=(
                f"Adam (lr {settings.lr}) for encoder (eps {settings.adam_eps}), generator and discriminator "
                f"(eps {settings.adam_eps_gan}); simultaneous updates"
            ),
            reconstruction_shape=list(target_chw),
            released_budget=(
                f"BGAN.py: {RELEASED_EPOCHS} epochs of {RELEASED_TRAIN_IMAGES:,} images in batches of {RELEASED_BATCH} "
                f"({RELEASED_BUDGET.steps:,} steps) — used; evaluate.py reads the codes of epoch {RELEASED_EVALUATED_EPOCH}"
            ),
        )
        images_of = image_loader(train, self.device)

        def load(positions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
            return positions, images_of(positions)

        def step(batch: tuple[np.ndarray, torch.Tensor]) -> dict[str, torch.Tensor]:
            positions, images = batch
            pixels = self.to_memory_format(to_float_images(images, self.device))
            target = pixels
            if settings.image_size is not None and tuple(pixels.shape[-2:]) != settings.image_size:
                target = F.interpolate(pixels, size=settings.image_size, mode="bilinear", align_corners=False, antialias=True)
            similarity = torch.from_numpy(similarity_block(positive, positions)).to(self.device)
            with autocast(self.device):
                terms = bgan_losses(
                    encoder,
                    generator,
                    discriminator,
                    self.preprocess.from_float(pixels),
                    target,
                    similarity,
                    pair_weight=params.pair_weight,
                    kl_weight=params.kl_weight,
                    pair_scale=params.pair_scale,
                )
            simultaneous_step({name: terms[name] for name in groups}, groups, optimizers)
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer(optimizers, step, train, val, load=load, fingerprint={"weights": backbone.weights_id})

    def deviations(self, train: DataSplit) -> list[str]:
        settings = self.settings
        found = []
        if settings.profile == "tiny":
            found.append(
                "tiny profile: small encoder trained from scratch, quarter-width generator and discriminator at "
                f"native size, K1 = K2 = 5, the encoder's Adam eps 1e-8, {TINY_BUDGET.describe()} "
                "(released: VGG-19, 64 px, K1 = 20, K2 = 30, eps 1, 51 epochs)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "10,000 CIFAR-10 training images")
        if settings.backbone == "vgg16":
            found.append("encoder: VGG-16 with torchvision's ImageNet weights (released: VGG-19)")
        if not settings.train_backbone:
            found.append("encoder trunk frozen (released: all of VGG-19 trained)")
        found.append(
            f"S from the training split's {'VGG-16 fc7 features' if _is_backbone(train) else 'own feature vectors'} "
            "(released: ResNet features, cifar_KNN.npz)"
        )
        found.append("batches: each epoch's shuffled order with a smaller last batch (released: the remainder dropped)")
        if self.validated:
            found.append("the best validated epoch is kept (released: the last epoch's codes)")
        found.append("ties in the kNN and overlap rankings go to the lower index (released: arbitrary)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """sign(μ) (μ ≥ 0 ↦ True) of a batch of uint8 images."""
        from hashbench.toolkit.training import autocast

        with autocast(self.device):
            mean, _ = self.model["encoder"](self.to_memory_format(self.preprocess(batch, self.device)))
        return mean >= 0
