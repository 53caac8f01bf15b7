"""The method plugin interface.

A method is a class with a ``name``, a one-line ``description``, a hyperparameter dataclass
``Params`` and the kind of input it consumes. The harness owns data loading, splits, seeding,
device choice, timing, packing, evaluation and storage; the method only fits on the training
split and encodes splits to codes ({0,1}, {-1,+1} or bool; numpy or torch).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from hashbench.errors import UserError
from hashbench.params import NoParams

if TYPE_CHECKING:
    from hashbench.data import DataSplit


@dataclass
class RunContext:
    """What the harness gives a method besides its data."""

    seed: int = 0
    device: str = "cpu"
    # Folder private to this run (checkpoints, logs); None when run outside a results store.
    work_dir: Path | None = None
    log: Callable[[str], None] = lambda message: None
    # Anything a method records here (training curve, epoch times, variant used) is stored
    # under "training" in the run record.
    record: dict[str, Any] = field(default_factory=dict)

    def rng(self, stream: int = 0) -> np.random.Generator:
        """A numpy generator derived from the run seed (``stream`` separates uses)."""
        return np.random.default_rng([self.seed, stream])


# The families of the field, in the order the report shows them: classic (shallow projections
# and graphs), generative (reconstruction and generative models), similarity (codes pulled to a
# similarity structure of deep features), contrastive (augmented views).
FAMILIES = ("classic", "generative", "similarity", "contrastive", "other")


class HashingMethod(abc.ABC):
    """Base class of every hashing method plugin (compare scikit-learn's estimators)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # "features": a float matrix (pixels for tiny images, backbone features otherwise);
    # "images": the raw uint8 images of the split.
    input: ClassVar[Literal["features", "images"]] = "features"
    # Bump when what the method computes changes (a fix, a new default): runs recorded under
    # another version are stale, so `hashbench run` redoes them instead of reusing them.
    version: ClassVar[str] = "1"
    # Where the report groups the method (its plots and colours), one of FAMILIES.
    family: ClassVar[str] = "other"

    def __init__(self, bits: int, params: Any = None, context: RunContext | None = None) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits < 1:
            raise UserError(f"{self.name}: bits must be a positive integer, got {bits!r}")
        self.bits = int(bits)
        self.params = params if params is not None else self.Params()
        self.context = context if context is not None else RunContext()

    def check_input(self, dimension: int) -> None:  # noqa: B027 (optional hook, not abstract)
        """Refuse a configuration the method cannot handle (override where needed)."""

    @abc.abstractmethod
    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        """Learn the hash function on the training split (``val`` for model selection only)."""

    @abc.abstractmethod
    def encode(self, split: DataSplit) -> Any:
        """Codes of ``split``, one row per item in the split's order."""


class NotFittedError(RuntimeError):
    """``encode`` called before ``fit`` (as scikit-learn's estimators raise)."""


def require_fitted(method: HashingMethod, *attributes: str) -> None:
    """Refuse to encode with a method whose ``fit`` has not set ``attributes``."""
    if not all(hasattr(method, name) for name in attributes):
        raise NotFittedError(f"{method.name}: encode() called before fit()")


def require_bits_at_most_dimension(method: HashingMethod, dimension: int) -> None:
    """Shared refusal for projection methods that need ``bits <= input dimension``."""
    if method.bits > dimension:
        raise UserError(
            f"{method.name} cannot produce {method.bits} bits from {dimension}-dimensional input "
            f"(it keeps at most one bit per principal direction); use --bits {dimension} or less, "
            "or a method without this limit such as lsh or sh"
        )
