"""Bi-half (Li & van Gemert, AAAI 2021): deep unsupervised hashing by maximising bit entropy.

As in the authors' released image-hashing code (github.com/liyunqianggyn/Deep-Unsupervised-Image-Hashing,
``ImageHashing/Cifar10_I.py``):

* x = VGG-16 up to fc7 (frozen, but in train mode: Dropout(0.5) after fc6's ReLU and after
  fc7's), one trained layer u = Wx + b;
* the bi-half layer while training: for each bit, the ⌊N/2⌋ items of the batch with the
  largest u get +1 and the rest −1 (each bit splits the batch in half, the optimal transport
  of u to a half-half distribution); backward, the gradient g becomes g + γ·(u − b)/numel(b)
  with γ = 6; codes at test time are sign(u) (0 ↦ +1 here);
* loss = MSE between cos(b_i, b_j) and cos(x_i, x_j) over pairs formed by the first and the
  second half of each batch;
* SGD (lr 1e-4, momentum 0.9, weight decay 5e-4) on the layer, the rate × 0.1 every 120
  epochs, batch 32, 300 epochs of 50,000 CIFAR-10 images (5,000 per class): 468,900
  optimiser steps, the decay every 187,560, scored every 10 epochs (15,630 steps).

Input, ``feature_dropout`` and profiles as GreedyHash (:mod:`hashbench.methods.greedyhash`):
``paper`` the above, fc7 run live on cached fc6 features with both dropouts, its epochs,
validation and decay intervals scaled so that the released steps are kept (2,987 epochs for
5,000 training images, the decay every 1,195); ``tiny`` centred pixels, Adam (lr 1e-3),
batch 100, 100 epochs, at most 5,000 steps.

On MS-COCO (``coco``) the paper profile follows ``ImageHashing/Mscoco.py`` instead: SGD lr 1e-3,
× 0.1 every 60 epochs, 150 epochs of its 10,000 training images in batches of 32 (46,950
steps, the decay every 18,780, scored every 3,130), mAP@5000 (the cut-off of hashbench's
MS-COCO protocols). Its augmentation (a random flip, resize to 256 and a random 224 crop of
the live image each step; the centre crop at test) is not done: features come from the
cached images as stored, a deviation recorded with the run.

Deviations (``training.deviations``): the best validated epoch is kept (the released code
prints the test mAP every 10 epochs and keeps the last); the hash layer is initialised from
the run seed (the released code seeds torch with 0 before building it); the protocol's
training split instead of the 50,000 images (the step count is kept).

Versions: 1, the first (one dropout on cached fc7); 2, fc7 live on cached fc6 with both
dropouts, and the paper profile's epochs, validation and decay intervals from the released
step counts; 3, the tiny profile's 5,000-step cap (training sets of more than 5,000 items;
digits' runs unchanged); 4, the released MS-COCO settings on ``coco`` (digits' runs unchanged).
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
class BiHalfParams(SimilarityHashParams):
    gamma: float = field(default=6.0, metadata=non_negative())  # weight of the (u − b) term in the backward pass


# Cifar10_I.py: num_epochs = 300, epoch_lr_decrease = 120, scored every 10 epochs.
RELEASED_BUDGET = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=300, validate_epochs=10)
RELEASED_LR_STEP = ReleasedBudget.from_epochs(RELEASED_TRAIN_IMAGES, RELEASED_BATCH, epochs=120, validate_epochs=0).steps
CIFAR_SCRIPT = ReleasedScript(RELEASED_BUDGET, RELEASED_LR_STEP)

# Mscoco.py: learning_rate = 0.001, num_epochs = 150, epoch_lr_decrease = 60, scored (mAP@5000)
# every 10 epochs, on the 10,000 images of its train list (data/Mscoco/train_coco.txt).
COCO_TRAIN_IMAGES = 10_000
COCO_SCRIPT = ReleasedScript(
    budget=ReleasedBudget.from_epochs(COCO_TRAIN_IMAGES, RELEASED_BATCH, epochs=150, validate_epochs=10),
    lr_step=ReleasedBudget.from_epochs(COCO_TRAIN_IMAGES, RELEASED_BATCH, epochs=60, validate_epochs=0).steps,
    train_images=COCO_TRAIN_IMAGES,
    trained_on="the 10,000 MS-COCO images of its train list",
    settings={"lr": 1e-3},
    deviations=(
        "features of each image as stored (224×224), cached (released on MS-COCO: a random flip, resize to 256 and "
        "a random 224 crop of the live image every step; resize to 256 and the centre 224 crop at test)",
    ),
)


class BiHalf(SimilarityPreservingHash):
    name = "bihalf"
    family = "similarity"
    version = "4"
    description = "Bi-half (Li & van Gemert 2021): per-bit half/half split of the batch, cosine-similarity loss"
    Params = BiHalfParams
    # epochs, eval_every, lr_step: from the released budget (DeepHashingMethod.schedule).
    PAPER = {
        "optimizer": "sgd", "lr": 1e-4, "weight_decay": 5e-4, "batch_size": RELEASED_BATCH,
        "feature_dropout": 0.5, "centre": False,
    }

    def released_script(self, train) -> ReleasedScript:
        """``Mscoco.py`` on MS-COCO, ``Cifar10_I.py`` everywhere else."""
        return COCO_SCRIPT if train.dataset == "coco" else CIFAR_SCRIPT

    def binarize(self, hidden: torch.Tensor) -> torch.Tensor:
        from hashbench.methods._similarity_model import bihalf_layer

        return bihalf_layer(hidden, self.params.gamma)

    def extra_record(self) -> dict[str, Any]:
        return {"gamma": self.params.gamma}

    def deviations(self, train) -> list[str]:
        found = [*super().deviations(train), "the hash layer is initialised from the run seed (released: torch.manual_seed(0))"]
        if self.validated:
            found.append("the best validated epoch is kept (released: the last; it prints the test mAP every 10 epochs)")
        return found
