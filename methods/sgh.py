"""SGH: Stochastic Generative Hashing (Dai, Guo, Kumar, He, Song; ICML 2017), on feature vectors.

As in the authors' released code (github.com/doubling/Stochastic_Generative_Hashing,
``sgh_notebook/stochastic_hashing.py``, TensorFlow 0.10, MNIST pixels; the notebook
``stochastic_neuron_VAE_mnist.ipynb`` runs the same model):

* encoder q(h|x) = Bernoulli(sigmoid(W x + b)) through the "doubly stochastic neuron"
  h = (sign(p − ε) + 1)/2, p = sigmoid(W x + b), with the threshold ε fixed at 0.5 in the
  script ("deterministic output"; the paper draws ε ~ U(0, 1)); its gradient is the
  released approximate distributional derivative d logits = p(1 − p)·(g_h + g_p);
  W ~ N(0, 1/D) (standard deviation 1/sqrt(D)), b ~ N(0, 1);
* linear Gaussian decoder x̂ = (h U) ⊙ |s| + m with unit variance (the loss is ½‖x̂ − x‖²),
  U ~ N(0, 1/bits), the scale s and shift m trained, initialised to the training features'
  per-dimension variance (clipped below at 1e-7) and mean; the input itself is not
  preprocessed;
* loss = ½‖x̂ − x‖² + α·Σ CE(logits, h) + β·½‖U‖² + β·½‖W‖² summed over the batch
  (``tf.nn.l2_loss``, ``sigmoid_cross_entropy_with_logits(hencode, yout)``, whose gradient
  also reaches h), α = β = 1e-3 (the notebook leaves out the β term on W); the prior is
  uniform Bernoulli(0.5), a constant;
* Adam, learning rate 1e-2 throughout (the script halves a Python copy of the rate every
  2,000 steps after the optimiser was built with it, so the rate never changes), batches of
  500 drawn with replacement (``np.random.choice``), 5,000 steps; no validation, the last
  step kept;
* codes at test time: (sign(p − 0.5) + 1)/2 of the training and test features.

Profiles: ``paper`` (the above: Adam 1e-2, batch 500, the released 5,000 steps as epochs of
this training split — ``training.settings``: ``steps``, ``epochs``, ``released_steps`` —
validated every 500 steps; on backbone fc7 features); ``tiny`` for the pixels of tiny images
on a CPU: the same model, loss and optimiser (the released input was MNIST's pixels in
[0, 1]), batches of 100, 200 epochs (1,000 steps on digits' 500 items), validated every 20,
at most 2,000 steps (``training.settings``: ``max_steps``), one CPU thread; ``auto``:
``paper`` on backbone features, ``tiny`` on a dataset's own vectors.

Model selection: the best validation mAP when the protocol has a validation split (the
released code keeps its last step), else the last epoch.

Deviations (``training.deviations``): the protocol's training split instead of MNIST's 55,000
training images (the released step count kept); the best validated epoch is kept; a
probability of exactly 0.5 gives bit 0 at test time (released: 0.5); options away from the
released script, where asked: ``neuron=stochastic`` (ε ~ U(0, 1), the paper's neuron),
``sampling=epoch`` (each epoch's shuffled order instead of draws with replacement).

Versions: 1, the first.
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
    backbone_features,
    describe_features,
    training_set_deviation,
)
from hashbench.params import MAX_BATCH_SIZE, MAX_ITERATIONS, at_least, non_negative, positive

if TYPE_CHECKING:
    import torch

# The network and loss need torch: hashbench.methods._sgh_model, imported where the method
# trains or encodes.

# stochastic_hashing.py: max_iter = 5000 Adam steps; it never validates (the harness scores
# the validation split every 500 steps).
RELEASED_BUDGET = ReleasedBudget(steps=5_000, validate_steps=500)
RELEASED_TRAIN_ITEMS = 55_000  # dataset/mnist_training.mat, Xtraining (55,000 × 784)
PAPER = {"lr": 1e-2, "batch_size": 500}
TINY = {"lr": 1e-2, "batch_size": 100}
# 200 epochs of digits' 500 items in batches of 100: 1,000 steps; larger sets stop at 2,000.
TINY_BUDGET = TinyBudget(epochs=200, eval_every=20, max_steps=2_000)


@dataclass(frozen=True)
class SGHParams(DeepParams):
    # None: the profile's value (see the module docstring).
    lr: float | None = field(default=None, metadata=positive())
    batch_size: int | None = field(default=None, metadata=at_least(2, at_most=MAX_BATCH_SIZE))
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # paper: as many as 5,000 steps take
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # epochs between validations; 0: never
    alpha: float = field(default=1e-3, metadata=non_negative())  # weight of the cross-entropy term Σ CE(logits, h)
    beta: float = field(default=1e-3, metadata=non_negative())  # weight decay ½‖U‖² + ½‖W‖²
    # deterministic: ε = 0.5 in training, as the released script; stochastic: ε ~ U(0, 1).
    neuron: Literal["deterministic", "stochastic"] = "deterministic"
    # replacement: each batch drawn with replacement, as released; epoch: each epoch's shuffled order.
    sampling: Literal["replacement", "epoch"] = "replacement"


@dataclass(frozen=True)
class SGHSettings(DeepSettings):
    """Resolved settings of one run."""

    alpha: float
    beta: float
    neuron: str
    sampling: str


class SGH(DeepHashingMethod):
    name = "sgh"
    family = "generative"
    version = "1"
    description = "Stochastic generative hashing (Dai et al. 2017): Bernoulli linear encoder, linear Gaussian decoder, distributional gradient"
    Params = SGHParams
    input = "features"
    # Small dense layers: float32 throughout, also on CUDA.
    precision = "float32"

    def profile_settings(self, profile: str, train: DataSplit) -> SGHSettings:
        values = self.profile_values(PAPER if profile == "paper" else TINY)
        budget = RELEASED_BUDGET if profile == "paper" else TINY_BUDGET
        values.update(self.schedule(budget, train, values["batch_size"]))
        params = self.params
        return SGHSettings(
            profile=profile, alpha=params.alpha, beta=params.beta, neuron=params.neuron, sampling=params.sampling, **values
        )

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch

        from hashbench.methods._sgh_model import SGHNet, sgh_losses

        settings = self.settings
        features = self.inputs(train)
        model = SGHNet(features.shape[1], self.bits, features.mean(dim=0), features.var(dim=0, unbiased=False)).to(self.device)
        self.model = model
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
        self.context.record.update(features=describe_features(train), optimizer="Adam")
        stochastic = settings.neuron == "stochastic"
        replacement = settings.sampling == "replacement"

        def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
            if replacement:  # the released np.random.choice(n, batch): with replacement
                index = torch.randint(features.shape[0], (len(positions),), device=self.device)
            else:
                index = torch.as_tensor(positions, device=self.device)
            terms = sgh_losses(model, features[index], settings.alpha, settings.beta, stochastic)
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            return {key: value.detach() for key, value in terms.items()}

        self.run_trainer({"adam": optimizer}, step, train, val)

    def deviations(self, train: DataSplit) -> list[str]:
        settings = self.settings
        found = []
        if settings.profile == "tiny":
            found.append(
                f"tiny profile: batch 100, {TINY_BUDGET.describe()} (released: batch 500, 5,000 steps)"
            )
        else:
            found += training_set_deviation(len(train), RELEASED_TRAIN_ITEMS, "MNIST's 55,000 training images")
            if backbone_features(train) is not None:
                found.append("input: VGG-16 fc7 features (released: MNIST pixels in [0, 1])")
        if settings.neuron == "stochastic":
            found.append("ε ~ U(0, 1) in training, the paper's neuron (released script: ε = 0.5)")
        if settings.sampling == "epoch":
            found.append("batches: each epoch's shuffled order (released: drawn with replacement)")
        if self.validated:
            found.append("the best validated epoch is kept (released: no validation, the last step kept)")
        found.append("a probability of exactly 0.5 gives bit 0 (released: 0.5)")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.sigmoid(self.model.logits(batch)) > 0.5
