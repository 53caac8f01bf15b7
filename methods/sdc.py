"""SDC: unsupervised hashing with similarity distribution calibration (Ng, Zhu, Hoe, Chan,
Zhang, Song, Xiang, "Unsupervised Hashing with Similarity Distribution Calibration", BMVC
2023, arXiv 2302.07669).

As in the authors' released code (github.com/kamwoh/sdc, at commit 9981beb:
``configs/model/sdc.yaml``, ``configs/train.yaml``, ``configs/optim/adam.yaml``,
``configs/scheduler/step.yaml``, ``configs/transforms/no_augmentation.yaml``,
``configs/backbone/vgg16.yaml`` / ``vit_base.yaml``, ``models/arch/sdc.py``,
``models/loss/sdc.py``, ``trainers/sdc.py``, ``experiments/train_helper.py``):

* a frozen backbone: VGG-16 up to fc7 without its Dropout layers (``remove_dropout``), or
  ViT-B/16's class token (``backbone=vit_b_16``; released: timm's ``vit_base_patch16_224``,
  here torchvision's architecture with the user's weights); a trained head
  Linear(F → F) → GELU → Linear(F → bits) → BatchNorm1d(bits);
* no augmentation: the images resized to 224×224 (``no_augmentation.yaml``);
* the loss (:func:`hashbench.methods._sdc_common.sdc_loss`): the batch's first half paired
  with its second half; the pairs ordered by the cosine of their backbone features; the
  cosines of their head outputs, in that order, pulled (L1) to the midpoint quantiles of
  Beta(5, 5) mapped to [−1, 1]; plus 1 · mean(1 − cos(v, sign v));
* Adam (lr 1e-4, weight decay 1e-5) on the head, batch 64 (drop_last), 100 epochs of
  CIFAR-10's 5,000 training images (``dataset.ep: 1``): 7,800 optimiser steps, ×0.1 after
  80 epochs (6,240 steps), evaluated every 10 epochs (780 steps);
* codes: sign of the head's output (batch norm in eval mode).

Profiles: ``paper`` the above; ``tiny`` the small backbone frozen at its random
initialisation at native size, lr 1e-3, 100 epochs validated every 20, at most 2,400 steps.

Deviations (recorded): model selection on the validation split (released: the best
test-query mAP of its evaluations); torchvision ViT-B/16 weights instead of timm's; the
last, smaller batch trained on (released: dropped); images resized bilinearly (released:
bicubic for queries and database); a sign of 0 gives bit 1; the released step count on other
training sets. Not implemented: the released ``sdc_simclr`` variant (two views + SimCLR).

Version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from hashbench.data import DataSplit
from hashbench.deep import (
    DeepHashingMethod,
    DeepParams,
    DeepSettings,
    ReleasedBudget,
    TinyBudget,
    check_backbone_weights,
    training_set_deviation,
)
from hashbench.errors import UserError
from hashbench.params import MAX_BATCH_SIZE, MAX_ITERATIONS, at_least, non_negative, positive

if TYPE_CHECKING:
    import torch

RELEASED_TRAIN_IMAGES = 5_000  # dataset.ep 1: 500 per CIFAR-10 class
RELEASED_BATCH = 64
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=100, validate_epochs=10, drop_last=True)
RELEASED_LR_STEP = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=80, validate_epochs=0, drop_last=True).steps
TINY_BUDGET = TinyBudget(epochs=100, eval_every=20, max_steps=2_400)
PROFILE_LR = {"paper": 1e-4, "tiny": 1e-3}


@dataclass(frozen=True)
class SDCParams(DeepParams):
    rec: float = field(default=1.0, metadata=non_negative())
    rec_type: Literal["l1", "l2", "hinge"] = "l1"
    quan: float = field(default=1.0, metadata=non_negative())
    quan_type: Literal["cs", "l1", "l2", "p3"] = "cs"
    beta_a: float = field(default=5.0, metadata=positive())
    beta_b: float = field(default=5.0, metadata=positive())
    ortho_constraint: bool = False
    lr: float | None = field(default=None, metadata=positive())  # None: the profile's
    weight_decay: float = field(default=1e-5, metadata=non_negative())
    batch_size: int = field(default=RELEASED_BATCH, metadata=at_least(2, "pairs need two images", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))
    lr_step: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs per ×0.1; 0: none
    backbone: Literal["vgg16", "vit_b_16"] = "vgg16"  # paper profile
    backbone_weights: str | None = None
    pretrained: bool = True

    def validate(self) -> None:
        check_backbone_weights(self, "sdc")


@dataclass(frozen=True)
class SDCSettings(DeepSettings):
    backbone: str
    lr_step: int = 0


class SDC(DeepHashingMethod):
    name = "sdc"
    family = "contrastive"
    version = "1"
    description = "Similarity distribution calibration (Ng et al. 2023): code cosines ranked by feature cosines, calibrated to Beta quantiles"
    Params = SDCParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> SDCSettings:
        params = self.params
        if profile == "paper":
            backbone, budget, intervals = params.backbone, RELEASED_BUDGET, {"lr_step": RELEASED_LR_STEP}
        else:
            if params.backbone_weights is not None:
                raise UserError("backbone_weights is set but the tiny profile uses the small backbone; use profile=paper")
            backbone, budget, intervals = "small", TINY_BUDGET, None
        values = self.schedule(budget, train, params.batch_size, intervals)
        values.setdefault("lr_step", 0 if params.lr_step is None else params.lr_step)
        return SDCSettings(profile=profile, lr=params.lr or PROFILE_LR[profile], batch_size=params.batch_size, backbone=backbone, **values)

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._sdc_common import backbone_features, sdc_head, sdc_loss
        from hashbench.toolkit.backbones import build_backbone, preprocess_for
        from hashbench.toolkit.training import image_loader, trainable

        params, settings = self.params, self.settings
        backbone = build_backbone(settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape)
        if backbone.trainable:  # the small backbone stays at its initialisation, frozen as released
            backbone.trainable = False
            backbone.requires_grad_(False)
        head = sdc_head(backbone.feature_dim, self.bits)
        self.model = self.to_memory_format(nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device))
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        optimizer = torch.optim.Adam(trainable(self.model), lr=settings.lr, weight_decay=params.weight_decay)
        schedulers = {"lr": torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, 0.1)} if settings.lr_step else {}
        self.context.record.update(
            profile=settings.profile,
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id,
                      "feature_dim": backbone.feature_dim, "trained": False},
        )  # fmt: skip
        loss_options = dict(rec=params.rec, quan=params.quan, beta_a=params.beta_a, beta_b=params.beta_b,
                            rec_type=params.rec_type, quan_type=params.quan_type, ortho=params.ortho_constraint)  # fmt: skip

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            features = backbone_features(self.model["backbone"], self.to_memory_format(self.preprocess(images, self.device)), self.device)
            terms = sdc_loss(features, head(features), **loss_options)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer({"adam": optimizer}, step, train, val, load=image_loader(train, self.device),
                         schedulers=schedulers, fingerprint={"weights": backbone.weights_id})  # fmt: skip

    def deviations(self, train: DataSplit) -> list[str]:
        found = []
        if self.settings.profile == "tiny":
            found.append(f"tiny profile: the small convnet frozen at its random initialisation, at native size, lr "
                         f"{self.settings.lr:g}, {TINY_BUDGET.describe()} (released: frozen ImageNet VGG-16 at 224 px, lr 1e-4)")  # fmt: skip
        else:
            if self.settings.backbone == "vit_b_16":
                found.append("torchvision's ViT-B/16 with the user's weights (released: timm vit_base_patch16_224, ImageNet-21k pretrained)")
            found.append("images resized bilinearly (released: bicubic for queries and database)")
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "CIFAR-10's 5,000")
        if self.validated:
            found.append("model selection on the validation split (released: the best test-query mAP of its evaluations)")
        else:
            found.append("no validation: the last epoch is kept (released: the best test-query mAP of its evaluations)")
        found.append("the last, smaller batch of an epoch is trained on (released: dropped)")
        found.append("a sign of exactly 0 gives bit 1 (released: a 0 entry)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """bit = head output ≥ 0 (batch norm with its running statistics)."""
        from hashbench.methods._sdc_common import backbone_features

        features = backbone_features(self.model["backbone"], self.to_memory_format(self.preprocess(batch, self.device)), self.device)
        return self.model["head"](features) >= 0
