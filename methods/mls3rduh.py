"""MLS3RDUH: deep unsupervised hashing via manifold-based local semantic similarity structure
reconstructing (Tu, Mao, Wei; IJCAI 2020).

As in the authors' released code (github.com/rongchengtu1/MLS3RDUH, commit 5c9a99f:
``MLS3RDUH.py``, ``utils/hash_model.py``, ``utils/calc_hr.py``; PyTorch 0.3):

* S, once before training, from the fc7 features (after its ReLU) of the training images:
  cosine similarities, the mutual kNN graph of the ``int(0.06·N)`` nearest items in cosine,
  the manifold similarity (1 − α)(I − αD^−½AD^−½)^−1 with α = 0.99 and its
  ``int(0.06·1.5·N)`` nearest items; S = +1 where both lists agree, −1 for kNN neighbours the
  manifold rejects and for pairs of cosine below 1e-4, 2·cos − 1 for every other pair
  (:mod:`hashbench.methods._mls3rduh_structure`, which describes each step);
* the network (``hash_model.py``, VGG-16 branch): VGG-16's convolutions and classifier up to
  fc7's ReLU, Dropout, Linear(4096, bits), tanh = H; every layer trained;
* loss = Σ log cosh(HHᵀ/bits − S) / B² over the batch; the quantisation term
  Σ(sign H − H)²/B² is computed and printed but not optimised (the script defines
  ``lamda = 0.001`` and never uses it): ``quantization_weight`` is 0 by default, the paper's
  variant sets it;
* SGD (lr 0.04, no momentum, weight decay 1e-5) on all parameters, batch 128, 150 epochs;
  ``StepLR(step_size=500, gamma=0.5)`` stepped once per epoch, so the rate never decays
  within the 150 epochs (kept as an interval of 500 released epochs in steps);
* codes: sign(H) of the network in eval mode after the last epoch; no validation, no model
  selection; mAP@5000 (``calc_topMap``: a query without a hit in the top k counts 0).

The released script runs MS-COCO (``model_name = 'alexnet'``, list files ``train_ind.txt``,
``test_ind.txt``, ``database_ind.txt``, not shipped) and contains no CIFAR-10 split. Its
training-set size is therefore not known from the repository: the budget takes the 10,000
training images of the usual MS-COCO protocol (hashbench's ``coco``), 150 epochs of
⌈10,000/128⌉ = 79 steps = 11,850 optimiser steps, validated every 30 released epochs (2,370
steps; the harness's choice).

Profiles: ``paper`` (the above on natural images: the project's VGG-16 trained end to end,
S from the training split's VGG-16 fc7 features of the feature cache; the released steps on
this training set: ``training.settings`` has ``steps``, ``epochs``, ``released_steps``);
``tiny`` (tiny images on a CPU: the small backbone of :mod:`hashbench.toolkit.backbones`
trained from scratch, Linear + tanh on its 256 features, S from the dataset's own vectors
(the pixels) with the released ratios and α, SGD with momentum 0.9 at lr 0.04 and weight
decay 1e-5, batch 64, 200 epochs validated every 20, at most 2,400 steps; momentum because,
with the released plain SGD the small network trained from scratch learns too slowly: on
digits at 16 bits (seed 0) mAP@100 0.49 after these 200 epochs, against 0.31 untrained and
0.51 for LSH, and 0.78 with momentum 0.9);
``auto``.

Deviations (``training.deviations``): VGG-16 (the released script sets AlexNet; VGG-16 is
``hash_model.py``'s other branch); S from cached fc7 features of the evaluation-preprocessed
images in eval mode (released: fc7 of the training images run through the network in train
mode, fc6's dropout active, after Scale(256) + CenterCrop(224)); images resized to 224
(released: Scale(256) + CenterCrop(224)); the random order of the graph's items drawn from
the run seed (released: ``random.seed(10)``), ties in every top-k to the higher index;
the best validated epoch kept where the protocol has a validation split (released: the last);
the budget's training-set size assumed; sign 0 ↦ +1.

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

# MLS3RDUH.py: batch_size = 128, epochs = 150 over train_ind.txt (10,000 images assumed: the
# file is not shipped); StepLR(step_size=500, gamma=0.5) stepped once per epoch.
RELEASED_TRAIN_IMAGES = 10_000
RELEASED_BATCH = 128
RELEASED_EPOCHS = 150
RELEASED_LR_EPOCHS = 500
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, RELEASED_EPOCHS, validate_epochs=30)
RELEASED_LR_STEPS = RELEASED_LR_EPOCHS * RELEASED_BUDGET.steps // RELEASED_EPOCHS
TINY_BUDGET = TinyBudget(epochs=200, eval_every=20, max_steps=2_400)

PAPER = {"backbone": "vgg16", "lr": 0.04, "momentum": 0.0, "batch_size": RELEASED_BATCH}
TINY = {"backbone": "small", "lr": 0.04, "momentum": 0.9, "batch_size": 64}


@dataclass(frozen=True)
class MLS3RDUHParams(DeepParams):
    backbone: Literal["auto", "vgg16", "small"] = "auto"  # auto: vgg16 (paper), small (tiny)
    backbone_weights: str | None = None  # a VGG-16 state dict file
    pretrained: bool = True  # False: random VGG-16 weights (recorded; not the paper's setting)
    finetune_backbone: bool = True  # train the VGG-16 trunk too, as released
    lr: float | None = field(default=None, metadata=positive())  # None: the profile's (0.04)
    momentum: float | None = field(default=None, metadata=in_range(0, 1, high_open=True))  # None: paper 0, tiny 0.9
    weight_decay: float = field(default=1e-5, metadata=non_negative())
    batch_size: int | None = field(default=None, metadata=at_least(2, "pairs of items", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # 0: never
    lr_step: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between decays; 0: none
    lr_gamma: float = field(default=0.5, metadata=in_range(0, 1, low_open=True))
    knn_ratio: float = field(default=0.06, metadata=in_range(0, 1, low_open=True))  # nnk = int(N · ratio)
    manifold_factor: float = field(default=1.5, metadata=positive(at_most=100))  # nno = int(N · ratio · factor)
    alpha: float = field(default=0.99, metadata=in_range(0, 1, low_open=True, high_open=True))
    quantization_weight: float = field(default=0.0, metadata=non_negative())  # released: computed, not optimised

    def validate(self) -> None:
        check_backbone_weights(self, "mls3rduh")


@dataclass(frozen=True)
class MLS3RDUHSettings(DeepSettings):
    backbone: str
    train_backbone: bool
    momentum: float
    weight_decay: float
    lr_step: int  # epochs between ×lr_gamma decays; 0: none


def mls3rduh_loss(hashes: torch.Tensor, similarity: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """The released terms of one batch: Σ log cosh(HHᵀ/bits − S)/B² and Σ(sign H − H)²/B²."""
    import math

    import torch.nn.functional as F

    batch = hashes.shape[0]
    gap = hashes @ hashes.T / bits - similarity
    # log cosh x = |x| + log(1 + e^(−2|x|)) − log 2, without overflow.
    log_cosh = gap.abs() + F.softplus(-2 * gap.abs()) - math.log(2.0)
    quantization = ((hashes.detach().sign() - hashes) ** 2).sum() / batch**2
    return {"pairwise": log_cosh.sum() / batch**2, "quantization": quantization}


class MLS3RDUH(DeepHashingMethod):
    name = "mls3rduh"
    family = "similarity"
    version = "1"
    description = "MLS3RDUH (Tu et al. 2020): manifold-reconstructed similarity S, log-cosh pairwise loss on a tanh hash layer"
    Params = MLS3RDUHParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> MLS3RDUHSettings:
        params = self.params
        values = self.profile_values(PAPER if profile == "paper" else TINY)
        budget = RELEASED_BUDGET if profile == "paper" else TINY_BUDGET
        intervals = {"lr_step": RELEASED_LR_STEPS} if profile == "paper" else None
        values.update(self.schedule(budget, train, values["batch_size"], intervals))
        values.setdefault("lr_step", 0 if params.lr_step is None else params.lr_step)
        if values["backbone"] == "small" and params.backbone_weights is not None:
            raise UserError("mls3rduh.backbone_weights is set but the small backbone is trained from scratch; drop it or use backbone=vgg16")
        train_backbone = bool(params.finetune_backbone) or values["backbone"] == "small"
        return MLS3RDUHSettings(profile=profile, train_backbone=train_backbone, weight_decay=params.weight_decay, **values)

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._mls3rduh_structure import reconstruct_similarity, similarity_block
        from hashbench.toolkit.backbones import build_backbone, preprocess_for
        from hashbench.toolkit.training import autocast, image_loader

        params, settings = self.params, self.settings
        backbone = build_backbone(settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape)
        backbone.requires_grad_(settings.train_backbone)
        self.model = self.to_memory_format(nn.ModuleDict({"backbone": backbone, "head": nn.Linear(backbone.feature_dim, self.bits)}).to(self.device))
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        trained = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        optimizer = torch.optim.SGD(trained, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
        schedulers = {}
        if settings.lr_step > 0:
            schedulers["lr"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=params.lr_gamma)

        structure = reconstruct_similarity(
            train.features, self.context.rng(11), knn_ratio=params.knn_ratio, manifold_factor=params.manifold_factor, alpha=params.alpha
        )
        similarity = structure.similarity
        self.context.record.update(
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id, "trained": settings.train_backbone},
            similarity_structure={"features": describe_features(train), "alpha": params.alpha, **structure.summary()},
            losses={"quantization_weight": params.quantization_weight},
            optimizer=f"SGD (lr {settings.lr}, momentum {settings.momentum}, weight decay {settings.weight_decay}) on every trained layer",
            released_budget=(
                f"MLS3RDUH.py: {RELEASED_EPOCHS} epochs in batches of {RELEASED_BATCH} of an assumed {RELEASED_TRAIN_IMAGES:,} "
                f"training images ({RELEASED_BUDGET.steps:,} steps); train_ind.txt is not shipped"
            ),
        )
        images_of = image_loader(train, self.device)

        def load(positions: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
            return positions, images_of(positions)

        def step(batch: tuple[np.ndarray, torch.Tensor]) -> dict[str, torch.Tensor]:
            positions, images = batch
            target = torch.from_numpy(similarity_block(similarity, positions)).to(self.device)
            with autocast(self.device):
                features = self.model["backbone"](self.to_memory_format(self.preprocess(images, self.device)))
            with torch.autocast(self.device.type, enabled=False):  # the head and the loss in float32
                hashes = torch.tanh(self.model["head"](features.float()))
                terms = mls3rduh_loss(hashes, target, self.bits)
            loss = terms["pairwise"] + params.quantization_weight * terms["quantization"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach(), **{key: value.detach() for key, value in terms.items()}}

        self.run_trainer({"sgd": optimizer}, step, train, val, load=load, schedulers=schedulers, fingerprint={"weights": backbone.weights_id})

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """sign(tanh(head)) of a batch of uint8 images (0 ↦ True)."""
        from hashbench.toolkit.training import autocast

        with autocast(self.device):
            features = self.model["backbone"](self.to_memory_format(self.preprocess(batch, self.device)))
        return self.model["head"](features.float()) >= 0

    def deviations(self, train: DataSplit) -> list[str]:
        settings = self.settings
        found = []
        if settings.profile == "tiny":
            found.append(
                "tiny profile: small backbone trained from scratch with Linear + tanh, SGD with momentum 0.9, batch 64, "
                f"{TINY_BUDGET.describe()} (released: VGG-16, no momentum, batch 128, 150 epochs)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "train_ind.txt, not shipped; 10,000 images assumed")
        if settings.backbone == "vgg16":
            found.append("hash network on VGG-16, hash_model.py's VGG-16 branch (the released script sets model_name = 'alexnet')")
            found.append("images resized to 224 (released: Scale(256) + CenterCrop(224))")
        if not settings.train_backbone:
            found.append("backbone frozen (released: every layer trained)")
        if settings.backbone == "vgg16" and not self.params.pretrained:
            found.append("random VGG-16 weights (pretrained=false; released: ImageNet weights)")
        if backbone_features(train) is not None:
            found.append("S from cached fc7 features in eval mode (released: fc7 with the network in train mode, fc6's dropout active)")
        else:
            found.append("S from the dataset's own feature vectors (released: VGG fc7 features of the training images)")
        found.append("the graph's random item order drawn from the run seed (released: random.seed(10)); top-k ties to the higher index")
        if self.validated:
            found.append("the best validated epoch is kept (released: the last epoch's codes)")
        if self.params.quantization_weight:
            found.append(f"quantisation term optimised with weight {self.params.quantization_weight} (released: computed, not optimised)")
        found.append("a hash value of exactly 0 gives bit 1 (released: sign 0)")
        return found
