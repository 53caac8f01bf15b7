"""GreedyHash (Su, Zhang, Li, Tian; NeurIPS 2018), unsupervised, on feature vectors.

As in the authors' released unsupervised code (``unsupervised_vgg.py``):

* features x = VGG-16 fc7 of the images (frozen), one trained layer h = Wx + b;
* the hash layer b = sign(h) forward, the gradient passed through unchanged backward (the
  "greedy" straight-through step); codes at test time are sign(h) too (0 ↦ +1 here);
* loss = MSE between cos(b_i, b_j) and cos(x_i, x_j) over pairs formed by the first and the
  second half of each batch, + α·mean(| |h| − 1 |³) with α = 0.1;
* SGD (lr 1e-4, momentum 0.9, weight decay 5e-4) on the layer, batch 32, 60 epochs
  (300 at 16 bits), scored every 5 epochs keeping the best.

Input: the split's feature vectors (VGG-16 fc7 from the backbone cache on natural images;
the flattened pixels of tiny images). The released code's frozen VGG-16 runs in train mode,
so its fc7 output passes a Dropout(0.5) while training: ``feature_dropout`` (0.5 in the
paper profile) applies that dropout to the cached fc7 features (the one before fc7, on fc6,
cannot be reproduced from cached features).

Profiles: ``paper`` (the above); ``tiny`` for the pixels of tiny images on a CPU: centred
features (the cosine similarity of raw non-negative pixels is high for every pair), no
dropout, Adam (lr 1e-3), batch 100, 100 epochs; ``auto``: ``paper`` on backbone features,
``tiny`` on a dataset's own vectors. Model selection on the validation split when there is
one (the released code scored the test queries), else the last epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hashbench.methods._deep import straight_through_sign
from hashbench.methods._similarity import SimilarityHashParams, SimilarityPreservingHash
from hashbench.params import non_negative


@dataclass(frozen=True)
class GreedyHashParams(SimilarityHashParams):
    alpha: float = field(default=0.1, metadata=non_negative())  # weight of the cubic penalty pulling |h| to 1


def cubic_penalty(hidden: torch.Tensor) -> torch.Tensor:
    """mean(| |h| − 1 |³), the released code's penalty towards |h| = 1."""
    return torch.abs(torch.pow(torch.abs(hidden) - 1, 3)).mean()


class GreedyHash(SimilarityPreservingHash):
    name = "greedyhash"
    description = "GreedyHash (Su et al. 2018), unsupervised: sign layer with straight-through gradient, cosine-similarity loss + cubic |h|=1 penalty"
    Params = GreedyHashParams
    PAPER = {
        "optimizer": "sgd", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": 32, "epochs": 60,
        "eval_every": 5, "lr_step": 0, "feature_dropout": 0.5, "centre": False,
    }

    def paper_epochs(self) -> int:
        return 300 if self.bits == 16 else 60  # as the released code

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        return straight_through_sign(hidden)

    def penalties(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cubic": self.params.alpha * cubic_penalty(hidden)}

    def extra_record(self) -> dict[str, Any]:
        return {"alpha": self.params.alpha}
