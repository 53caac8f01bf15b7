"""SSDH: semantic structure-based unsupervised deep hashing (Yang, Deng, Liu, Liu, Tao; IJCAI 2018).

As in the authors' released code (github.com/yangerkun/IJCAI2018_SSDH: ``main.py``,
``my_generator.py``, ``ops.py``), with the structure in :mod:`hashbench.methods._ssdh_structure`
and the network, loss and optimiser in :mod:`hashbench.methods._ssdh_model`:

* the semantic structure, once, from VGG-16 fc7 features (after ReLU, no dropout) of the
  training images: the cosine distances of all pairs, a 100-bin histogram (width 0.01) whose
  fullest bin's start m splits them into two halves, each mirrored about m and fitted by a
  Gaussian; S = +1 where d < m_l − α σ_l, −1 where d > m_r + β σ_r, 0 elsewhere, α = β = 2;
* the network: VGG-16 (all of it trained, dropout 0.5 after fc6 and fc7 while training), fc7 →
  Linear(bits) (weights and biases from a normal of std 0.001 truncated at 2σ) → tanh;
* the loss: the mean over the B × B pairs of a batch of |S_ij| (b_i·b_j / bits − S_ij)², b the
  tanh outputs (zero entries of S weigh nothing but count in the mean);
* TensorFlow's Adam (lr 1e-3, ε = 1.0: ε outside v's bias correction, ``TFAdam``), batch 24,
  ``pre_epochs = 10`` epochs of floor(10,000 / 24) = 416 full batches of its 10,000 training
  images (MIRFlickr, the only split it ships): 4,160 optimiser steps, the test queries scored
  every 2 epochs (832 steps); codes = 1 where the tanh output is > 0 (an exact 0 gives 0).
  ``num_epochs = 100`` in ``main.py`` is never used.

The paper profile keeps the 4,160 steps on any training split (``training.settings``:
``steps``, ``epochs``, ``released_steps``: 20 epochs of 209 batches on 5,000 images), and
validates every 832 steps on the validation split when there is one, keeping the best epoch.

Profiles (``profile``):

``paper``  the above on natural images: the project VGG-16 trunk made trainable, torchvision's
           ImageNet weights (the user's file or torch hub's cache), 224×224 input with ImageNet
           normalisation; S from the VGG-16 fc7 feature cache of the training split;
``tiny``   for tiny images (8×8 digits, 28×28 MNIST) on a CPU: the small backbone trained from
           scratch under the hash layer; S from the dataset's own vectors (the pixels), since
           there are no VGG-16 features; α = β = 0.5 (at the released 2, on 8×8 digits only
           2 % of the pairs are dissimilar and the codes collapse: mAP@100 0.26 at 16 bits,
           below the untrained network's 0.33; at 0.5, 61 % of the pairs are labelled and it
           reaches 0.57–0.68 over three seeds, LSH 0.51); Adam's ε = 1e-8 (with the released
           1.0 a network trained from scratch barely moves: 0.29); 60 epochs validated every
           20 (1,260 steps on digits' 500 images), at most 2,400 steps;
``auto``   what the dataset declares, else ``tiny`` for grey or small images, ``paper`` otherwise.

Deviations (``training.deviations``): torchvision's VGG-16 weights and preprocessing
(released: ``vgg.npy`` Caffe weights, BGR mean-subtracted 0–255 pixels, ``imresize``);
batches of each epoch's shuffled order with a smaller last batch (released: the remainder of
floor(n / 24) dropped); the best validated epoch is kept (released: every evaluation scored the
test queries and the run ends at its last epoch); the protocol's training split (the steps
are kept); on tiny images the structure from the pixels and the small backbone. For CIFAR-10
the released code ships no split: the paper's (1,000 queries, 100 per class; the other 59,000
the database; 500 per class for training; mAP@5000) is protocol ``ssdh-paper``.

Versions: 1, the first.
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
    backbone_features,
    check_backbone_weights,
    describe_features,
    training_set_deviation,
)
from hashbench.errors import UserError
from hashbench.params import (
    MAX_BATCH_SIZE,
    MAX_ITERATIONS,
    at_least,
    in_range,
    non_negative,
    positive,
)

if TYPE_CHECKING:
    import torch

# main.py: n_train = 10,000, batch_size = 24, total_batch = floor(10,000 / 24) = 416 (the rest
# dropped), pre_epochs = 10, the test queries scored when (epoch + 1) % 2 == 0.
RELEASED_TRAIN_IMAGES = 10_000
RELEASED_BATCH = 24
RELEASED_EPOCHS = 10
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, RELEASED_EPOCHS, validate_epochs=2, drop_last=True)
RELEASED_ADAM_EPS = 1.0  # AdamOptimizer(lr_E, epsilon=1.0)
RELEASED_PROTOCOL = "ssdh-paper"
RELEASED_ALPHA = RELEASED_BETA = 2.0  # main.py: l_mean - 2*l_std, r_mean + 2*r_std
PAPER = {"adam_eps": RELEASED_ADAM_EPS, "alpha": RELEASED_ALPHA, "beta": RELEASED_BETA}
# Tiny images: on 8×8 pixels the right half's tail beyond 2σ holds 2 % of the pairs, too few
# dissimilar pairs to keep the codes apart (digits, 16 bits: mAP@100 0.26, below the untrained
# 0.33); at 0.5σ 61 % of the pairs are labelled (0.62, LSH 0.51).
TINY = {"adam_eps": 1e-8, "alpha": 0.5, "beta": 0.5}
TINY_BUDGET = TinyBudget(epochs=60, eval_every=20, max_steps=2_400)


@dataclass(frozen=True)
class SSDHParams(DeepParams):
    # d_l = m_l − α σ_l and d_r = m_r + β σ_r; None: the profile's (paper: the released 2)
    alpha: float | None = field(default=None, metadata=non_negative(at_most=100))
    beta: float | None = field(default=None, metadata=non_negative(at_most=100))
    lr: float = field(default=1e-3, metadata=positive())
    adam_eps: float | None = field(default=None, metadata=positive())  # None: the profile's (paper 1.0)
    adam: Literal["tensorflow", "torch"] = "tensorflow"  # where ε sits (TFAdam) or torch.optim.Adam
    batch_size: int = field(default=RELEASED_BATCH, metadata=at_least(2, "pairs of items", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # None: the profile's
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs; 0: never
    dropout: float = field(default=0.5, metadata=in_range(0, 1, high_open=True))  # VGG-16's, after fc6 and fc7
    backbone: Literal["auto", "vgg16", "small"] = "auto"  # auto: vgg16 (paper), small (tiny)
    finetune_backbone: bool = True  # train VGG-16 too, as released; false: only the hash layer
    backbone_weights: str | None = None  # a VGG-16 state dict file
    pretrained: bool = True  # False: random VGG-16 weights (not the paper's setting)

    def validate(self) -> None:
        check_backbone_weights(self, "ssdh")


@dataclass(frozen=True)
class SSDHSettings(DeepSettings):
    backbone: str
    train_backbone: bool
    adam_eps: float
    alpha: float
    beta: float


class SSDH(DeepHashingMethod):
    name = "ssdh"
    family = "similarity"
    version = "1"
    description = "Semantic structure-based unsupervised deep hashing (Yang et al. 2018): half-Gaussian fit of fc7 cosine distances, +1/-1/0 pairs, tanh codes"
    Params = SSDHParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> SSDHSettings:
        params = self.params
        backbone = params.backbone if params.backbone != "auto" else ("vgg16" if profile == "paper" else "small")
        if backbone == "small" and params.backbone_weights is not None:
            raise UserError("ssdh.backbone_weights is set but the small backbone is trained from scratch; drop it or use backbone=vgg16")
        values = {key: float(value) for key, value in self.profile_values(PAPER if profile == "paper" else TINY).items()}
        values.update(self.schedule(RELEASED_BUDGET if profile == "paper" else TINY_BUDGET, train, params.batch_size))
        return SSDHSettings(
            profile=profile, lr=params.lr, batch_size=params.batch_size, backbone=backbone,
            train_backbone=bool(params.finetune_backbone) or backbone == "small", **values,
        )  # fmt: skip

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch

        from hashbench.methods._ssdh_model import Encoder, TFAdam, pair_loss
        from hashbench.methods._ssdh_structure import semantic_structure
        from hashbench.toolkit.backbones import build_backbone, preprocess_for
        from hashbench.toolkit.training import autocast, image_loader, trainable

        params, settings = self.params, self.settings
        backbone = build_backbone(
            settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape
        )
        for module in backbone.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = params.dropout
        self.model = self.to_memory_format(Encoder(backbone, self.bits, settings.train_backbone).to(self.device))
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        optimizer_class = TFAdam if params.adam == "tensorflow" else torch.optim.Adam
        optimizer = optimizer_class(trainable(self.model), lr=settings.lr, eps=settings.adam_eps)

        # S once per training split, from its feature vectors (VGG-16 fc7 cache, or pixels).
        self.structure = semantic_structure(train.features, settings.alpha, settings.beta)
        self.context.record.update(
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id,
                      "trained": settings.train_backbone, "feature_dim": backbone.feature_dim},
            semantic_structure={"features": describe_features(train), **self.structure.summary()},
            optimizer=f"{'TensorFlow' if params.adam == 'tensorflow' else 'torch'} Adam, lr {settings.lr}, eps {settings.adam_eps}",
        )  # fmt: skip
        images_of = image_loader(train, self.device)

        def load(positions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
            return positions, images_of(positions)

        def step(batch: tuple[np.ndarray, torch.Tensor]) -> dict[str, torch.Tensor]:
            positions, images = batch
            similarity = torch.from_numpy(self.structure.block(positions)).to(self.device)
            with autocast(self.device):
                codes = self.model(self.to_memory_format(self.preprocess(images, self.device)))
            loss = pair_loss(codes, similarity)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach()}

        self.run_trainer({"adam": optimizer}, step, train, val, load=load, fingerprint={"weights": backbone.weights_id})

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """1 where the tanh output is > 0 (``ops.py``/``main.py``: ``codes > 0``)."""
        from hashbench.toolkit.training import autocast

        with autocast(self.device):
            return self.model(self.to_memory_format(self.preprocess(batch, self.device))) > 0

    def deviations(self, train: DataSplit) -> list[str]:
        settings, params = self.settings, self.params
        found = []
        if settings.profile == "tiny":
            found.append(
                f"tiny profile: small backbone trained from scratch, alpha = beta = {TINY['alpha']:g}, Adam eps {TINY['adam_eps']:g}, "
                f"{TINY_BUDGET.describe()} (released: VGG-16 at 224 px, alpha = beta = 2, eps 1.0, 4,160 steps)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "main.py's 10,000 MIRFlickr images")
        if settings.profile == "paper" and settings.backbone == "small":
            found.append("the small backbone trained from scratch (released: VGG-16)")
        if settings.backbone == "vgg16":
            found.append("VGG-16 with torchvision's ImageNet weights and preprocessing (released: vgg.npy Caffe weights, BGR mean-subtracted pixels)")
        if not settings.train_backbone:
            found.append("VGG-16 frozen (released: all of it trained)")
        source = backbone_features(train)
        if source is None or source.backbone != "vgg16":
            found.append("S from the training split's own feature vectors (released: VGG-16 fc7 features)")
        if params.adam == "torch":
            found.append("torch's Adam, eps inside the bias correction (released: TensorFlow's)")
        found.append("batches: each epoch's shuffled order with a smaller last batch (released: floor(n / 24) full batches)")
        if self.validated:
            found.append("the best validated epoch is kept (released: the test queries scored every 2 epochs, the last epoch kept)")
        return found
