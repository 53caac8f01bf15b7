"""Pieces shared by the deep baselines TBH, BGAN, GreedyHash and Bi-half.

* which profile (``paper`` or ``tiny``) a run uses when it asks for ``auto``;
* what the feature vectors of a split are (VGG-16 fc7 from the backbone cache, or the
  dataset's own vectors such as the pixels of tiny images), for the run record;
* the straight-through sign layer, encoding a split in batches, the validation score, and
  optimiser steps that update several networks from one forward pass at the same time (as
  the released TensorFlow code does with one ``sess.run``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench import registry
from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod
from hashbench.params import params_to_dict
from hashbench.training import Schedule, Trainer, cpu_threads, setup

ENCODE_BATCH = 1024
# Feature-input methods train for thousands of sub-second epochs (TBH's released budget is
# 100,000 steps): checkpoint at most once a minute rather than after every epoch.
CHECKPOINT_SECONDS = 60.0


# --------------------------------------------------------------------------------------------
# profiles and feature provenance


def declared_profile(dataset: str) -> str | None:
    """``paper`` / ``tiny`` from the ``image_profile`` a dataset class declares, if any."""
    if not dataset:
        return None
    try:
        declared = getattr(registry.get_dataset(dataset), "image_profile", None)
    except UserError:
        return None
    return {"natural": "paper", "tiny": "tiny"}.get(declared) if isinstance(declared, str) else None


def _backbone_features(split: DataSplit) -> Any | None:
    """The backbone-feature cache behind ``split.features``, when that is where they come from."""
    from hashbench.features import BackboneFeatures

    source = split.feature_source
    return source if isinstance(source, BackboneFeatures) else None


def feature_profile(requested: str, split: DataSplit) -> str:
    """Resolve ``auto`` for a feature-input method.

    What the dataset declares wins; otherwise backbone (VGG-16 fc7) features mean the
    paper's setting, and the dataset's own vectors (pixels of tiny images) the CPU one.
    """
    if requested != "auto":
        return requested
    declared = declared_profile(split.dataset)
    if declared is not None:
        return declared
    return "paper" if _backbone_features(split) is not None else "tiny"


def image_profile(requested: str, split: DataSplit) -> str:
    """Resolve ``auto`` for an image-input method (as CIBHash: tiny for small or grey images)."""
    if requested != "auto":
        return requested
    declared = declared_profile(split.dataset)
    if declared is not None:
        return declared
    shape = split.image_shape
    if shape is None or len(shape) != 3:
        raise UserError("this method trains on images; the dataset provides none (use a feature method)")
    return "tiny" if shape[2] == 1 or min(shape[:2]) < 32 else "paper"


def thread_count(requested: int | None, profile: str, device: torch.device) -> int | None:
    """Intra-op CPU threads of a run: as asked, else 1 for the tiny profile on the CPU.

    The tiny networks gain nothing from parallel kernels and lose a lot to waiting threads on
    a busy machine; one thread also makes CPU results independent of the core count.
    """
    if requested is not None:
        return requested
    return 1 if profile == "tiny" and device.type == "cpu" else None


def check_threads(value: int | None, owner: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{owner}.cpu_threads must be at least 1, got {value}")


def describe_features(split: DataSplit) -> dict[str, Any]:
    """What the feature vectors of ``split`` are, for the run record."""
    features = split.features
    cache = _backbone_features(split)
    if cache is not None:
        source = f"{cache.backbone} backbone features (fc7 of the evaluation-preprocessed images, feature cache)"
        weights = cache.weights_key
    else:
        source = "the dataset's own feature vectors (for image datasets: the flattened pixels scaled to [0, 1])"
        weights = None
    return {
        "source": source,
        "weights": weights,
        "dimension": int(features.shape[1]),
        "min": float(features.min()) if features.size else 0.0,
        "max": float(features.max()) if features.size else 0.0,
    }


# --------------------------------------------------------------------------------------------
# layers and helpers


class _StraightThroughSign(torch.autograd.Function):
    """Forward: sign in {−1, +1} (an exact 0 maps to +1); backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor) -> torch.Tensor:
        return torch.where(values >= 0, torch.ones_like(values), -torch.ones_like(values))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def straight_through_sign(values: torch.Tensor) -> torch.Tensor:
    return _StraightThroughSign.apply(values)


def feature_tensor(split: DataSplit, device: torch.device) -> torch.Tensor:
    """The split's features as one float32 tensor on ``device`` (small enough for memory)."""
    return torch.from_numpy(np.ascontiguousarray(split.features, dtype=np.float32)).to(device)


