"""WCH: weighted contrastive hashing (Yu, Qiu, Chen, Zhang, "Weighted Contrastive Hashing",
ACCV 2022, arXiv 2209.14099).

As in the authors' released code (github.com/RosieYuu/WCH at commit d93c756, built on
DeepHash-pytorch: ``train.py``, ``TransformerModel/modeling.py``,
``TransformerModel/vit_configs.py``, ``utils/tools.py``):

* a ViT-B/16 fine-tuned end to end (every layer trained; ``dropout_rate`` 0.1 after the
  position embeddings and in every MLP block, no attention dropout), read as its 196 patch
  tokens after the final layer norm (the class token dropped);
* two augmented views per image (``utils/tools.py`` ``train_transform``): RandomResizedCrop
  (224, scale 0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, RandomGrayscale(0.2),
  Gaussian blur σ ~ U(0.1, 2) with p = 0.5, horizontal flip, ImageNet normalisation;
* mutual attention (``cross_attention``, temperature 1): each view's tokens rebuilt from the
  other's by a softmax over token cosines; pair weights (``weighted``, temperature 0.2): for
  view-1 image n and view-2 image m, the mean over n's tokens of the best cosine with m's
  tokens, a softmax over m, column m divided by p[m, m] (the released broadcast);
* hash head on the mean attended token: LayerNorm → Linear(768 → 1024) → ReLU →
  Linear(1024 → bits) → tanh → sign (straight-through);
* loss (``CL``): cross-entropy of h1·h2ᵀ / bits / 0.3 against the pair weights as soft
  targets (the weights not detached) + mean(mean_batch(h1)²) − mean(h1²); ``alpha`` (0.1)
  in the config is unused;
* Adam lr 1e-5 on every parameter, cosine annealing over the run's epochs (stepped per
  epoch), batch 32, 50 epochs of CIFAR-10's 5,000 training images: 157 steps an epoch,
  **7,850 optimiser steps**, test-set evaluation every 10 epochs (1,570 steps), the best kept;
* codes: sign of the head's output for the mean of the plain patch tokens of the test
  transform (Resize 224, CenterCrop 224), no mutual attention.

Profiles: ``paper`` the above on natural images, with the shared ViT-B/16 built from the
user's torchvision weights file (``backbone_weights`` or torch hub's cache; nothing is
downloaded), 7,850 steps (``ReleasedBudget``), validated every 1,570; ``tiny`` the small CPU
convnet trained from scratch, the positions of its last feature map as the patch tokens
(projected to 256 dimensions and layer-normalised: :class:`~hashbench.methods._wch_model.SmallPatchTokens`),
lr 1e-3, at native size the released jitter (p = 0.8) with the crop scale 0.5–1 (a fifth of an
8×8 digit no longer shows the glyph), no blur, no flips or colour steps on grey images; 100
epochs validated every 20, at most 2,400 steps.

Deviations (recorded): model selection on the validation split (released: the best
test-query mAP@1000 of its evaluations); torchvision's ViT-B/16 weights of the user's
(released: Google's ImageNet-21k ``ViT-B_16.npz``); the crop drawn on the native image and
resampled once (released: Resize 224 then RandomResizedCrop of that), a 13-tap Gaussian blur
(released: PIL's); bf16 autocast for the ViT on CUDA; a sign of 0 gives bit 1; the released
steps on other training sets; the tiny profile as above.

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

    from hashbench.toolkit.augment import AugmentPolicy

# train.py get_config: batch 32, 50 epochs, "test_map": 10; utils/tools.py cifar_dataset: 500
# training images per class; the DataLoader keeps its last, smaller batch (157 steps an epoch).
RELEASED_TRAIN_IMAGES = 5_000
RELEASED_BATCH = 32
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=50, validate_epochs=10)
TINY_BUDGET = TinyBudget(epochs=100, eval_every=20, max_steps=2_400)
PROFILE_LR = {"paper": 1e-5, "tiny": 1e-3}
BLUR_KERNEL = 13  # 2·⌈3σ⌉ + 1 taps for the largest σ (2) at 224 px
# On 8-32 px images a fifth of the area (3x3 pixels of an 8x8 digit) no longer shows the glyph.
TINY_CROP_SCALE = (0.5, 1.0)


@dataclass(frozen=True)
class WCHParams(DeepParams):
    tau: float = field(default=0.3, metadata=positive())  # CL: logits / bits / 0.3
    weight_tau: float = field(default=0.2, metadata=positive())  # weighted(T=0.2)
    attention_tau: float = field(default=1.0, metadata=positive())  # cross_attention(T=1)
    lr: float | None = field(default=None, metadata=positive())  # None: the profile's (paper 1e-5, tiny 1e-3)
    batch_size: int = field(default=RELEASED_BATCH, metadata=at_least(2, "the loss needs negatives", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # 0: never
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # released: CosineAnnealingLR(T_max=epochs)
    dropout: float = field(default=0.1, metadata=in_range(0.0, 1.0, high_open=True))  # the ViT's dropout_rate
    backbone_weights: str | None = None  # a torchvision vit_b_16 state dict (paper profile)
    pretrained: bool = True  # False: random ViT weights (recorded; not the paper's setting)

    def validate(self) -> None:
        check_backbone_weights(self, "wch")


@dataclass(frozen=True)
class WCHSettings(DeepSettings):
    backbone: str
    augment: AugmentPolicy


class WCH(DeepHashingMethod):
    name = "wch"
    family = "contrastive"
    version = "1"
    description = "Weighted contrastive hashing (Yu et al. 2022): fine-tuned ViT patch tokens, mutual attention, patch-weighted contrastive loss"
    Params = WCHParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> WCHSettings:
        from hashbench.toolkit.augment import AugmentPolicy, tiny_policy
        from hashbench.toolkit.backbones import input_spec

        params = self.params
        if profile == "paper":
            backbone, budget = "vit_b_16", RELEASED_BUDGET
            policy = AugmentPolicy(size=224, crop_scale=(0.2, 1.0), jitter_p=0.8, blur_kernel=BLUR_KERNEL)
        else:
            if params.backbone_weights is not None:
                raise UserError("backbone_weights is set but the tiny profile trains the small backbone from scratch; use profile=paper")
            spec = input_spec("small", tuple(train.image_shape))
            backbone, budget = "small", TINY_BUDGET
            policy = replace(tiny_policy(tuple(train.image_shape), spec.mean, spec.std), crop_scale=TINY_CROP_SCALE, jitter_p=0.8)
        return WCHSettings(profile=profile, lr=params.lr or PROFILE_LR[profile], batch_size=params.batch_size,
                           backbone=backbone, augment=policy, **self.schedule(budget, train, params.batch_size))  # fmt: skip

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._wch_model import (
            SmallPatchTokens,
            ViTPatchTokens,
            WCHHead,
            train_forward,
            wch_loss,
        )
        from hashbench.toolkit.augment import augment
        from hashbench.toolkit.backbones import (
            build_backbone,
            match_channels,
            preprocess_for,
            to_float_images,
        )
        from hashbench.toolkit.training import image_loader

        params, settings = self.params, self.settings
        built = build_backbone(settings.backbone, weights=params.backbone_weights, pretrained=params.pretrained, image_shape=self.input_shape)
        backbone = ViTPatchTokens(built, params.dropout) if settings.backbone == "vit_b_16" else SmallPatchTokens(built)
        head = WCHHead(backbone.feature_dim, self.bits)
        self.model = self.to_memory_format(nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device))
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        channels = self.preprocess.spec.channels
        optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        schedulers = {"cosine": torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)} if params.lr_schedule == "cosine" else {}
        self.context.record.update(
            profile=settings.profile,
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id,
                      "pretrained": bool(params.pretrained) if settings.backbone == "vit_b_16" else False,
                      "feature_dim": backbone.feature_dim, "trained": True, "tokens": "patch tokens" if settings.backbone == "vit_b_16" else "feature-map positions"},
            augment=settings.augment.to_dict(),
            lr_schedule=f"cosine annealing over {settings.epochs} epochs, stepped per epoch" if schedulers else "constant",
        )  # fmt: skip

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            pixels = match_channels(to_float_images(images, self.device), channels)
            view_1, view_2 = (self.to_memory_format(augment(pixels, settings.augment)) for _ in range(2))
            h1, h2, weights = train_forward(self.model, view_1, view_2, self.device, params.attention_tau, params.weight_tau)
            terms = wch_loss(h1, h2, weights, self.bits, params.tau)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer({"adam": optimizer}, step, train, val, load=image_loader(train, self.device),
                         schedulers=schedulers, fingerprint={"weights": backbone.weights_id})  # fmt: skip

    def deviations(self, train: DataSplit) -> list[str]:
        settings, found = self.settings, []
        if settings.profile == "tiny":
            found.append(f"tiny profile: the small convnet trained from scratch at native size, its feature-map positions (projected "
                         f"to 256-d, layer-normalised) as the patch tokens, lr {settings.lr:g}, crop scale 0.5-1, no blur, "
                         f"{TINY_BUDGET.describe()} (released: ViT-B/16 patch tokens at 224 px, lr 1e-5, crop scale 0.2-1)")  # fmt: skip
        else:
            found.append("torchvision's ViT-B/16 with the user's weights (released: Google's ImageNet-21k ViT-B_16.npz)")
            found.append("the crop drawn on the native image and resampled once; a 13-tap Gaussian blur (released: Resize 224, "
                         "then RandomResizedCrop; PIL's GaussianBlur)")  # fmt: skip
            if self.device.type == "cuda":
                found.append("the ViT runs under bf16 autocast (released: float32)")
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "CIFAR-10's 5,000")
        if self.validated:
            found.append("model selection on the validation split (released: the best test-query mAP@1000 of its evaluations)")
            if settings.eval_every and settings.epochs % settings.eval_every:
                found.append("the last epoch is validated too")
        else:
            found.append("no validation: the last epoch is kept (released: the best test-query mAP@1000 of its evaluations)")
        found.append("a sign of exactly 0 gives bit 1 (released: a 0 entry)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """bit = tanh output ≥ 0 for the mean of the plain patch tokens."""
        from hashbench.methods._wch_model import code_forward

        inputs = self.to_memory_format(self.preprocess(batch, self.device))
        return code_forward(self.model, inputs, self.device) >= 0
