"""CIBHash: unsupervised hashing with a contrastive information bottleneck (Qiu et al., IJCAI 2021).

As in the authors' released code (github.com/zexuanqiu/CIBHash: ``model/CIBHash.py``,
``model/base_model.py``, ``utils/data.py``):

* a frozen VGG-16 up to fc7 (its dropout active while training), and a trained head
  Linear(4096→1024) → ReLU → Linear(1024→bits);
* p = sigmoid(head(x)); binary layer z = sign(p − 0.5) in {−1, +1} with a straight-through
  (identity) gradient; ``variant="stochastic"`` is the paper's Bernoulli layer
  z = sign(p − u), u ~ U(0, 1), also straight-through; codes are always the deterministic
  rule (bit = p ≥ 0.5);
* loss = NT-Xent(z_i, z_j; τ) + β · ½[KL(p_i ‖ sg p_j) + KL(p_j ‖ sg p_i)] over two
  augmented views of each image, with the Bernoulli KL summed over bits and averaged over
  the batch, and sg the stop-gradient;
* Adam (lr 1e-3, no weight decay) on the head only, batch 64, 60 epochs of its 5,000
  training images (80 at 16 bits): 4,740 optimiser steps (6,320 at 16 bits), validated
  every 20 epochs (1,580 steps) keeping the best head. The paper profile keeps these step
  counts on any training set (``training.settings``: ``steps``, ``epochs``,
  ``released_steps``): 60 epochs on CIFAR-10's 5,000 training images, fewer on larger
  training splits;
* a NaN loss stops training and the best validated head is kept (``base_model.py``
  ``run_training_session``; the authors report NaN at 16 bits): the trainer's
  ``on_divergence="keep_best"``. Before the first validation the released code has no head
  to keep; here the head of the last epoch that ended finite is kept. ``training.diverged``
  records the epoch, the step and what was kept.

Model selection (``validation``) uses the protocol's validation split, never the queries:

``train-ranking``  mAP over the full ranking of the training split for the validation
                   images (the harness's rule for every deep method);
``released``       the released rule, mAP@1000 of the 5,000 validation images against the
                   50,000-image database (``utils/data.py``: ``topK = 1000``, the database
                   is CIFAR-10's training set). ``fit`` is not given the database, so it is
                   estimated on the training split, a uniform 10 % sample of that database
                   under ``cibhash-code``, at the cut-off scaled by the same ratio:
                   mAP@(1000 · |train| / 50,000), i.e. mAP@100 for 5,000 training images.
                   (Ranking against train ∪ val instead would put each validation image
                   in its own database, at distance 0.)
``auto``           ``released`` when the validation split says its protocol is
                   ``cibhash-code`` (a ``protocol`` attribute), else ``train-ranking``.

Without a validation split the last epoch's head is kept. The rule used is recorded
(``training.validation_rule``).

Profiles (``profile``):

``paper``  the above, with the paper's two-view augmentation at 224×224 (natural images);
``tiny``   a small convnet trained end to end with the head, on tiny images at their native
           size with the scaled-down augmentation (see :func:`hashbench.toolkit.augment.tiny_policy`),
           a longer schedule fitted to small training sets: 100 epochs, validated every 20
           (800 optimiser steps on digits' 500 images), but at most 2,400 steps: 30 epochs
           of a 5,000-image training set, validated every 6 (``training.settings``:
           ``epochs``, ``steps``, ``max_steps``); on the CPU, 28×28
           and larger images train on 2 threads in channels-last memory format, smaller
           ones on one (``settings.cpu_threads``, ``settings.memory_format``: see
           :func:`hashbench.deep.training_threads`);
``auto``   what the dataset declares (a dataset class attribute ``image_profile`` of
           ``"natural"`` or ``"tiny"``), else ``tiny`` for single-channel images or images
           smaller than 32 pixels, ``paper`` otherwise (CIFAR-10, NUS-WIDE, MS-COCO).

``clhash`` is the paper's ablation without the information-bottleneck term (β = 0, "CLHash"
in the paper's tables), registered as its own method so it sits in the same table.

Deviations from the released code (recorded as ``training.deviations``): a sign of exactly
zero is mapped to +1 (the released code would emit a 0 bit); the last epoch is also
validated when the epoch count is not a multiple of the interval; the validation rule as
above; a training split other than 5,000 images gets the released step count, not its
epoch count.

Versions: 1, the first; 2, a NaN loss keeps the best validated (or last finite) head
instead of failing the run, the paper profile's epochs come from the released step count,
and the ``validation`` rule; 3, the tiny profile's step cap (2,400), and on images wider than
16 pixels the small backbone's stride-2 stem, two CPU threads and channels-last batches
(digits' runs are unchanged, bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

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

# The network, the loss and the augmentation need torch: they are imported where the method
# trains or encodes (hashbench.methods._cibhash_model), so that describing it stays light.

# The released run (github.com/zexuanqiu/CIBHash): 500 training images per CIFAR-10 class
# (utils/data.py get_cifar), batch 64 and 60 epochs (model/base_model.py argparser), at least
# 80 epochs at 16 bits (run_training_session), validation every 20 epochs.
RELEASED_TRAIN_IMAGES = 5_000
RELEASED_BATCH = 64
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=60, validate_epochs=20)
RELEASED_BUDGET_16 = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=80, validate_epochs=20)
# Its validation: mAP@1000 (utils/data.py topK) against the database, CIFAR-10's 50,000
# training images; the protocol that reproduces its split.
RELEASED_TOPK = 1_000
RELEASED_DATABASE = 50_000
RELEASED_PROTOCOL = "cibhash-code"


# --------------------------------------------------------------------------------------------
# hyperparameters and profiles


@dataclass(frozen=True)
class ContrastiveHashParams(DeepParams):
    """Hyperparameters shared by CIBHash and CLHash (CIBHash adds β)."""

    tau: float = field(default=0.3, metadata=positive())
    lr: float = field(default=1e-3, metadata=positive())
    batch_size: int = field(default=64, metadata=at_least(2, "NT-Xent needs negatives", at_most=MAX_BATCH_SIZE))
    # None: the profile's (paper: 60, 80 at 16 bits)
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    # epochs between validations; None: the profile's; 0: never
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))
    variant: Literal["deterministic", "stochastic"] = "deterministic"
    # Model selection: "train-ranking" (mAP over the full ranking of the training split),
    # "released" (the released mAP@1000 against the database, estimated on the training
    # split), "auto" (released under the cibhash-code protocol); see the module docstring.
    validation: Literal["auto", "train-ranking", "released"] = "auto"
    backbone_weights: str | None = None  # a VGG-16 state dict file (paper profile)
    pretrained: bool = True  # False: random VGG-16 weights (recorded; not the paper's setting)

    owner: ClassVar[str] = "clhash"  # the method's name, for messages

    def validate(self) -> None:
        check_backbone_weights(self, self.owner)


@dataclass(frozen=True)
class CIBHashParams(ContrastiveHashParams):
    beta: float = field(default=0.001, metadata=non_negative())

    owner: ClassVar[str] = "cibhash"


@dataclass(frozen=True)
class CIBHashSettings(DeepSettings):
    """The resolved settings of a profile for one dataset and code length."""

    backbone: str
    augment: AugmentPolicy


# The tiny profile's schedule: small training sets (hundreds of images) need more passes than
# CIFAR's 5,000 images: 100 epochs, 800 optimiser steps on digits' 500 training images. Larger
# sets stop at 2,400 steps: 30 epochs of 5,000 images (validated every 6), under five minutes
# on two CPU cores at 28×28, where the 800 steps of digits left the codes far from trained
# (mean mAP@1000 0.53 against 0.68 with 2,370 steps, benchmarks/README.md).
TINY_BUDGET = TinyBudget(epochs=100, eval_every=20, max_steps=2_400)


# --------------------------------------------------------------------------------------------


def released_topk(train_items: int) -> int:
    """The released mAP@1000 against 50,000 database images, scaled to a training split that
    samples that database: 1000 · |train| / 50,000 (100 for 5,000 training images)."""
    return max(1, round(RELEASED_TOPK * train_items / RELEASED_DATABASE))


class CIBHash(DeepHashingMethod):
    name = "cibhash"
    family = "contrastive"
    version = "3"
    description = "Contrastive information bottleneck hashing (Qiu et al. 2021): VGG-16 fc7 + trained head, NT-Xent on codes + Bernoulli KL"
    Params = CIBHashParams
    input = "images"

    @property
    def beta(self) -> float:
        return float(getattr(self.params, "beta", 0.0))

    def profile_settings(self, profile: str, train: DataSplit) -> CIBHashSettings:
        from hashbench.toolkit.augment import paper_policy, tiny_policy
        from hashbench.toolkit.backbones import input_spec

        params, shape = self.params, tuple(train.image_shape)
        if profile == "paper":
            backbone, policy = "vgg16", paper_policy()
            budget = RELEASED_BUDGET_16 if self.bits == 16 else RELEASED_BUDGET
        else:
            if params.backbone_weights is not None:
                raise UserError(
                    "backbone_weights is set but the tiny profile trains its small backbone from scratch; "
                    "drop backbone_weights or use profile=paper"
                )
            spec = input_spec("small", shape)
            backbone, policy = "small", tiny_policy(shape, spec.mean, spec.std)
            budget = TINY_BUDGET
        return CIBHashSettings(
            profile=profile,
            lr=params.lr,
            batch_size=params.batch_size,
            backbone=backbone,
            augment=policy,
            **self.schedule(budget, train, params.batch_size),
        )

    def validation_rule(self, train: DataSplit, val: DataSplit | None) -> dict[str, Any]:
        """The model-selection rule of this run: its name, cut-off and why (recorded)."""
        asked = self.params.validation
        protocol = getattr(val, "protocol", None)
        rule = asked
        if val is None or len(val) == 0 or self.settings.eval_every == 0:
            return {"asked": asked, "rule": "none", "topk": None, "protocol": protocol, "description": "no validation: the last epoch's head"}
        if asked == "auto":
            rule = "released" if protocol == RELEASED_PROTOCOL else "train-ranking"
        topk = released_topk(len(train)) if rule == "released" else None
        if rule == "released":
            text = (
                f"mAP@{topk} against the training split, estimating the released mAP@{RELEASED_TOPK} "
                f"against the {RELEASED_DATABASE:,}-image database (not given to fit)"
            )
        else:
            text = "mAP over the full ranking of the training split"
        return {"asked": asked, "rule": rule, "topk": topk, "protocol": protocol, "description": text}

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        from torch import nn

        from hashbench.methods._cibhash_model import build_head, cibhash_loss, forward_probabilities
        from hashbench.toolkit.augment import augment
        from hashbench.toolkit.backbones import (
            build_backbone,
            match_channels,
            preprocess_for,
            to_float_images,
        )
        from hashbench.toolkit.training import image_loader, trainable

        params, settings = self.params, self.settings
        policy = settings.augment
        backbone = build_backbone(
            settings.backbone,
            weights=params.backbone_weights,
            pretrained=params.pretrained,
            image_shape=self.input_shape,
        )
        head = build_head(backbone.feature_dim, self.bits)
        self.model = self.to_memory_format(nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device))
        if self.device.type == "cuda" and not backbone.trainable:
            self.model["backbone"].to(memory_format=torch.channels_last)
        self.preprocess = preprocess_for(settings.backbone, self.input_shape)
        spec = self.preprocess.spec
        optimizer = torch.optim.Adam(trainable(self.model), lr=settings.lr)

        self.context.record.update(
            profile=settings.profile,
            variant=params.variant,
            beta=self.beta,
            epochs=settings.epochs,
            backbone={
                "name": settings.backbone,
                "weights_source": backbone.weights_source,
                "weights_id": backbone.weights_id,
                "pretrained": bool(params.pretrained) if settings.backbone == "vgg16" else False,
                "feature_dim": backbone.feature_dim,
                "trained": bool(backbone.trainable),
            },
            augment=policy.to_dict(),
        )
        self.rule = self.validation_rule(train, val)
        self.context.record["validation_rule"] = self.rule

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            pixels = match_channels(to_float_images(images, self.device), spec.channels)
            view_i, view_j = augment(pixels, policy), augment(pixels, policy)
            if self.device.type == "cuda":
                view_i = view_i.contiguous(memory_format=torch.channels_last)
                view_j = view_j.contiguous(memory_format=torch.channels_last)
            # One backbone pass over both views: batch norm (small backbone) sees all 2B images.
            views = self.to_memory_format(torch.cat([view_i, view_j]))
            probabilities = forward_probabilities(self.model, views, self.device)
            p_i, p_j = probabilities.chunk(2)
            terms = cibhash_loss(p_i, p_j, params.tau, self.beta, params.variant)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        # As released: a NaN loss stops training, keeping the best validated head.
        self.run_trainer(
            {"adam": optimizer}, step, train, val,
            load=image_loader(train, self.device), fingerprint={"weights": backbone.weights_id},
            validation_topk=self.rule["topk"], on_divergence="keep_best",
        )  # fmt: skip

    def deviations(self, train: DataSplit) -> list[str]:
        found = []
        if self.settings.profile == "tiny":
            found.append(
                f"tiny profile: a small convnet trained end to end at native size, {TINY_BUDGET.describe()} "
                "(released: frozen VGG-16 at 224 px)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_IMAGES, "CIFAR-10's 5,000")
        if self.rule["rule"] == "none":
            found.append("no validation: the last epoch's head is kept (released: the best of its validations)")
        elif self.rule["rule"] == "train-ranking":
            found.append("model selection by mAP over the full ranking of the training split (released: mAP@1000 against the database)")
        else:
            found.append(f"model selection by mAP@{self.rule['topk']} against the training split (released: mAP@1000 against the 50,000-image database, not given to fit)")
        found.append("a sign of exactly 0 gives bit 1 (released: a 0 entry)")
        if self.settings.eval_every and self.settings.epochs % self.settings.eval_every:
            found.append("the last epoch is validated too")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Deterministic codes (bit = p ≥ 0.5) of a batch of uint8 images."""
        import torch

        from hashbench.methods._cibhash_model import forward_probabilities

        inputs = self.to_memory_format(self.preprocess(batch, self.device))
        if self.device.type == "cuda":
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return forward_probabilities(self.model, inputs, self.device) >= 0.5


class CLHash(CIBHash):
    """The paper's ablation: CIBHash without the information-bottleneck term (β = 0)."""

    name = "clhash"
    description = (
        "CIBHash without the information-bottleneck KL term (beta = 0; the paper's CLHash ablation)"
    )
    Params = ContrastiveHashParams