def encode_features(
    code_of: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, bits: int, batch: int = ENCODE_BATCH
) -> np.ndarray:
    """bool codes ``(n, bits)`` of a feature tensor, ``code_of`` applied batch by batch."""
    chunks = [code_of(features[start : start + batch]).bool().cpu() for start in range(0, features.shape[0], batch)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, bits), dtype=bool)


def validation_map(val_codes: np.ndarray, train_codes: np.ndarray, val: DataSplit, train: DataSplit, bits: int) -> float:
    """mAP over the full ranking of the training split for the validation items (never queries)."""
    from hashbench.metrics import mean_average_precision

    return mean_average_precision(val_codes, train_codes, val.labels, train.labels, bits=bits)


VALIDATION_METRIC = "mAP over the full ranking: validation items against the training split"


def simultaneous_step(
    losses: Mapping[str, torch.Tensor],
    groups: Mapping[str, Sequence[nn.Parameter]],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Update each group of parameters from its own loss, all from the same forward pass.

    The released GAN-style code computes every network's gradient at the current weights and
    then applies them all; stepping one optimiser before the next network's backward would
    give that network gradients through already-updated weights.
    """
    names = list(groups)
    gradients = {}
    for index, name in enumerate(names):
        parameters = list(groups[name])
        keep = index < len(names) - 1
        grads = torch.autograd.grad(losses[name], parameters, retain_graph=keep, allow_unused=True)
        gradients[name] = (parameters, grads)
    for name in names:
        parameters, grads = gradients[name]
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = None if grad is None else grad.detach()
        optimizers[name].step()


# --------------------------------------------------------------------------------------------
# similarity-preserving hashing on feature vectors (GreedyHash, Bi-half)


def cosine_similarity_loss(codes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """MSE between the cosine similarities of codes and of features over pairs of the batch.

    As the released GreedyHash and Bi-half code: the first half of the batch is paired with
    the second half, item by item; an odd item out is left unpaired.
    """
    half = codes.shape[0] // 2
    code_similarity = F.cosine_similarity(codes[:half], codes[half : 2 * half])
    feature_similarity = F.cosine_similarity(features[:half], features[half : 2 * half])
    return F.mse_loss(code_similarity, feature_similarity)


@dataclass(frozen=True)
class SimilarityHashParams:
    """Hyperparameters shared by GreedyHash and Bi-half; None: the profile's value."""

    profile: Literal["auto", "paper", "tiny"] = "auto"
    optimizer: Literal["auto", "sgd", "adam"] = "auto"
    lr: float | None = None
    momentum: float = 0.9  # SGD only
    weight_decay: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    eval_every: int | None = None  # epochs between validations; 0: never
    lr_step: int | None = None  # epochs between ×0.1 learning-rate decays; 0: none
    # Dropout on the input features while training: the released code keeps VGG-16's
    # classifier in train mode, so its fc7 output passes a Dropout(0.5) (the one before it,
    # on fc6, cannot be reproduced on cached fc7 features).
    feature_dropout: float | None = None
    centre: bool | None = None  # subtract the training mean from the features (tiny profile)
    cpu_threads: int | None = None  # None: 1 for the tiny profile on the CPU, torch's default otherwise

    owner: ClassVar[str] = "method"  # the method's name, for messages

    def validate(self) -> None:
        check_threads(self.cpu_threads, self.owner)
        checks = [
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.momentum >= 0, f"momentum must be >= 0, got {self.momentum}"),
            (self.weight_decay is None or self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size is None or self.batch_size >= 2, f"batch_size must be at least 2 (pairs of items), got {self.batch_size}"),
            (self.epochs is None or self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.eval_every is None or self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.lr_step is None or self.lr_step >= 0, f"lr_step must be >= 0, got {self.lr_step}"),
            (self.feature_dropout is None or 0 <= self.feature_dropout < 1, f"feature_dropout must lie in [0, 1), got {self.feature_dropout}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{self.owner}.{message}")


@dataclass(frozen=True)
class SimilarityHashSettings:
    """Resolved settings of one GreedyHash / Bi-half run (recorded in the run record)."""

    profile: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    eval_every: int
    lr_step: int
    feature_dropout: float
    centre: bool


_SETTING_NAMES = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "eval_every", "lr_step", "feature_dropout", "centre")


