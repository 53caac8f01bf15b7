"""CIBHash: unsupervised hashing with a contrastive information bottleneck (Qiu et al., IJCAI 2021).

As in the authors' released code (PROTOCOLS.md, "CIBHash"):

* a frozen VGG-16 up to fc7 (its dropout active while training), and a trained head
  Linear(4096→1024) → ReLU → Linear(1024→bits);
* p = sigmoid(head(x)); binary layer z = sign(p − 0.5) in {−1, +1} with a straight-through
  (identity) gradient; ``variant="stochastic"`` is the paper's Bernoulli layer
  z = sign(p − u), u ~ U(0, 1), also straight-through; codes are always the deterministic
  rule (bit = p ≥ 0.5);
* loss = NT-Xent(z_i, z_j; τ) + β · ½[KL(p_i ‖ sg p_j) + KL(p_j ‖ sg p_i)] over two
  augmented views of each image, with the Bernoulli KL summed over bits and averaged over
  the batch, and sg the stop-gradient;
* Adam (lr 1e-3, no weight decay) on the head only, batch 64, 60 epochs (80 at 16 bits),
  validation every 20 epochs keeping the best head.

Profiles (``profile``):

``paper``  the above, with the paper's two-view augmentation at 224×224 (natural images);
``tiny``   a small convnet trained end to end with the head, on tiny images at their native
           size with the scaled-down augmentation (see :func:`hashbench.augment.tiny_policy`),
           a longer schedule fitted to small training sets;
``auto``   what the dataset declares (a dataset class attribute ``image_profile`` of
           ``"natural"`` or ``"tiny"``), else ``tiny`` for single-channel images or images
           smaller than 32 pixels, ``paper`` otherwise (CIFAR-10, NUS-WIDE, MS-COCO).

Model selection uses the validation split when the protocol has one: mAP over the full
ranking of the training split for the validation images (never the query split). Without
a validation split the last epoch's head is kept. Both are recorded.

``clhash`` is the paper's ablation without the information-bottleneck term (β = 0, "CLHash"
in the paper's tables), registered as its own method so it sits in the same table.

Deviations from the released code, all inconsequential or forced by the harness: a sign of
exactly zero is mapped to +1 (the released code would emit a 0 bit), and the last epoch is
also validated when the epoch count is not a multiple of the interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.augment import AugmentPolicy, augment, paper_policy, tiny_policy
from hashbench.backbones import (
    build_backbone,
    input_spec,
    match_channels,
    preprocess_for,
    to_float_images,
)
from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod
from hashbench.methods._deep import declared_profile, straight_through_sign
from hashbench.params import params_to_dict
from hashbench.training import (
    Schedule,
    Trainer,
    autocast,
    batch_positions,
    cpu_threads,
    image_loader,
    prefetch,
    setup,
    trainable,
)

HEAD_HIDDEN = 1024
ENCODE_BATCH = 256
KL_EPS = 1e-8  # as the released code


# --------------------------------------------------------------------------------------------
# the pieces of the loss


def binary_layer(probabilities: torch.Tensor, variant: str = "deterministic") -> torch.Tensor:
    """Codes in {−1, +1} from bit probabilities, with a straight-through gradient to them."""
    if variant == "deterministic":
        return straight_through_sign(probabilities - 0.5)
    if variant == "stochastic":
        return straight_through_sign(probabilities - torch.rand_like(probabilities))
    raise UserError(f"unknown CIBHash variant {variant!r}; use deterministic or stochastic")


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent over the 2B codes of two views: for each anchor, the other view is the positive
    and the remaining 2B − 2 codes are negatives; cosine similarity / τ; mean over anchors."""
    batch = z_i.shape[0]
    codes = F.normalize(torch.cat([z_i, z_j]).float(), dim=1, eps=1e-8)
    similarity = codes @ codes.T / tau
    eye = torch.eye(2 * batch, dtype=torch.bool, device=similarity.device)
    similarity = similarity.masked_fill(eye, float("-inf"))  # an anchor is not its own negative
    positives = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(
        similarity.device
    )
    return F.cross_entropy(similarity, positives)


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) ‖ Bernoulli(sg q)) summed over bits, averaged over the batch."""
    q = q.detach()
    kl = p * (torch.log(p + KL_EPS) - torch.log(q + KL_EPS)) + (1 - p) * (
        torch.log(1 - p + KL_EPS) - torch.log(1 - q + KL_EPS)
    )
    return kl.sum(dim=1).mean()


def cibhash_loss(
    p_i: torch.Tensor, p_j: torch.Tensor, tau: float, beta: float, variant: str = "deterministic"
) -> dict[str, torch.Tensor]:
    """The CIBHash objective for the bit probabilities of two views; β = 0 drops the KL term."""
    contrastive = nt_xent(binary_layer(p_i, variant), binary_layer(p_j, variant), tau)
    if beta == 0:
        return {"loss": contrastive, "contrastive": contrastive}
    kl = 0.5 * (bernoulli_kl(p_i, p_j) + bernoulli_kl(p_j, p_i))
    return {"loss": contrastive + beta * kl, "contrastive": contrastive, "kl": kl}


# --------------------------------------------------------------------------------------------
# hyperparameters and profiles


@dataclass(frozen=True)
class ContrastiveHashParams:
    """Hyperparameters shared by CIBHash and CLHash (CIBHash adds β)."""

    tau: float = 0.3
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int | None = None  # None: the profile's (paper: 60, 80 at 16 bits)
    eval_every: int | None = None  # epochs between validations; None: the profile's; 0: never
    variant: Literal["deterministic", "stochastic"] = "deterministic"
    profile: Literal["auto", "paper", "tiny"] = "auto"
    backbone_weights: str | None = None  # a VGG-16 state dict file (paper profile)
    pretrained: bool = True  # False: random VGG-16 weights (recorded; not the paper's setting)
    # Intra-op CPU threads; None: 1 for the tiny profile on the CPU, torch's default otherwise.
    cpu_threads: int | None = None

    def validate(self) -> None:
        if not self.tau > 0:
            raise UserError(f"tau must be positive, got {self.tau}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 2:
            raise UserError(
                f"batch_size must be at least 2 (NT-Xent needs negatives), got {self.batch_size}"
            )
        if self.epochs is not None and self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        if self.eval_every is not None and self.eval_every < 0:
            raise UserError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise UserError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if self.backbone_weights is not None and not self.pretrained:
            raise UserError("backbone_weights and pretrained=false contradict each other; drop one")


@dataclass(frozen=True)
class CIBHashParams(ContrastiveHashParams):
    beta: float = 0.001

    def validate(self) -> None:
        super().validate()
        if self.beta < 0:
            raise UserError(f"beta must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class Profile:
    """The resolved settings of a profile for one dataset and code length."""

    name: str
    backbone: str
    policy: AugmentPolicy
    epochs: int
    eval_every: int


# The tiny profile's schedule: small training sets (hundreds to thousands of images) need more
# passes than CIFAR's 5,000 images for the same number of optimiser steps.
TINY_EPOCHS = 100
TINY_EVAL_EVERY = 20


def resolve_profile(
    params: ContrastiveHashParams, bits: int, image_shape: tuple[int, ...] | None, dataset: str
) -> Profile:
    if image_shape is None or len(image_shape) != 3:
        raise UserError(
            "cibhash trains on images; this dataset provides none (use a feature method)"
        )
    name = params.profile
    if name == "auto":
        name = declared_profile(dataset) or (
            "tiny" if image_shape[2] == 1 or min(image_shape[:2]) < 32 else "paper"
        )
    if name == "paper":
        epochs = params.epochs if params.epochs is not None else (80 if bits == 16 else 60)
        every = params.eval_every if params.eval_every is not None else 20
        return Profile("paper", "vgg16", paper_policy(), epochs, every)
    if params.backbone_weights is not None:
        raise UserError(
            "backbone_weights is set but the tiny profile trains its small backbone from scratch; "
            "drop backbone_weights or use profile=paper"
        )
    spec = input_spec("small", image_shape)
    epochs = params.epochs if params.epochs is not None else TINY_EPOCHS
    every = params.eval_every if params.eval_every is not None else TINY_EVAL_EVERY
    return Profile("tiny", "small", tiny_policy(image_shape, spec.mean, spec.std), epochs, every)


# --------------------------------------------------------------------------------------------


class CIBHash(HashingMethod):
    name = "cibhash"
    description = "Contrastive information bottleneck hashing (Qiu et al. 2021): VGG-16 fc7 + trained head, NT-Xent on codes + Bernoulli KL"
    Params = CIBHashParams
    input = "images"

    @property
    def beta(self) -> float:
        return float(getattr(self.params, "beta", 0.0))

    def _forward_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Bit probabilities of a normalised batch; the head runs in float32."""
        backbone, head = self.model["backbone"], self.model["head"]
        with autocast(self.device):
            if backbone.trainable:
                features = backbone(images)
            else:
                with torch.no_grad():  # frozen trunk: no activations kept for backward
                    features = backbone(images)
        # float32 head: bf16 would round many probabilities to exactly 0.5.
        return torch.sigmoid(head(features.float()))

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        params = self.params
        self.device = setup(self.context)
        profile = resolve_profile(params, self.bits, train.image_shape, train.dataset)
        self.profile = profile
        # The tiny profile's tensors are too small for parallel CPU kernels to pay off (and
        # threads waiting for each other on a busy machine cost up to 10x): one thread.
        self.threads = params.cpu_threads
        if self.threads is None and profile.name == "tiny" and self.device.type == "cpu":
            self.threads = 1
        with cpu_threads(self.threads):
            self._fit(train, val, profile)

    def _fit(self, train: DataSplit, val: DataSplit | None, profile: Profile) -> None:
        params = self.params
        self.image_shape = tuple(train.image_shape)
        backbone = build_backbone(
            profile.backbone,
            weights=params.backbone_weights,
            pretrained=params.pretrained,
            image_shape=self.image_shape,
        )
        head = nn.Sequential(
            nn.Linear(backbone.feature_dim, HEAD_HIDDEN),
            nn.ReLU(),
            nn.Linear(HEAD_HIDDEN, self.bits),
        )
        self.model = nn.ModuleDict({"backbone": backbone, "head": head}).to(self.device)
        if self.device.type == "cuda" and not backbone.trainable:
            self.model["backbone"].to(memory_format=torch.channels_last)
        self.preprocess = preprocess_for(profile.backbone, self.image_shape)
        spec = self.preprocess.spec
        optimizer = torch.optim.Adam(trainable(self.model), lr=params.lr)

        record = self.context.record
        record.update(
            profile=profile.name,
            variant=params.variant,
            beta=self.beta,
            epochs=profile.epochs,
            backbone={
                "name": profile.backbone,
                "weights_source": backbone.weights_source,
                "weights_id": backbone.weights_id,
                "pretrained": bool(params.pretrained) if profile.backbone == "vgg16" else False,
                "feature_dim": backbone.feature_dim,
                "trained": bool(backbone.trainable),
            },
            augment=profile.policy.to_dict(),
            cpu_threads=torch.get_num_threads(),
        )
        trainer = Trainer(
            self.context,
            self.model,
            {"adam": optimizer},
            Schedule(
                profile.epochs,
                params.batch_size,
                profile.eval_every if val is not None and len(val) else 0,
            ),
            name=self.name,
            fingerprint={
                "bits": self.bits,
                "params": params_to_dict(params),
                "profile": profile.name,
                "weights": backbone.weights_id,
                "dataset": train.dataset,
                "train": [len(train), *self.image_shape],
                "val": len(val) if val is not None else 0,
            },
            validation_metric="mAP over the full ranking: validation images against the training split",
        )

        def step(images: torch.Tensor) -> dict[str, torch.Tensor]:
            pixels = match_channels(to_float_images(images, self.device), spec.channels)
            view_i, view_j = augment(pixels, profile.policy), augment(pixels, profile.policy)
            if self.device.type == "cuda":
                view_i = view_i.contiguous(memory_format=torch.channels_last)
                view_j = view_j.contiguous(memory_format=torch.channels_last)
            # One backbone pass over both views: batch norm (small backbone) sees all 2B images.
            probabilities = self._forward_probabilities(torch.cat([view_i, view_j]))
            p_i, p_j = probabilities.chunk(2)
            terms = cibhash_loss(p_i, p_j, params.tau, self.beta, params.variant)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        def validate() -> float:
            from hashbench.metrics import mean_average_precision

            return mean_average_precision(
                self._codes(val), self._codes(train), val.labels, train.labels, bits=self.bits
            )

        trainer.fit(
            len(train),
            step,
            load=image_loader(train, self.device),
            validate=validate if val is not None and len(val) else None,
        )
        self.model.eval()

    def _codes(self, split: DataSplit) -> np.ndarray:
        """Deterministic codes (bit = p ≥ 0.5) of a split, as bool ``(n, bits)``."""
        was_training = self.model.training
        self.model.eval()
        chunks = []
        with torch.no_grad():
            for images in prefetch(
                batch_positions(len(split), ENCODE_BATCH), image_loader(split, self.device)
            ):
                inputs = self.preprocess(images, self.device)
                if self.device.type == "cuda":
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                chunks.append((self._forward_probabilities(inputs) >= 0.5).cpu())
        self.model.train(was_training)
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.bits), dtype=bool)

    def encode(self, split: DataSplit) -> np.ndarray:
        if not hasattr(self, "model"):
            raise RuntimeError(f"{self.name}: encode() called before fit()")
        if tuple(split.image_shape or ()) != self.image_shape:
            raise UserError(
                f"{self.name}: images of shape {split.image_shape} differ from the training images' {self.image_shape}"
            )
        with cpu_threads(self.threads):
            return self._codes(split)


class CLHash(CIBHash):
    """The paper's ablation: CIBHash without the information-bottleneck term (β = 0)."""

    name = "clhash"
    description = (
        "CIBHash without the information-bottleneck KL term (beta = 0; the paper's CLHash ablation)"
    )
    Params = ContrastiveHashParams
