"""NSH: Naturally-Sorted Hashing (Yu, Shen, Wang, Zhang, Torr, "Learning to Hash Naturally
Sorts", IJCAI 2022, arXiv 2201.13322).

No repository of the paper's authors was found; hashbench follows the implementation in
SDC's repository (github.com/kamwoh/sdc, at commit 9981beb: ``configs/model/nsh.yaml``,
``models/arch/nsh.py``, ``models/loss/nsh.py``, ``models/layers/softsort.py``,
``trainers/nsh.py``, ``configs/transforms/mocov2.yaml``, ``configs/train.yaml``,
``configs/optim/adam.yaml``, ``experiments/train_helper.py``):

* a frozen backbone (released config: ImageNet ResNet-50 in eval mode, 2048-d; here
  hashbench's frozen VGG-16 fc7 in eval mode, 4096-d, as for CIBHash) and two trained heads:
  b = tanh(Linear(features → bits)) and z = L2-normalise(Linear(features → 1024));
* two views per image (MoCo v2 style, as ``mocov2.yaml``): random resized crops of scale
  [0.2, 1] to 224×224 and flips for both; view 1 with colour jitter (0.4, 0.4, 0.4, 0.1)
  with probability 0.8, grey with probability 0.2 and a Gaussian blur of σ ~ U(0.1, 2)
  always; view 2 with colour jitter (0.4, 0.4, 0.4, 0.4) always and grey with probability 0.2;
* the loss (SortedNCE, :func:`hashbench.methods._sdc_common.sorted_nce`): similarities
  S = b₁b₂ᵀ/(2·bits) + ½ between the views, soft-sorted per row with SoftSort at temperature
  1/bits; the view-1 latents gathered in that order and compared with the view-2 latent; the
  top m = 2 ranks are positives, ranks m.. the negatives, τ = 0.3; plus 1 · MSE(b, sign b);
* Adam (lr 1e-5, weight decay 1e-5) on the heads, batch 50 (drop_last), 200 epochs of the
  50,000 CIFAR-10 training images (``dataset.ep: 5``: database = training set, the 10,000
  test images as queries): 200,000 optimiser steps, a StepLR whose step is the whole run
  (no decay takes effect); evaluated every 10 epochs (10,000 steps);
* codes: sign(b) of the un-augmented image.

Profiles: ``paper`` the above (VGG-16 from the user's weights, images resized to 224 px);
``tiny`` the small backbone frozen at its random initialisation (the released backbone is
frozen; trained end to end, its all-positive features made every code the same within an
epoch on digits), at the images' native size, both views scaled down as
:func:`hashbench.toolkit.augment.tiny_policy` does with crops of scale [0.5, 1], the hash
layer's BatchNorm1d (``hash_batch_norm``, commented out in the released file: without it the
codes collapse to one), lr 1e-3, 100 epochs validated every 20, at most 2,400 steps.
``nce="paper"`` takes the cross-entropy of the logits (the released code applies a softmax
first and ``F.cross_entropy`` a second one).

Deviations (recorded): VGG-16 instead of the released config's ResNet-50; model selection on
the validation split (released: the best test-query mAP of its evaluations, ``best.pth``);
PIL's blur radius approximated by a 13×13 Gaussian; a sign of 0 gives bit 1; the last,
smaller batch is trained on (released: dropped); evaluation images resized bilinearly
(released: bicubic); the released step count on other training sets.

Version 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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

    from hashbench.toolkit.augment import AugmentPolicy

RELEASED_TRAIN_IMAGES = 50_000  # dataset.ep 5: the training set is CIFAR-10's 50,000
RELEASED_BATCH = 50
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=200, validate_epochs=10, drop_last=True)
RELEASED_LR_STEP = RELEASED_BUDGET.steps  # scheduler.step_size = epochs
TINY_BUDGET = TinyBudget(epochs=100, eval_every=20, max_steps=2_400)
PROFILE_LR = {"paper": 1e-5, "tiny": 1e-3}
BLUR_KERNEL = 13  # covers ±3σ for σ up to 2
# Tiny images: crops of at least half the image (CIBHash's tiny scale); a fifth of an 8×8
# digit, as released for 224 px, leaves a few pixels (mAP@100 on digits 0.49 against 0.60).
TINY_CROP_MIN = 0.5


@dataclass(frozen=True)
class NSHParams(DeepParams):
    m: int = field(default=2, metadata=at_least(1, "the top m ranks are the positives"))
    tau: float = field(default=0.3, metadata=positive())
    softsort_tau: float | None = field(default=None, metadata=positive())  # None: 1 / bits
    quan: float = field(default=1.0, metadata=non_negative())
    latent_dim: int = field(default=1024, metadata=at_least(1))
    # "released": F.cross_entropy of softmax(logits), a double softmax as models/loss/nsh.py;
    # "paper": the cross-entropy of the logits (the paper's SortedNCE)
    nce: Literal["released", "paper"] = "released"
    # BatchNorm1d(bits) before the Tanh (commented out in models/arch/nsh.py); None: the
    # profile's (paper: no; tiny: yes, without it the codes of the small backbone collapse)
    hash_batch_norm: bool | None = None
    lr: float | None = field(default=None, metadata=positive())  # None: the profile's
    weight_decay: float = field(default=1e-5, metadata=non_negative())
    batch_size: int = field(default=RELEASED_BATCH, metadata=at_least(2, "the views need negatives", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))
    lr_step: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs per ×0.1; 0: none
    backbone_weights: str | None = None  # a VGG-16 state dict file (paper profile)
    pretrained: bool = True

    def validate(self) -> None:
        check_backbone_weights(self, "nsh")
        if self.m >= self.batch_size:
            raise UserError(f"nsh.m={self.m} leaves no negatives in batches of {self.batch_size}; use m < batch_size")


@dataclass(frozen=True)
class NSHSettings(DeepSettings):
    backbone: str
    views: tuple[AugmentPolicy, AugmentPolicy]
    hash_batch_norm: bool
    lr_step: int = 0


def view_policies(profile: str, shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[AugmentPolicy, AugmentPolicy]:
    """The two released views (``mocov2.yaml``); for ``tiny`` scaled down as ``tiny_policy``."""
    from hashbench.toolkit.augment import AugmentPolicy, tiny_policy

    if profile == "paper":
        first = AugmentPolicy(size=224, crop_scale=(0.2, 1.0), jitter_p=0.8, blur_p=1.0, blur_kernel=BLUR_KERNEL)
        return first, replace(first, hue=0.4, jitter_p=1.0, blur_p=0.0)
    base = replace(tiny_policy(shape, mean, std), crop_scale=(TINY_CROP_MIN, 1.0), jitter_p=0.8)
    return base, replace(base, hue=0.4 if base.hue else 0.0, jitter_p=1.0)


class NSH(DeepHashingMethod):
    name = "nsh"
    family = "contrastive"
    version = "1"
    description = "Naturally-sorted hashing (Yu et al. 2022): soft-sorted code similarities gather latents for a SortedNCE loss"
    Params = NSHParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> NSHSettings:
        from hashbench.toolkit.backbones import input_spec

        params = self.params
        if profile == "paper":
            backbone, budget, intervals = "vgg16", RELEASED_BUDGET, {"lr_step": RELEASED_LR_STEP}
        else:
            if params.backbone_weights is not None:
                raise UserError("backbone_weights is set but the tiny profile trains its small backbone from scratch; use profile=paper")
            backbone, budget, intervals = "small", TINY_BUDGET, None
        spec = input_spec(backbone, tuple(train.image_shape))
        values = self.schedule(budget, train, params.batch_size, intervals)
        values.setdefault("lr_step", 0 if params.lr_step is None else params.lr_step)
        return NSHSettings(
            profile=profile, lr=params.lr or PROFILE_LR[profile], batch_size=params.batch_size, backbone=backbone,
            hash_batch_norm=profile == "tiny" if params.hash_batch_norm is None else params.hash_batch_norm,
            views=view_policies(profile, tuple(train.image_shape), spec.mean, spec.std), **values,
        )  # fmt: skip

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._sdc_common import backbone_features, nsh_heads, sorted_nce
        from hashbench.toolkit.augment import augment
        from hashbench.toolkit.backbones import (
            build_backbone,
            match_channels,
            preprocess_for,
            to_float_images,
        )
        from hashbench.toolkit.training import image_loader, trainable

        params, settings = self.params, self.settings
        backbone = build_backbone(settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape)
        if backbone.trainable:  # the small backbone stays at its initialisation, frozen as released
            backbone.trainable = False
            backbone.requires_grad_(False)
        heads = nsh_heads(backbone.feature_dim, self.bits, params.latent_dim, settings.hash_batch_norm)
        self.model = self.to_memory_format(nn.ModuleDict({"backbone": backbone, "heads": heads}).to(self.device))
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        optimizer = torch.optim.Adam(trainable(self.model), lr=settings.lr, weight_decay=params.weight_decay)
        schedulers = {"lr": torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_step, 0.1)} if settings.lr_step else {}
        softsort_tau = params.softsort_tau or 1.0 / self.bits
        self.context.record.update(
            profile=settings.profile, softsort_tau=softsort_tau,
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id,
                      "feature_dim": backbone.feature_dim, "trained": bool(backbone.trainable)},
            augment=[policy.to_dict() for policy in settings.views],
        )  # fmt: skip

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            pixels = match_channels(to_float_images(images, self.device), self.preprocess.spec.channels)
            views = torch.cat([augment(pixels, policy) for policy in settings.views])
            features = backbone_features(self.model["backbone"], self.to_memory_format(views), self.device)
            terms = sorted_nce(heads["hash"](features), heads["latent"](features), params.m, params.tau, softsort_tau, params.quan, params.nce)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer({"adam": optimizer}, step, train, val, load=image_loader(train, self.device),
                         schedulers=schedulers, fingerprint={"weights": backbone.weights_id})  # fmt: skip

    def deviations(self, train: DataSplit) -> list[str]:
        found = []
        if self.settings.profile == "tiny":
            found.append(f"tiny profile: the small convnet frozen at its random initialisation, at native size, crops of "
                         f"scale [{TINY_CROP_MIN}, 1], lr {self.settings.lr:g}, {TINY_BUDGET.describe()} "
                         "(released: frozen ImageNet ResNet-50 at 224 px, crops [0.2, 1], lr 1e-5)")  # fmt: skip
        else:
            found.append("frozen VGG-16 fc7 backbone (released config: frozen ImageNet ResNet-50, 2048-d)")
            found.append(f"Gaussian blur as a {BLUR_KERNEL}x{BLUR_KERNEL} kernel (released: PIL GaussianBlur of radius sigma)")
            found.append("evaluation images resized bilinearly (released: bicubic)")
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "CIFAR-10's 50,000")
        if self.validated:
            found.append("model selection on the validation split (released: the best test-query mAP of its evaluations)")
        else:
            found.append("no validation: the last epoch is kept (released: the best test-query mAP of its evaluations)")
        if self.settings.hash_batch_norm:
            found.append("BatchNorm1d before the hash Tanh (commented out in the released models/arch/nsh.py)")
        if self.params.nce == "paper":
            found.append("SortedNCE as in the paper, one softmax (released: cross-entropy of softmax probabilities)")
        found.append("the last, smaller batch of an epoch is trained on (released: dropped)")
        found.append("a sign of exactly 0 gives bit 1 (released: a 0 entry)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """bit = sign(tanh(Linear(features))) ≥ 0 of the un-augmented images."""
        from hashbench.methods._sdc_common import backbone_features

        features = backbone_features(self.model["backbone"], self.to_memory_format(self.preprocess(batch, self.device)), self.device)
        return self.model["heads"]["hash"](features) >= 0
