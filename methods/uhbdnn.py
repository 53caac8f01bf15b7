"""UH-BDNN: unsupervised hashing with a binary deep neural network (Do, Doan, Cheung; ECCV
2016), on feature vectors.

As in the authors' released MATLAB code (github.com/dzungdoan6/uh-bdnn: ``runHash.m``,
``DeepNN_HASH/learn_all.m``, ``learnDeepNN.m``, ``deepNNCost.m``, ``learn_B.m``,
``initializeParameters.m``, ``utils/rescale_0_1.m``; L-BFGS from ``minFunc``):

* preprocessing: x ↦ (x − per-dimension training minimum) / (largest per-dimension range + eps);
* network D → sigmoid(h1) → sigmoid(h2) → identity(bits) = H (layer n − 1), and a linear
  decoder x̂ = W4 B + c4 that reconstructs x from the binary codes B (±1), not from H; layer
  sizes by code length: 8 bits (90, 20), 16 (90, 30), 24 (100, 40), 32 (120, 50);
* cost J1 + … + J5 over all m training items (``deepNNCost.m``): J1 = 1/(2m)‖X − W4 B − c4‖²,
  J2 = λ1/2 Σ‖W‖², J3 = λ2/(2m)‖H − B‖², J4 = λ3/2‖HHᵀ/m − I‖², J5 = λ4/(2m)‖H 1‖²; λ1 = 1e-5,
  λ2 = 5e-2, λ3 = 1e-2, λ4 = 5e-7 (its hand-written gradient is the exact gradient of this
  cost, which autograd gives here);
* initialisation: each encoder layer's weights the leading eigenvectors of its input's
  uncentred second moment, biases 0, W4 = eye(D, bits), c4 = 0; B from ITQ (51 rotation
  updates, ±1);
* training: 400 full-batch L-BFGS iterations on (W, c) with the ITQ codes, then 20 outer
  iterations of {B update: ``learn_B.m``'s 10 bitwise sweeps of the closed-form solution
  B_k = sign(λ2 H_k + (Y W4)_k − Σ_{j≠k} B_j (W4ᵀW4)_jk), Y = X − c4, from B = 0; then 400
  L-BFGS iterations}: 8,400 L-BFGS iterations at most; after each outer iteration the mAP of
  1,000 training items (Euclidean ground truth) decides: stop at the first that does not
  improve, keeping the one before;
* codes at test time: 1[H ≥ 0].

Here one optimiser step is one full-batch L-BFGS iteration (``torch.optim.LBFGS``, strong
Wolfe line search, 100 corrections, minFunc's tolerances), so an epoch is one step, the B
update comes every ``inner_steps`` steps, with the L-BFGS memory restarted as minFunc
restarts, and validation follows each outer iteration.

Profiles: ``paper`` (the above: the released 8,400 steps, ``ReleasedBudget``, B updated and
validated every 400; ``training.settings``: ``steps``, ``epochs``, ``released_steps``);
``tiny`` for the pixels of tiny images on a CPU: the released network and costs, 50 L-BFGS
iterations per outer iteration, 300 steps (the pretraining and 5 outer iterations),
validated every 50, at most 300 steps (``TinyBudget``), one CPU thread; ``auto``: ``paper`` on
backbone features, ``tiny`` on a dataset's own vectors. Layer sizes: the released ones for 8,
16, 24 and 32 bits; for other code lengths the entry of the next larger released length, or
above 32 bits the 32-bit sizes scaled by bits/32; the first layer at most the input
dimension and the second between the bits and the first (the eigenvector initialisation needs
them so: digits' 64 pixels give (64, 30) at 16 bits); ``hidden`` sets them.

Deviations (``training.deviations``): every step validates on the protocol's validation split
(class labels), the best kept, all outer iterations run (released: 1,000 training items with
Euclidean neighbours, stopping at the first outer iteration without improvement), and the
pretrained network is validated too; torch's L-BFGS (its strong Wolfe line search and
stopping tests differ in detail from minFunc's, and it does not stop an inner run at minFunc's
tolerance or 1,000 function evaluations); layer sizes other than the released ones where the
code length or the input dimension asks for them; eigenvector signs fixed (largest entry
positive); sign(0) = +1 in ITQ's codes.

Versions: 1, the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
)
from hashbench.errors import UserError
from hashbench.method import require_bits_at_most_dimension
from hashbench.params import MAX_ITERATIONS, MAX_LAYER_SIZE, at_least, non_negative

if TYPE_CHECKING:
    import torch

# runHash.m: max_iter = 20 outer iterations, iter_lbfgs = 400 L-BFGS iterations each, after
# 400 with the ITQ codes (learn_all.m); validated after every outer iteration.
RELEASED_OUTER = 20
RELEASED_INNER = 400
RELEASED_BUDGET = ReleasedBudget(steps=(RELEASED_OUTER + 1) * RELEASED_INNER, validate_steps=RELEASED_INNER)
# runHash.m's hidden layer sizes by code length.
RELEASED_HIDDEN = {8: (90, 20), 16: (90, 30), 24: (100, 40), 32: (120, 50)}
TINY = {"inner_steps": 50}
TINY_BUDGET = TinyBudget(epochs=300, eval_every=50, max_steps=300)
ITQ_ROTATIONS = 51  # ITQ.m: for iter = 0:50
ITQ_STREAM = 11  # RunContext.rng stream of ITQ's random starting rotation


@dataclass(frozen=True)
class UHBDNNParams(DeepParams):
    # None: the profile's value (see the module docstring).
    epochs: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # L-BFGS iterations in all (full batch)
    eval_every: int | None = field(default=None, metadata=non_negative(at_most=MAX_ITERATIONS))  # iterations between validations; 0: never
    inner_steps: int | None = field(default=None, metadata=at_least(1, at_most=MAX_ITERATIONS))  # L-BFGS iterations between B updates
    hidden: tuple[int, ...] | None = field(default=None, metadata=at_least(1, at_most=MAX_LAYER_SIZE))  # (h1, h2); None: by code length
    lambda1: float = field(default=1e-5, metadata=non_negative())  # weight decay
    lambda2: float = field(default=5e-2, metadata=non_negative())  # binary constraint ‖H − B‖²
    lambda3: float = field(default=1e-2, metadata=non_negative())  # independence ‖HHᵀ/m − I‖²
    lambda4: float = field(default=0.5e-6, metadata=non_negative())  # balance ‖H 1‖²
    code_sweeps: int = field(default=10, metadata=at_least(1, at_most=MAX_ITERATIONS))  # learn_B.m's passes over the bits

    def validate(self) -> None:
        if self.hidden is not None and len(self.hidden) != 2:
            raise UserError(f"uhbdnn.hidden takes two layer sizes (h1, h2), got {len(self.hidden)}")


@dataclass(frozen=True)
class UHBDNNSettings(DeepSettings):
    """Resolved settings of one run (``batch_size``: all training items, full-batch L-BFGS)."""

    inner_steps: int
    lambdas: tuple[float, float, float, float]
    code_sweeps: int


def released_hidden(bits: int) -> tuple[int, int]:
    """runHash.m's sizes for ``bits``; the next larger released length, or the 32-bit sizes
    scaled by bits/32 above 32 bits."""
    for length in sorted(RELEASED_HIDDEN):
        if bits <= length:
            return RELEASED_HIDDEN[length]
    return -(-120 * bits // 32), -(-50 * bits // 32)


class UHBDNN(DeepHashingMethod):
    name = "uhbdnn"
    family = "generative"
    version = "1"
    description = "UH-BDNN (Do et al. 2016): binary deep network, reconstruction from codes, independence and balance, alternating with B"
    Params = UHBDNNParams
    input = "features"
    precision = "float64"  # as the released MATLAB code

    def check_input(self, dimension: int) -> None:
        require_bits_at_most_dimension(self, dimension)

    def layer_sizes(self, dimension: int) -> tuple[int, int]:
        if self.params.hidden is not None:
            first, second = self.params.hidden
            if not (self.bits <= second <= first <= dimension):
                raise UserError(
                    f"uhbdnn.hidden=({first}, {second}) must satisfy bits ({self.bits}) <= h2 <= h1 <= "
                    f"the input dimension ({dimension}) for the eigenvector initialisation"
                )
            return first, second
        first, second = released_hidden(self.bits)
        first = min(first, dimension)
        return first, min(max(second, self.bits), first)

    def profile_settings(self, profile: str, train: DataSplit) -> UHBDNNSettings:
        items = len(train)
        if profile == "paper":
            values = self.schedule(RELEASED_BUDGET, train, items, intervals={"inner_steps": RELEASED_INNER})
        else:
            values = {**self.profile_values(TINY), **self.schedule(TINY_BUDGET, train, items)}
        params = self.params
        return UHBDNNSettings(
            profile=profile,
            lr=1.0,  # L-BFGS: the line search sets each step
            batch_size=items,
            lambdas=(params.lambda1, params.lambda2, params.lambda3, params.lambda4),
            code_sweeps=params.code_sweeps,
            **values,
        )

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.minimum) / self.spread

    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        import torch

        from hashbench.methods._linear import principal_components
        from hashbench.methods._uhbdnn_model import (
            BinaryDeepNet,
            uhbdnn_cost,
            unit_rescaling,
            update_codes,
        )
        from hashbench.methods.itq import itq_rotation
        from hashbench.toolkit.layers import feature_tensor

        settings = self.settings
        self.check_input(train.features.shape[1])
        raw = feature_tensor(train, self.device).double()
        self.minimum, self.spread = unit_rescaling(raw)
        features = self.transform_features(raw)
        self.hidden = self.layer_sizes(features.shape[1])
        # ITQ's codes of the rescaled training features start B (learn_all.m: runITQ).
        data = features.cpu().numpy()
        mean, components = principal_components(data, self.bits)
        projected = (data - mean) @ components
        rotation = itq_rotation(projected, ITQ_ROTATIONS, self.context.rng(ITQ_STREAM))
        itq_codes = torch.from_numpy(np.where(projected @ rotation >= 0, 1.0, -1.0)).to(self.device)
        model = BinaryDeepNet(features.shape[1], self.hidden, self.bits, len(train)).to(self.device)
        model.initialise(features, itq_codes)
        self.model = model
        optimizer = torch.optim.LBFGS(
            model.parameters(), lr=1.0, max_iter=1, history_size=100, tolerance_grad=1e-5, tolerance_change=1e-9,
            line_search_fn="strong_wolfe",
        )  # fmt: skip
        self.context.record.update(
            features=describe_features(train),
            optimizer="L-BFGS (torch.optim.LBFGS, strong Wolfe, 100 corrections), one iteration per step, full batch",
            layers=[features.shape[1], *self.hidden, self.bits],
        )

        def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
            done = int(model.steps_done)
            if done > 0 and done % settings.inner_steps == 0:  # an outer iteration: B, then a fresh L-BFGS
                with torch.no_grad():
                    hidden = model.hidden_codes(features)
                    residual = features - model.decoder.bias
                    model.codes.copy_(update_codes(residual, model.decoder.weight, hidden, settings.lambdas[1], settings.code_sweeps))
                optimizer.state.clear()
            first: dict[str, torch.Tensor] = {}

            def closure() -> torch.Tensor:
                optimizer.zero_grad(set_to_none=True)
                terms = uhbdnn_cost(model, features, model.codes, settings.lambdas)
                terms["loss"].backward()
                if not first:
                    first.update({key: value.detach() for key, value in terms.items()})
                return terms["loss"]

            optimizer.step(closure)
            model.steps_done += 1
            return first

        self.run_trainer({"lbfgs": optimizer}, step, train, val)

    def deviations(self, train: DataSplit) -> list[str]:
        settings = self.settings
        found = []
        if settings.profile == "tiny":
            found.append(
                f"tiny profile: {settings.inner_steps} L-BFGS iterations per outer iteration, {TINY_BUDGET.describe()} "
                "(released: 400 per outer iteration, 8,400 at most)"
            )
        elif backbone_features(train) is not None:
            found.append("input: VGG-16 fc7 features (released: GIST-320 of CIFAR-10, MNIST pixels)")
        if self.bits in RELEASED_HIDDEN and self.hidden != RELEASED_HIDDEN[self.bits]:
            found.append(f"layer sizes {self.hidden} (released at {self.bits} bits: {RELEASED_HIDDEN[self.bits]})")
        elif self.bits not in RELEASED_HIDDEN:
            found.append(f"layer sizes {self.hidden}: no released sizes at {self.bits} bits (released for 8, 16, 24, 32)")
        if self.validated:
            found.append(
                "model selection: the best validated step on the validation split, all outer iterations run "
                "(released: stops at the first outer iteration whose mAP on 1,000 training items does not improve)"
            )
        found.append("L-BFGS: torch.optim.LBFGS, one iteration per step (released: minFunc's L-BFGS, 400 per call)")
        found.append("eigenvector signs fixed (largest entry positive); ITQ's sign(0) = +1")
        return found

    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.hidden_codes(batch) >= 0