class ProfiledDeepMethod(HashingMethod):
    """A deep method whose settings resolve from its profile (paper / tiny) and which
    trains on the run's device under its CPU thread budget (``cpu_threads``)."""

    def resolve_settings(self, train: DataSplit) -> Any:
        raise NotImplementedError

    def _fit(self, train: DataSplit, val: DataSplit | None, settings: Any) -> None:
        raise NotImplementedError

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        self.device = setup(self.context)
        self.settings = self.resolve_settings(train)
        self.threads = thread_count(self.params.cpu_threads, self.settings.profile, self.device)
        with cpu_threads(self.threads):
            self._fit(train, val, self.settings)


class SimilarityPreservingHash(ProfiledDeepMethod):
    """A linear hash layer on feature vectors trained to preserve cosine similarities.

    Subclasses give the training-time binarisation (``binarize``), any extra loss terms
    (``penalties``) and their profiles; codes are sign(Wx + b) at test time (0 ↦ +1).
    """

    input = "features"
    PAPER: ClassVar[dict[str, Any]] = {}
    # The CPU default for tiny images, shared by GreedyHash and Bi-half: centred pixels, no
    # dropout, Adam.
    TINY: ClassVar[dict[str, Any]] = {
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 100, "epochs": 100,
        "eval_every": 20, "lr_step": 0, "feature_dropout": 0.0, "centre": True,
    }

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalties(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def paper_epochs(self) -> int:
        return int(self.PAPER["epochs"])

    def resolve_settings(self, train: DataSplit) -> SimilarityHashSettings:
        profile = feature_profile(self.params.profile, train)
        base = dict(self.PAPER if profile == "paper" else self.TINY)
        if profile == "paper":
            base["epochs"] = self.paper_epochs()
        values = {}
        for name in _SETTING_NAMES:
            value = getattr(self.params, name)
            values[name] = base[name] if value is None or value == "auto" else value
        return SimilarityHashSettings(profile=profile, momentum=self.params.momentum, **values)

    def extra_record(self) -> dict[str, Any]:
        return {}

    def _fit(self, train: DataSplit, val: DataSplit | None, settings: SimilarityHashSettings) -> None:
        features = feature_tensor(train, self.device)
        self.input_dim = int(features.shape[1])
        self.mean = features.mean(dim=0) if settings.centre else torch.zeros(self.input_dim, device=self.device)
        features = features - self.mean
        head = nn.Linear(self.input_dim, self.bits).to(self.device)
        self.head = head
        if settings.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                head.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedulers = {}
        if settings.lr_step > 0:
            schedulers["lr"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=0.1)
        validating = val is not None and len(val) > 0
        self.context.record.update(
            settings=asdict(settings), features=describe_features(train), cpu_threads=torch.get_num_threads(), **self.extra_record()
        )
        trainer = Trainer(
            self.context,
            head,
            {"optimizer": optimizer},
            Schedule(settings.epochs, settings.batch_size, settings.eval_every if validating else 0),
            name=self.name,
            fingerprint={"bits": self.bits, "params": params_to_dict(self.params), "settings": asdict(settings),
                         "dataset": train.dataset, "train": list(features.shape), "val": len(val) if val is not None else 0},
            schedulers=schedulers,
            validation_metric=VALIDATION_METRIC,
            checkpoint_seconds=CHECKPOINT_SECONDS,
        )

        def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
            batch = features[torch.as_tensor(positions, device=self.device)]
            if settings.feature_dropout > 0:
                batch = F.dropout(batch, settings.feature_dropout, training=True)
            hidden = head(batch)
            terms = {"similarity": cosine_similarity_loss(self.binarize(hidden), batch)}
            terms.update(self.penalties(hidden))
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach(), **{key: value.detach() for key, value in terms.items()}}

        def validate() -> float:
            return validation_map(self._codes(feature_tensor(val, self.device) - self.mean), self._codes(features), val, train, self.bits)

        trainer.fit(len(train), step, validate=validate if validating else None)
        self.context.record["precision"] = "float32"  # one linear layer: no autocast, also on CUDA
        head.eval()

    def _codes(self, features: torch.Tensor) -> np.ndarray:
        def code_of(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.head(batch) >= 0

        return encode_features(code_of, features, self.bits)

    def encode(self, split: DataSplit) -> np.ndarray:
        if not hasattr(self, "head"):
            raise RuntimeError(f"{self.name}: encode() called before fit()")
        features = feature_tensor(split, self.device)
        if features.shape[1] != self.input_dim:
            raise UserError(f"{self.name}: features of {split.name} have {features.shape[1]} dimensions, the model was trained on {self.input_dim}")
        with cpu_threads(self.threads):
            return self._codes(features - self.mean)
