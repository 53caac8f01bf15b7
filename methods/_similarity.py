"""Similarity-preserving hashing on feature vectors, shared by GreedyHash and Bi-half.

One linear layer h = Wx + b on the features, binarised while training by the method's own
layer (``binarize``), trained so that the cosine similarities of the codes match those of
the features; codes are sign(h) at test time (0 ↦ +1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.data import DataSplit
from hashbench.methods._deep import (
    DeepHashingMethod,
    DeepParams,
    DeepSettings,
    describe_features,
    feature_tensor,
)
from hashbench.params import at_least, in_range, non_negative, positive


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
class SimilarityHashParams(DeepParams):
    """Hyperparameters shared by GreedyHash and Bi-half; None: the profile's value."""

    optimizer: Literal["auto", "sgd", "adam"] = "auto"
    lr: float | None = field(default=None, metadata=positive())
    momentum: float = field(default=0.9, metadata=non_negative())  # SGD only
    weight_decay: float | None = field(default=None, metadata=non_negative())
    batch_size: int | None = field(default=None, metadata=at_least(2, "pairs of items"))
    epochs: int | None = field(default=None, metadata=at_least(1))
    eval_every: int | None = field(default=None, metadata=non_negative())  # epochs between validations; 0: never
    lr_step: int | None = field(default=None, metadata=non_negative())  # epochs between ×0.1 learning-rate decays; 0: none
    # Dropout on the input features while training: the released code keeps VGG-16's
    # classifier in train mode, so its fc7 output passes a Dropout(0.5) (the one before it,
    # on fc6, cannot be reproduced on cached fc7 features).
    feature_dropout: float | None = field(default=None, metadata=in_range(0, 1, high_open=True))
    centre: bool | None = None  # subtract the training mean from the features (tiny profile)


@dataclass(frozen=True)
class SimilarityHashSettings(DeepSettings):
    """Resolved settings of one GreedyHash / Bi-half run (recorded in the run record)."""

    optimizer: str
    momentum: float
    weight_decay: float
    lr_step: int
    feature_dropout: float
    centre: bool


class SimilarityPreservingHash(DeepHashingMethod):
    """A linear hash layer on feature vectors trained to preserve cosine similarities.

    Subclasses give the training-time binarisation (``binarize``), any extra loss terms
    (``penalties``) and their paper profile (``PAPER``).
    """

    input = "features"
    precision = "float32"  # one linear layer: no autocast, also on CUDA
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

    def extra_record(self) -> dict[str, Any]:
        return {}

    def profile_settings(self, profile: str, train: DataSplit) -> SimilarityHashSettings:
        base = dict(self.PAPER if profile == "paper" else self.TINY)
        if profile == "paper":
            base["epochs"] = self.paper_epochs()
        return SimilarityHashSettings(profile=profile, momentum=self.params.momentum, **self.profile_values(base))

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        return features - self.mean

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        settings = self.settings
        raw = feature_tensor(train, self.device)
        self.mean = raw.mean(dim=0) if settings.centre else torch.zeros(raw.shape[1], device=self.device)
        features = self.transform_features(raw)
        head = nn.Linear(features.shape[1], self.bits).to(self.device)
        self.model = head
        if settings.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                head.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedulers = {}
        if settings.lr_step > 0:
            schedulers["lr"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=0.1)
        self.context.record.update(features=describe_features(train), **self.extra_record())

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

        self.run_trainer({"optimizer": optimizer}, step, train, val, schedulers=schedulers)

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch) >= 0
