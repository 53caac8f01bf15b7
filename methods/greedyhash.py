"""GreedyHash (Su, Zhang, Li, Tian; NeurIPS 2018), unsupervised, on feature vectors.

As in the authors' released unsupervised code (github.com/ssppp/GreedyHash,
``unsupervised_vgg.py``):

* x = VGG-16 up to fc7 (frozen, but in train mode: Dropout(0.5) after fc6's ReLU and after
  fc7's), one trained layer h = Wx + b;
* the hash layer b = sign(h) forward, the gradient passed through unchanged backward (the
  "greedy" straight-through step); codes at test time are sign(h) too (0 ↦ +1 here);
* loss = MSE between cos(b_i, b_j) and cos(x_i, x_j) over pairs formed by the first and the
  second half of each batch, + α·mean(| |h| − 1 |³) with α = 0.1;
* SGD (lr 1e-4, momentum 0.9, weight decay 5e-4) on the layer, batch 32, 60 epochs (300 at
  16 bits) of the 50,000 CIFAR-10 training images: 93,780 optimiser steps (468,900 at 16
  bits), scored every 5 epochs (7,815 steps) keeping the best.

Input: on natural images, VGG-16 features from the backbone cache, cut at fc6's ReLU; the
rest of the classifier runs live (Dropout → fc7 → ReLU → Dropout, :mod:`hashbench.methods._similarity`),
so both dropouts act on the hash layer's input and on the similarity target, as released
(``feature_dropout``, 0.5). On tiny images, the flattened pixels.

Profiles: ``paper`` (the above; its epochs are the released steps on this training set:
``training.settings`` has ``steps``, ``epochs``, ``released_steps``; 598 epochs for 5,000
training images, 60 for 50,000); ``tiny`` for the pixels of tiny images on a CPU: centred
features (the cosine similarity of raw non-negative pixels is high for every pair), no
dropout, Adam (lr 1e-3), batch 100, 100 epochs, at most 5,000 steps (100 epochs of 5,000
items; ``training.settings``: ``max_steps``), one CPU thread; ``auto``: ``paper`` on backbone features,
``tiny`` on a dataset's own vectors.

Deviations (``training.deviations``): model selection on the validation split when there is
one, else the last epoch (the released code scored the test queries); the protocol's
training split instead of the 50,000 CIFAR-10 training images (the step count is kept).

Versions: 1, the first (one dropout on cached fc7); 2, fc7 live on cached fc6 with both
dropouts, and the paper profile's epochs from the released step count; 3, the tiny
profile's 5,000-step cap (training sets of more than 5,000 items; digits' runs unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hashbench.deep import ReleasedBudget
from hashbench.methods._similarity import (
    RELEASED_BATCH,
    RELEASED_TRAIN_IMAGES,
    ReleasedScript,
    SimilarityHashParams,
    SimilarityPreservingHash,
)
from hashbench.params import non_negative

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class GreedyHashParams(SimilarityHashParams):
    alpha: float = field(default=0.1, metadata=non_negative())  # weight of the cubic penalty pulling |h| to 1


# unsupervised_vgg.py: num_epochs = 60, 300 at 16 bits; scored every 5 epochs.
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=60, validate_epochs=5)
RELEASED_BUDGET_16 = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=300, validate_epochs=5)


class GreedyHash(SimilarityPreservingHash):
    name = "greedyhash"
    family = "similarity"
    version = "3"
    description = "GreedyHash (Su et al. 2018), unsupervised: sign layer with straight-through gradient, cosine-similarity loss + cubic |h|=1 penalty"
    Params = GreedyHashParams
    # epochs, eval_every, lr_step: from the released budget (DeepHashingMethod.schedule).
    PAPER = {
        "optimizer": "sgd", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": RELEASED_BATCH,
        "feature_dropout": 0.5, "centre": False,
    }

    def released_script(self, train) -> ReleasedScript:
        """``unsupervised_vgg.py`` (CIFAR-10) on every dataset."""
        return ReleasedScript(RELEASED_BUDGET_16 if self.bits == 16 else RELEASED_BUDGET)

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        from hashbench.toolkit.layers import straight_through_sign

        return straight_through_sign(hidden)

    def penalties(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        from hashbench.methods._similarity_model import cubic_penalty

        return {"cubic": self.params.alpha * cubic_penalty(hidden)}

    def extra_record(self) -> dict[str, Any]:
        return {"alpha": self.params.alpha}

    def deviations(self, train) -> list[str]:
        selection = (
            "the best epoch on the validation split is kept" if self.validated else "no validation split: the last epoch is kept"
        )
        return [*super().deviations(train), f"{selection} (released: the best mAP@1000 on the test queries, every 5 epochs)"]
