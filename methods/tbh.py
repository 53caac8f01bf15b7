"""TBH: auto-encoding twin-bottleneck hashing (Shen et al., CVPR 2020), on feature vectors.

As in the authors' released code (github.com/ymcidence/TBH: ``model/tbh.py``, ``layer/``,
``train/tbh_train.py``, ``run_tbh.py``):

* encoder Dense(1024, ReLU) with two heads: the binary bottleneck Dense(bits) → p = sigmoid,
  code b = 1[p > 0.5] in {0, 1}, whose gradient is d logits = p(1 − p)·(g_b + g_p) (the
  released ``binary_activation`` with ε = 0.5); the continuous bottleneck Dense(512, sigmoid);
* the graph layer inside the batch: A_ij = (1 − d_H(b_i, b_j)/bits)^1.4 (self loops included,
  differentiable in the codes), Â = D^−½ A D^−½ (D the row sums, + 1e-8), and
  z' = sigmoid(Â · Dense(512)(continuous));
* decoder Dense(1024, ReLU) → Dense(d, ReLU) reconstructing the input features;
* two single-unit logistic critics: one tells codes from Bernoulli(0.5) samples, the other
  z' from U[0, 1]^512 samples;
* actor loss = ½‖x̂ − x‖² summed over the batch − adv(codes) − adv(z'), critic loss =
  adv(codes) + adv(z'), where adv(real, fake) = mean BCE(1, D(real)) + mean BCE(0, D(fake));
  two Adam optimisers (lr 1e-4), both updated from the same forward pass; batch 400
  (``run_tbh.py``), 100,000 steps (``tbh_train.py``: ``max_iter``) over the 50,000 CIFAR-10
  training features, the test batch scored every 2,000. The paper profile trains for as many
  epochs of its training split as make those steps (``training.settings``: ``steps``,
  ``epochs``, ``released_steps``).

Input: the split's feature vectors. On natural-image datasets these are VGG-16 fc7 features
of the un-augmented images from the backbone cache (as the released code's precomputed
fc7); on tiny-image datasets (digits, MNIST) the dataset's own vectors, i.e. the flattened
pixels in [0, 1]. The run record says which (``training.features``).

Profiles (``profile``):

``paper``  the released settings above;
``tiny``   for the flattened pixels of tiny images on a CPU: the same architecture and
           graph (exponent 1.4) with narrower layers (hidden 256, continuous 128); the
           pixels standardised (centred on the training mean, divided by their overall
           standard deviation) and a linear decoder output reconstructing them (on the raw
           pixels in [0, 1] with a sigmoid output, all 500 training codes collapsed to one
           or two distinct values within the first hundred steps); Adam lr 2e-3, batch
           250, 1,000 epochs (2,000 steps on digits' 500 items), validated every 100, at
           most 2,000 steps: 100 epochs of 5,000 items, validated every 10
           (``training.settings``: ``max_steps``); one CPU thread (two gained little on
           784 pixel values, see :func:`hashbench.deep.training_threads`);
``auto``   ``paper`` on backbone (fc7) features, ``tiny`` on a dataset's own vectors
           (a dataset's declared ``image_profile`` wins).

Every resolved setting is recorded under ``training`` in the run record. Model selection:
the best validation mAP when the protocol has a validation split (the released code scored a
batch of test images; the harness never looks at queries), else the last epoch.

Deviations (recorded as ``training.deviations``): batches are the epoch's shuffled order
(the last one may be smaller) instead of an endless stream shuffled through a 10,000-item
buffer; the best validated epoch is kept (the released code scores a test batch and keeps
training); a training split other than the 50,000 CIFAR-10 training images gets the released
step count; a probability of exactly 0.5 gives bit 0 where the released code would emit 0.5.

Versions: 1 (the step budget and the deviations are recorded, nothing computed changed); 2,
the tiny profile's 2,000-step cap (1,000 epochs of 5,000 items took 6 to 10 minutes on two
CPU cores; digits' runs are unchanged); 3, the paper profile's epochs count the optimiser
steps as the trainer makes them (a last batch of one joins the one before it): on 4,001
training items version 2 made 90,910 steps where the released run makes 100,000 (digits'
tiny runs are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.deep import (
    DeepHashingMethod,
    DeepParams,
    DeepSettings,
    ReleasedBudget,
    TinyBudget,
    describe_features,
    training_set_deviation,
)
from hashbench.params import (
    MAX_BATCH_SIZE,
    MAX_ITERATIONS,
    MAX_LAYER_SIZE,
    at_least,
    non_negative,
    positive,
)

if TYPE_CHECKING:
    import torch

# The networks and losses need torch: hashbench.methods._tbh_model, imported where the method
# trains or encodes, so that describing it stays light.

GRAPH_EXPONENT = 1.4
# The released code's max_iter (train/tbh_train.py), scoring the test batch every 2,000 steps.
RELEASED_BUDGET = ReleasedBudget(steps=100_000, validate_steps=2_000)
RELEASED_TRAIN_ITEMS = 50_000  # CIFAR-10's training features (util/data/set_processor.py SET_SIZE)


# --------------------------------------------------------------------------------------------
# hyperparameters and profiles


@dataclass(frozen=True)
class TBHParams(DeepParams):
    # None: the profile's value (see the module docstring).
    lr: float | None = field(default=None, metadata=positive())
    batch_size: int | None = field(default=None, metadata=at_least(2, at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # paper: as many as 100,000 steps take
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between validations; 0: never
    hidden: int | None = field(default=None, metadata=at_least(1, at_most=MAX_LAYER_SIZE))  # encoder and decoder middle layer (paper 1024)
    continuous: int | None = field(default=None, metadata=at_least(1, at_most=MAX_LAYER_SIZE))  # continuous bottleneck (paper 512)
    decoder_output: Literal["auto", "relu", "sigmoid", "linear"] = "auto"
    # Centre the features on the training mean and divide them by their overall standard
    # deviation (one number) before encoding and reconstructing them; None: the profile's.
    standardize: bool | None = None
    exponent: float = field(default=GRAPH_EXPONENT, metadata=positive())


@dataclass(frozen=True)
class TBHSettings(DeepSettings):
    """Resolved settings of one run."""

    hidden: int
    continuous: int
    decoder_output: str
    standardize: bool
    exponent: float


# The epochs and validations come from the budgets (DeepHashingMethod.schedule).
PAPER = {"lr": 1e-4, "batch_size": 400, "hidden": 1024, "continuous": 512, "decoder_output": "relu", "standardize": False}
TINY = {"lr": 2e-3, "batch_size": 250, "hidden": 256, "continuous": 128, "decoder_output": "linear", "standardize": True}
# The tiny profile's epochs and validations on small training sets: 1,000 epochs of digits'
# 500 items in batches of 250 are 2,000 optimiser steps, the cap for larger sets (100 epochs
# of 5,000 items, validated every 10).
TINY_BUDGET = TinyBudget(epochs=1000, eval_every=100, max_steps=2000)


# --------------------------------------------------------------------------------------------


class TBH(DeepHashingMethod):
    name = "tbh"
    family = "generative"
    version = "3"
    description = "Auto-encoding twin-bottleneck hashing (Shen et al. 2020): binary + continuous bottlenecks, code graph, adversarial priors"
    Params = TBHParams
    input = "features"
    # Small dense layers: float32 throughout, also on CUDA (bf16 would round logits near 0).
    precision = "float32"

    def profile_settings(self, profile: str, train: DataSplit) -> TBHSettings:
        values = self.profile_values(PAPER if profile == "paper" else TINY)
        budget = TINY_BUDGET if profile == "tiny" else RELEASED_BUDGET
        values.update(self.schedule(budget, train, values["batch_size"]))
        return TBHSettings(profile=profile, exponent=self.params.exponent, **values)

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.shift) / self.scale

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch

        from hashbench.methods._tbh_model import TwinBottleneckNet, tbh_losses
        from hashbench.toolkit.layers import feature_tensor, simultaneous_step

        settings = self.settings
        raw = feature_tensor(train, self.device)
        if settings.standardize:
            self.shift = raw.mean(dim=0)
            self.scale = float((raw - self.shift).std().clamp_min(1e-12))
        else:
            self.shift, self.scale = torch.zeros(raw.shape[1], device=self.device), 1.0
        features = self.transform_features(raw)
        model = TwinBottleneckNet(
            features.shape[1], self.bits, settings.hidden, settings.continuous, settings.decoder_output, settings.exponent
        ).to(self.device)
        self.model = model
        actor = torch.optim.Adam(model.actor_parameters(), lr=settings.lr)
        critic = torch.optim.Adam(model.critic_parameters(), lr=settings.lr)
        self.context.record.update(
            features=describe_features(train),
            optimizer="Adam (actor) + Adam (critic), simultaneous updates",
        )
        groups = {"actor": model.actor_parameters(), "critic": model.critic_parameters()}
        optimizers = {"actor": actor, "critic": critic}

        def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
            batch = features[torch.as_tensor(positions, device=self.device)]
            terms = tbh_losses(model, batch)
            simultaneous_step({"actor": terms["actor"], "critic": terms["critic"]}, groups, optimizers)
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer(optimizers, step, train, val)

    def deviations(self, train: DataSplit) -> list[str]:
        found = []
        if self.settings.profile == "tiny":
            found.append(
                "tiny profile: standardised pixels, hidden 256, continuous 128, linear decoder output, "
                f"Adam 2e-3, batch 250, {TINY_BUDGET.describe()} (released: fc7, 1024/512, ReLU output, 1e-4, 400, 100,000 steps)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_ITEMS, "CIFAR-10's 50,000 training features")
        found.append("batches: each epoch's shuffled order, the last one smaller (released: an endless shuffled stream)")
        if self.validated:
            found.append("the best validated epoch is kept (released: scores a test batch every 2,000 steps, keeps the last)")
        found.append("a probability of exactly 0.5 gives bit 0 (released: 0.5)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.bottlenecks(batch)[0] > 0.5
