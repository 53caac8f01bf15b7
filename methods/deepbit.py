"""DeepBit: compact binary descriptors from an unsupervised deep network (Lin, Lu, Chen, Zhou,
CVPR 2016).

As in the authors' released Caffe code (github.com/kevinlin311tw/cvpr16-deepbit:
``examples/deepbit-cifar10-{16,32,64}/vgg_train*_stage{1,2}.prototxt``,
``solver_stage{1,2,final}.prototxt``, ``train.sh``, ``aug_img_faster.m``, ``run_cifar10.m``,
``src/caffe/layers/K{1,2,3}_*_loss_layer.cpp``):

* VGG-16 with fc8 replaced by ``fc8_kevin``, a K-unit InnerProduct (weights N(0, 0.01²),
  bias 0) followed by a ReLU (``relu8_kevin``; the paper speaks of a sigmoid). conv1_1..fc7
  have lr_mult 0: frozen, dropout active while training; fc8_kevin has lr_mult 1 / 2 (weight /
  bias) and decay_mult 1 / 0;
* stage one (``solver_stage1``): quantisation + balance (``MinQuantizeLoss``,
  ``EvenDistLoss``, loss weight 1 each), batch 32, SGD momentum 0.9, weight decay 5e-4,
  base_lr 1e-3 ×0.1 every 25,000 steps, 50,000 steps; stage two (``solver_stage2``, a new
  solver from stage one's weights): each image beside its rotations by 5° · (−2..2), weighted
  exp(−(θ/5°)²/2), in batches of 30 pairs (6 images); both terms on both branches plus
  0.001 × rotation invariance (``TransformLoss``), base_lr 1e-4 ×0.1 every 1,000 steps, 5,000
  steps; the "final" solver (base_lr 0, one step) only drops the duplicated branch;
* training images: CIFAR-10 resized to 256×256, random 224 crops and mirrors; codes at test
  time (``run_cifar10.m``): ReLU(fc8) of the centre crop > the mean of all training
  activations (one scalar over bits and images), not sigmoid > 0.5.

The loss terms and why their released gradient vanishes are in
:mod:`hashbench.methods._deepbit_model`. ``gradients="objective"`` (default) trains on each
term's own gradient; ``"released"`` reproduces what the released layers back-propagate: no
gradient from quantisation and balance (their two bottoms are one blob, and the +g and −g
cancel), the unweighted rotation gradient, and weight decay.

Profiles: ``paper`` the above as one run of 55,000 steps of 32 images (stage two from
step 50,000 on, using 30 // 5 = 6 images of each batch with their 5 rotations), the decays
and the stage boundary as released intervals in epochs of the training split (``settings``:
``lr_step``, ``stage_two``, ``lr_step_two``); ``tiny`` the small backbone at its random start, frozen as the
released VGG-16 is (``train_backbone=true`` trains it with fc8), at native size, lr 1e-2 /
1e-3, 60 epochs with stage two from epoch 45, no decay, at most 2,400 steps.

Model selection: the released code does none (its last snapshot is evaluated on the test
queries); here the validation split, when given, picks among the validated epochs.

Deviations (recorded): the gradient mode; torchvision's VGG-16 weights and normalisation
(released: Caffe's VGG_ILSVRC_16 with BGR mean subtraction); training crops as one
resized crop of the 32 px image (released: resize to 256, crop 224) and evaluation images
resized to 224 (released: 256 then centre 224); PyTorch SGD's momentum (lr applied after the
momentum, Caffe before it: equal at a constant lr); the released step count on other
training sets; stage two's pairs drawn from the shuffled batch (released: the file order).

Family: ``contrastive`` (what it learns beyond quantisation and balance is the agreement of
each image's code with its rotated views'; no similarity structure of features is used).

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
from hashbench.params import (
    MAX_BATCH_SIZE,
    MAX_ITERATIONS,
    at_least,
    in_range,
    non_negative,
    positive,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hashbench.toolkit.augment import AugmentPolicy

RELEASED_TRAIN_IMAGES = 50_000  # data/cifar10/train-file-list.txt
STAGE_ONE_STEPS, STAGE_TWO_STEPS = 50_000, 5_000  # solver_stage1/2 max_iter
RELEASED_BUDGET = ReleasedBudget(
    STAGE_ONE_STEPS + STAGE_TWO_STEPS, STAGE_TWO_STEPS
)  # validated every 5,000
RELEASED_INTERVALS = {"lr_step": 25_000, "stage_two": STAGE_ONE_STEPS, "lr_step_two": 1_000}
CROP_SCALE = (224 / 256) ** 2  # a 224 crop of the 256-pixel resized image
TINY_BUDGET = TinyBudget(epochs=60, eval_every=15, max_steps=2_400)
TINY_STAGE_ONE = TinyBudget(epochs=45, eval_every=0, max_steps=1_800)
PROFILE_LR = {"paper": (1e-3, 1e-4), "tiny": (1e-2, 1e-3)}


@dataclass(frozen=True)
class DeepBitParams(DeepParams):
    alpha: float = field(default=1.0, metadata=non_negative())  # quantisation loss weight
    beta: float = field(default=1.0, metadata=non_negative())  # balance loss weight
    gamma: float = field(default=0.001, metadata=non_negative())  # rotation loss weight (stage two)
    rotations: int = field(default=5, metadata=at_least(1, at_most=360))
    rotation_step: float = field(
        default=5.0, metadata=positive(at_most=180.0)
    )  # degrees between rotations
    gradients: Literal["objective", "released"] = "objective"
    activation: Literal["relu", "sigmoid"] = "relu"
    threshold: Literal["train-mean", "half"] = "train-mean"
    lr: float | None = field(
        default=None, metadata=positive()
    )  # stage one's base_lr; None: the profile's
    lr_two: float | None = field(default=None, metadata=positive())  # stage two's base_lr
    lr_gamma: float = field(default=0.1, metadata=in_range(0.0, 1.0))
    momentum: float = field(default=0.9, metadata=in_range(0.0, 1.0, high_open=True))
    weight_decay: float = field(default=5e-4, metadata=non_negative())
    batch_size: int = field(
        default=32, metadata=at_least(2, "the balance term needs a batch", at_most=MAX_BATCH_SIZE)
    )
    pair_batch: int = field(
        default=30,
        metadata=at_least(1, "stage two's rotated pairs per step", at_most=MAX_BATCH_SIZE),
    )
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))
    stage_two: int | None = field(
        default=None, metadata=non_negative(at_most=MAX_ITERATIONS)
    )  # epochs before stage two
    lr_step: int | None = field(
        default=None, metadata=non_negative(at_most=MAX_ITERATIONS)
    )  # stage one's decay, epochs
    lr_step_two: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))
    # The small backbone (tiny profile) trained with fc8; False: frozen at its random start, as
    # the released VGG-16 below fc8 is frozen.
    train_backbone: bool = False
    backbone_weights: str | None = None  # a VGG-16 state dict file (paper profile)
    pretrained: bool = True

    def validate(self) -> None:
        check_backbone_weights(self, "deepbit")
        if self.pair_batch % self.rotations or self.pair_batch // self.rotations > self.batch_size:
            raise UserError(
                f"deepbit.pair_batch={self.pair_batch} must be a multiple of rotations={self.rotations} "
                f"with at most batch_size={self.batch_size} images"
            )


@dataclass(frozen=True)
class DeepBitSettings(DeepSettings):
    backbone: str
    augment: AugmentPolicy
    lr_two: float
    stage_two: int  # the epoch index at which stage two starts
    lr_step: int = 0
    lr_step_two: int = 0


def crop_policy(
    profile: str, shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...]
) -> AugmentPolicy:
    """The released crop and mirror (no colour): a square crop of (224/256)² of the image."""
    from hashbench.toolkit.augment import AugmentPolicy

    colour = shape[2] == 3
    return AugmentPolicy(
        size=224 if profile == "paper" else None, crop_scale=(CROP_SCALE, CROP_SCALE), crop_ratio=(1.0, 1.0),
        flip_p=0.5 if colour or profile == "paper" else 0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
        mean=tuple(mean), std=tuple(std),
    )  # fmt: skip


def lr_factor(epoch: int, settings: DeepBitSettings, lr_gamma: float) -> float:
    """The step policy of each stage, relative to stage one's base_lr."""
    if epoch < settings.stage_two:
        return lr_gamma ** (epoch // settings.lr_step) if settings.lr_step else 1.0
    into = epoch - settings.stage_two
    decay = lr_gamma ** (into // settings.lr_step_two) if settings.lr_step_two else 1.0
    return settings.lr_two / settings.lr * decay


class DeepBit(DeepHashingMethod):
    name = "deepbit"
    family = "contrastive"
    version = "1"
    description = "DeepBit (Lin et al. 2016): VGG-16 + K-unit fc8, quantisation, balance and rotation-invariance losses"
    Params = DeepBitParams
    input = "images"

    def profile_settings(self, profile: str, train: DataSplit) -> DeepBitSettings:
        from hashbench.toolkit.backbones import input_spec

        params = self.params
        if profile == "paper":
            backbone = "vgg16"
            values = self.schedule(RELEASED_BUDGET, train, params.batch_size, RELEASED_INTERVALS)
        else:
            if params.backbone_weights is not None:
                raise UserError(
                    "backbone_weights is set but the tiny profile trains its small backbone from scratch; use profile=paper"
                )
            backbone = "small"
            values = self.schedule(TINY_BUDGET, train, params.batch_size)
            stage_one = self.schedule(TINY_STAGE_ONE, train, params.batch_size)["epochs"]
            values.update(
                self.profile_values({"stage_two": stage_one, "lr_step": 0, "lr_step_two": 0})
            )
        spec = input_spec(backbone, tuple(train.image_shape))
        lr, lr_two = PROFILE_LR[profile]
        return DeepBitSettings(
            profile=profile, lr=params.lr or lr, lr_two=params.lr_two or lr_two, batch_size=params.batch_size,
            backbone=backbone, augment=crop_policy(profile, tuple(train.image_shape), spec.mean, spec.std), **values,
        )  # fmt: skip

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._deepbit_model import (
            LatentLayer,
            deepbit_terms,
            rotate,
            rotation_angles,
            rotation_weight,
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
        backbone = build_backbone(
            settings.backbone,
            weights=params.backbone_weights,
            pretrained=params.pretrained,
            image_shape=self.input_shape,
        )
        if not params.train_backbone:
            backbone.requires_grad_(False)
        latent = LatentLayer(backbone.feature_dim, self.bits, params.activation)
        self.model = self.to_memory_format(
            nn.ModuleDict({"backbone": backbone, "fc8": latent}).to(self.device)
        )
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        weights = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad and not name.endswith("bias")
        ]
        biases = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad and name.endswith("bias")
        ]
        optimizer = torch.optim.SGD(
            [{"params": weights, "lr": settings.lr, "weight_decay": params.weight_decay},
             {"params": biases, "lr": 2 * settings.lr, "weight_decay": 0.0}],  # lr_mult 2, decay_mult 0
            lr=settings.lr, momentum=params.momentum,
        )  # fmt: skip
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda epoch: lr_factor(epoch, settings, params.lr_gamma)
        )
        angles = rotation_angles(params.rotations, params.rotation_step)
        angle_weights = torch.tensor(
            [rotation_weight(a, params.rotation_step) for a in angles], device=self.device
        )
        per_image = params.pair_batch // params.rotations
        self.context.record.update(
            profile=settings.profile, gradients=params.gradients, angles=angles,
            backbone={"name": settings.backbone, "weights_source": backbone.weights_source, "weights_id": backbone.weights_id,
                      "feature_dim": backbone.feature_dim, "trained": bool(backbone.trainable)},
            augment=settings.augment.to_dict(),
            solver={"momentum": params.momentum, "groups": [
                {"params": len(g["params"]), "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]},
        )  # fmt: skip
        state = {"momentum_reset": False}

        def forward(views: torch.Tensor) -> torch.Tensor:
            return self.model["fc8"](self.model["backbone"](self.to_memory_format(views)))

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            self.threshold = None
            pixels = match_channels(
                to_float_images(images, self.device), self.preprocess.spec.channels
            )
            if scheduler.last_epoch < settings.stage_two:
                terms = deepbit_terms(
                    forward(augment(pixels, settings.augment)),
                    params.gradients,
                    params.alpha,
                    params.beta,
                )
            else:
                if not state["momentum_reset"]:  # stage two is a new solver: no momentum carried
                    optimizer.state.clear()
                    state["momentum_reset"] = True
                chosen = pixels[:per_image].repeat_interleave(params.rotations, dim=0)
                turn = torch.tensor(angles, device=self.device).repeat(
                    chosen.shape[0] // params.rotations
                )
                both = torch.cat(
                    [
                        augment(chosen, settings.augment),
                        augment(rotate(chosen, turn), settings.augment),
                    ]
                )
                codes, rotated = forward(both).chunk(2)
                terms = deepbit_terms(codes, params.gradients, params.alpha, params.beta, rotated,
                                      angle_weights.repeat(chosen.shape[0] // params.rotations), params.gamma)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        self.threshold = None
        self._train_split = train
        self.run_trainer({"sgd": optimizer}, step, train, val, load=image_loader(train, self.device),
                         schedulers={"lr": scheduler}, fingerprint={"weights": backbone.weights_id})  # fmt: skip
        self.threshold = None  # the kept weights' threshold
        self.context.record["threshold"] = self.code_threshold()

    def activations(self, split: DataSplit) -> torch.Tensor:
        """fc8 activations of a split's evaluation-preprocessed images (model in eval mode)."""
        import torch

        from hashbench.toolkit.training import batch_positions, image_loader

        load, was_training = image_loader(split, self.device), self.model.training
        self.model.eval()
        with torch.no_grad():
            chunks = [self.model["fc8"](self.model["backbone"](self.to_memory_format(self.preprocess(load(p), self.device))))
                      for p in batch_positions(len(split), 256)]  # fmt: skip
        self.model.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros((0, self.bits), device=self.device)

    def code_threshold(self) -> float:
        """run_cifar10.m's ``mean_th``: the mean training activation (or 0.5 as asked)."""
        if self.params.threshold == "half":
            return 0.5
        if self.threshold is None:
            self.threshold = float(self.activations(self._train_split).mean())
        return self.threshold

    def codes(self, split: DataSplit) -> np.ndarray:
        self.code_threshold()
        return super().codes(split)

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        features = self.model["backbone"](
            self.to_memory_format(self.preprocess(batch, self.device))
        )
        return self.model["fc8"](features) > self.threshold

    def deviations(self, train: DataSplit) -> list[str]:
        found = []
        if self.params.gradients == "objective":
            found.append("each loss term's own gradient (released: the quantisation and balance gradients cancel, "
                         "their layers taking fc8 twice; the rotation gradient unweighted)")  # fmt: skip
        if self.settings.profile == "tiny":
            found.append(f"tiny profile: the small convnet ({'trained' if self.params.train_backbone else 'frozen at random'}) at native size, lr {self.settings.lr:g} / "
                         f"{self.settings.lr_two:g}, {TINY_BUDGET.describe()} (released: frozen VGG-16 at 224 px)")  # fmt: skip
        else:
            found.append(
                "torchvision's VGG-16 weights and ImageNet normalisation (released: Caffe's VGG_ILSVRC_16, BGR mean)"
            )
            found.append(
                "training crops resampled from the native image; evaluation resized to 224 (released: 256, centre 224)"
            )
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "CIFAR-10's 50,000")
        found.append(
            "stages one and two as one run; stage two's pairs from each shuffled batch (released: file order)"
        )
        found.append("PyTorch SGD momentum (lr after the momentum; Caffe's before it)")
        if self.validated:
            found.append(
                "model selection on the validation split (released: none, the last snapshot)"
            )
        return found
