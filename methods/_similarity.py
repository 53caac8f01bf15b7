"""Similarity-preserving hashing on feature vectors, shared by GreedyHash and Bi-half.

One linear layer h = Wx + b on the features, binarised while training by the method's own
layer (``binarize``), trained so that the cosine similarities of the codes match those of
the features; codes are sign(h) at test time (0 ↦ +1).

The released code of both runs VGG-16 live in train mode: the frozen classifier's two
Dropout(0.5) layers act after fc6 and after fc7, on x, which is both the hash layer's input
and the similarity target. On VGG-16 features from the backbone cache the paper profile does
the same with the frozen part cached up to fc6's ReLU, before the first dropout, and the rest
run live (``live_fc7``): fc6 → Dropout → fc7 → ReLU → Dropout → x
(:func:`~hashbench.methods._similarity_model.live_network`);
at test time, without dropout, x is fc7. On other feature vectors (the pixels of tiny images)
``feature_dropout`` applies one dropout to them.

The paper profiles' budgets are the released optimiser steps (``ReleasedBudget``): epochs,
validation and learning-rate decay intervals are scaled to the training set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.deep import (
    DeepHashingMethod,
    DeepParams,
    DeepSettings,
    ReleasedBudget,
    TinyBudget,
    backbone_features,
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

# The loss, the live fc7 network and each method's binary layer need torch:
# hashbench.methods._similarity_model, imported where a method trains or encodes.

# Both released codes train on 50,000 CIFAR-10 images in batches of 32 (GreedyHash's
# unsupervised_vgg.py: the training set; Bi-half's Cifar10_I.py: 5,000 per class), keeping the
# last, smaller batch: ceil(50,000 / 32) = 1,563 steps per epoch.
RELEASED_TRAIN_IMAGES = 50_000
RELEASED_BATCH = 32
TINY_MAX_STEPS = 5_000  # the tiny profile's cap on optimiser steps


@dataclass(frozen=True)
class ReleasedScript:
    """The released training script a paper profile follows on one dataset.

    ``budget``: its optimiser steps and scoring interval; ``lr_step``: steps between its ×0.1
    learning-rate decays (0: none); ``train_images``: its training-set size, described by
    ``trained_on``; ``settings``: what it sets differently from the method's ``PAPER``
    defaults; ``deviations``: what hashbench still does differently there.
    """

    budget: ReleasedBudget
    lr_step: int = 0
    train_images: int = RELEASED_TRAIN_IMAGES
    trained_on: str = "50,000 CIFAR-10 images"
    settings: dict[str, Any] = field(default_factory=dict)
    deviations: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimilarityHashParams(DeepParams):
    """Hyperparameters shared by GreedyHash and Bi-half; None: the profile's value."""

    optimizer: Literal["auto", "sgd", "adam"] = "auto"
    lr: float | None = field(default=None, metadata=positive())
    momentum: float = field(default=0.9, metadata=non_negative())  # SGD only
    weight_decay: float | None = field(default=None, metadata=non_negative())
    batch_size: int | None = field(default=None, metadata=at_least(2, "pairs of items", at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between validations; 0: never
    lr_step: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between ×0.1 learning-rate decays; 0: none
    # The dropout rate while training: the released code keeps VGG-16's classifier in train
    # mode, so fc6's and fc7's outputs pass a Dropout(0.5). On VGG-16 features both act (fc7
    # runs live on cached fc6); on other feature vectors one dropout acts on them.
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
    live_fc7: bool  # cached fc6, then dropout → fc7 → ReLU → dropout live (VGG-16 features)


class SimilarityPreservingHash(DeepHashingMethod):
    """A linear hash layer on feature vectors trained to preserve cosine similarities.

    Subclasses give the training-time binarisation (``binarize``), any extra loss terms
    (``penalties``), their paper profile (``PAPER``, with ``None`` for what the released
    budget sets) and the released script it follows on a dataset (``released_script``).
    """

    input = "features"
    precision = "float32"  # one linear layer: no autocast, also on CUDA
    PAPER: ClassVar[dict[str, Any]] = {}
    # The CPU default for tiny images, shared by GreedyHash and Bi-half: centred pixels, no
    # dropout, Adam.
    TINY: ClassVar[dict[str, Any]] = {
        "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 100, "lr_step": 0,
        "feature_dropout": 0.0, "centre": True,
    }
    # Its epochs and validations on small training sets: 100 epochs of digits' 500 items in
    # batches of 100 are 500 optimiser steps; larger sets stop at 5,000 (100 epochs of 5,000
    # items, a quarter of a minute on one CPU thread at 784 dimensions).
    TINY_BUDGET: ClassVar[TinyBudget] = TinyBudget(epochs=100, eval_every=20, max_steps=TINY_MAX_STEPS)

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalties(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def released_script(self, train: DataSplit) -> ReleasedScript:
        """The released script the paper profile follows on ``train``'s dataset, at this code
        length: its budget, decay interval and settings."""
        raise NotImplementedError

    def extra_record(self) -> dict[str, Any]:
        return {}

    def profile_settings(self, profile: str, train: DataSplit) -> SimilarityHashSettings:
        base = dict(self.PAPER if profile == "paper" else self.TINY)
        budget, intervals = self.TINY_BUDGET, None
        if profile == "paper":
            script = self.released_script(train)
            base.update(script.settings)
            budget, intervals = script.budget, {"lr_step": script.lr_step}
        values = self.profile_values(base)
        # The batch size the run will use decides how many epochs make the budget's steps.
        values.update(self.schedule(budget, train, values["batch_size"], intervals))
        # fc7 runs live only where there is something to run it for: dropout on VGG-16 features.
        live = values["feature_dropout"] > 0 and _vgg16_features(train) is not None
        return SimilarityHashSettings(
            profile=profile, momentum=self.params.momentum, live_fc7=live, **values
        )

    # ---- what the network reads ---------------------------------------------------------

    def _fc6(self, split: DataSplit) -> Any:
        """The fc6 feature cache of ``split``'s dataset (the training split's, kept)."""
        source = _vgg16_features(split)
        if source is None:
            raise UserError(f"{self.name}: trained on VGG-16 fc6 features, but the {split.name} split has no VGG-16 backbone features")
        cached = getattr(self, "_fc6_cache", None)
        if cached is None or cached[0] is not source:
            cached = (source, source.at_layer("fc6"))
            self._fc6_cache = cached
        return cached[1]

    def raw_features(self, split: DataSplit) -> np.ndarray:
        """The vectors the network starts from: cached fc6 (``live_fc7``), else the split's features."""
        if self.settings.live_fc7:
            return self._fc6(split)(split.indices)
        return split.features

    def _input_shape(self, split: DataSplit) -> tuple[int, ...]:
        if self.settings.live_fc7:
            return (self._fc6(split).dimension,)
        return super()._input_shape(split)

    def inputs(self, split: DataSplit) -> torch.Tensor:
        import torch

        raw = torch.from_numpy(np.ascontiguousarray(self.raw_features(split), dtype=np.float32)).to(self.device)
        return self.transform_features(raw)

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        return features - self.mean

    # ---- training -----------------------------------------------------------------------

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch
        import torch.nn.functional as F
        from torch import nn

        from hashbench.methods._similarity_model import cosine_similarity_loss, live_network

        settings = self.settings
        values = np.ascontiguousarray(self.raw_features(train), dtype=np.float32)
        raw = torch.from_numpy(values).to(self.device)
        self.mean = raw.mean(dim=0) if settings.centre else torch.zeros(raw.shape[1], device=self.device)
        features = self.transform_features(raw)
        if settings.live_fc7:
            fc6 = self._fc6(train)
            self.model = live_network(fc6.fc7_layer(), self.bits, settings.feature_dropout).to(self.device)
            described = describe_features(train, values, fc6)
            described["then"] = f"Dropout({settings.feature_dropout}), fc7, ReLU, Dropout({settings.feature_dropout}) live while training"
        else:
            self.model = nn.ModuleDict({"head": nn.Linear(features.shape[1], self.bits)}).to(self.device)
            described = describe_features(train)
        head = self.model["head"]
        if settings.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                head.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedulers = {}
        if settings.lr_step > 0:
            schedulers["lr"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.lr_step, gamma=0.1)
        self.context.record.update(features=described, **self.extra_record())

        def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
            batch = features[torch.as_tensor(positions, device=self.device)]
            if settings.live_fc7:
                batch = self.model["tail"](batch)  # x: fc7 through both dropouts (train mode)
            elif settings.feature_dropout > 0:
                batch = F.dropout(batch, settings.feature_dropout, training=True)
            hidden = head(batch)
            # x is both the layer's input and the similarity target, as released.
            terms = {"similarity": cosine_similarity_loss(self.binarize(hidden), batch)}
            terms.update(self.penalties(hidden))
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return {"loss": loss.detach(), **{key: value.detach() for key, value in terms.items()}}

        self.run_trainer({"optimizer": optimizer}, step, train, val, schedulers=schedulers)

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if self.settings.live_fc7:
            batch = self.model["tail"](batch)  # eval mode: no dropout, x = fc7
        return self.model["head"](batch) >= 0

    def deviations(self, train: DataSplit) -> list[str]:
        settings = self.settings
        found = []
        if settings.profile == "tiny":
            found.append(
                f"tiny profile: centred feature vectors, no dropout, Adam 1e-3, batch 100, {self.TINY_BUDGET.describe()} "
                "(released: VGG-16 fc7 with dropout, SGD 1e-4, batch 32)"
            )
        else:
            script = self.released_script(train)
            found += training_set_deviation(len(train), script.train_images, script.trained_on)
            found += script.deviations
            if not settings.live_fc7:
                found.append(
                    "not on VGG-16 features: one dropout on the given vectors (released: dropout after fc6 and fc7)"
                    if settings.feature_dropout > 0
                    else "no dropout (released: after fc6 and fc7)"
                )
        found.append("a hash value of exactly 0 gives bit 1 (released: sign 0)")
        return found


def _vgg16_features(split: DataSplit) -> Any | None:
    """The split's VGG-16 backbone-feature cache, when its features come from one."""
    source = backbone_features(split)
    return source if source is not None and source.backbone == "vgg16" else None
