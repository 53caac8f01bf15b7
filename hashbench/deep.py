"""The setup shared by every deep method (CIBHash, CLHash, TBH, BGAN, GreedyHash, Bi-half).

:class:`DeepHashingMethod` does everything around a method's own network and loss:

* the profile: ``paper`` or ``tiny`` as asked, or for ``auto`` what the dataset declares
  (``image_profile``), else the image shape (image methods) or where the features come from
  (feature methods);
* the settings: the method resolves its own from the profile (``profile_settings``);
  they are recorded under ``settings`` in the run record, with the CPU threads used and the
  budget in optimiser steps (``steps``; ``released_steps`` for a paper profile, whose epochs
  are scaled to this training set so that it trains for the released number of steps:
  :class:`ReleasedBudget`);
* the deviations from the released code that remain (``deviations``), recorded as a list
  of short strings;
* the tiny profile's budget (:class:`TinyBudget`): its epochs on small training sets, capped
  at a number of optimiser steps on larger ones (``settings.max_steps``);
* the run's device, seeds and CPU thread budget (:func:`training_threads`: for the tiny profile
  on the CPU, 2 threads for images of at least 256 values, such as 28×28, which also train
  and encode in channels-last memory format, ``settings.memory_format``; 1 thread for
  smaller images, such as 8×8 digits, and for feature methods);
* the :class:`~hashbench.toolkit.training.Trainer` with its checkpoint fingerprint and the
  validation score (mAP of the validation split against the training split, over the full
  ranking or at a cut-off);
* encoding a split batch by batch under the thread budget (``NotFittedError`` before ``fit``).

A method subclasses it with its ``Params`` (a :class:`DeepParams`), and defines
``profile_settings`` (returning a :class:`DeepSettings`), ``train_model`` (build
``self.model`` and its optimisers, then call :meth:`~DeepHashingMethod.run_trainer`) and
``code_batch`` (the codes of one batch of network inputs).

Also here: the features' provenance for the run record. The torch pieces the methods share
(the straight-through sign, simultaneous optimiser steps) are in
:mod:`hashbench.toolkit.layers`. This module imports torch and the trainer only inside
the functions that run them, so that registering and describing a method stays light.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from hashbench.data import DataSplit
from hashbench.errors import UserError
from hashbench.method import HashingMethod, require_fitted
from hashbench.params import MAX_THREADS, at_least, params_to_dict

if TYPE_CHECKING:
    import torch

    from hashbench.toolkit.training import TrainingResult

FEATURE_ENCODE_BATCH = 1024
IMAGE_ENCODE_BATCH = 256
# The tiny profile on the CPU: images of at least PARALLEL_ITEM_VALUES values (pixels ×
# channels) train and encode with up to PARALLEL_THREADS intra-op threads, in channels-last
# memory format (see training_threads).
PARALLEL_ITEM_VALUES = 256
PARALLEL_THREADS = 2
# Feature-input methods train for thousands of sub-second epochs (TBH's released budget is
# 100,000 steps): checkpoint at most once a minute rather than after every epoch.
CHECKPOINT_SECONDS = 60.0


# --------------------------------------------------------------------------------------------
# parameters and settings


@dataclass(frozen=True)
class DeepParams:
    """The parameters every deep method has; each method's ``Params`` extends these."""

    profile: Literal["auto", "paper", "tiny"] = "auto"
    # Intra-op CPU threads; None: 1 for the tiny profile on the CPU, torch's default otherwise.
    cpu_threads: int | None = field(default=None, metadata=at_least(1, at_most=MAX_THREADS))


@dataclass(frozen=True)
class DeepSettings:
    """What a run resolved from its profile and parameters; each method extends these."""

    profile: str  # the profile used: paper or tiny
    lr: float
    batch_size: int
    epochs: int
    eval_every: int  # epochs between validations; 0: never
    # Optimiser steps of the run (epochs × steps per epoch of this training set; set by
    # resolve_settings) and of the released code's run (paper profiles; None otherwise).
    steps: int = field(default=0, kw_only=True)
    released_steps: int | None = field(default=None, kw_only=True)
    # The tiny profile's cap on the optimiser steps of its default epochs (TinyBudget); None
    # for the paper profile and where the epochs were asked for.
    max_steps: int | None = field(default=None, kw_only=True)


# --------------------------------------------------------------------------------------------
# training budgets in optimiser steps


def steps_per_epoch(items: int, batch_size: int) -> int:
    """Optimiser steps of one epoch as the Trainer batches it (a last batch of one joins the
    one before it)."""
    full, rest = divmod(items, batch_size)
    count = full + (rest > 0)
    return count - 1 if count > 1 and rest == 1 else max(count, 1)


@dataclass(frozen=True)
class ReleasedBudget:
    """How long a released code trains, in optimiser steps, and how often it validates.

    ``steps``: optimiser steps of the released run; ``validate_steps``: steps between its
    validations (or the harness's choice where it does not validate). A paper profile trains
    for as many epochs of its own training set as it takes to reach ``steps``, so a training
    set ten times smaller gets ten times the epochs.
    """

    steps: int
    validate_steps: int

    @classmethod
    def from_epochs(cls, images: int, batch_size: int, epochs: int, validate_epochs: int, drop_last: bool = False) -> ReleasedBudget:
        """The budget of a released loop over ``epochs`` passes of ``images`` in batches."""
        per_epoch = images // batch_size if drop_last else math.ceil(images / batch_size)
        return cls(per_epoch * epochs, per_epoch * validate_epochs)

    def epochs(self, items: int, batch_size: int) -> int:
        """Epochs of ``items`` that make at least the released steps."""
        return max(1, math.ceil(self.steps / steps_per_epoch(items, batch_size)))

    def every(self, steps: int, items: int, batch_size: int) -> int:
        """An interval of ``steps`` (validation, learning-rate decay) in epochs of ``items``."""
        return max(1, round(steps / steps_per_epoch(items, batch_size)))


@dataclass(frozen=True)
class TinyBudget:
    """The tiny profile's budget: ``epochs`` passes over a small training set, at most
    ``max_steps`` optimiser steps on a larger one.

    The epochs were chosen for digits' 500 training images; a training set ten times larger
    would get ten times the steps. ``max_steps`` is at least the steps the epochs make on
    digits, so that digits' budget is unchanged, and larger sets train for as many whole
    epochs as fit in it (at least one). Validation every ``eval_every`` epochs; where the
    epochs are capped the interval shrinks with them, so a run validates as often.
    """

    epochs: int
    eval_every: int
    max_steps: int

    def schedule(self, items: int, batch_size: int) -> dict[str, int]:
        """``epochs`` and ``eval_every`` for ``items`` training items in batches of ``batch_size``."""
        epochs = min(self.epochs, max(1, self.max_steps // steps_per_epoch(items, batch_size)))
        if epochs == self.epochs or self.eval_every == 0:
            return {"epochs": epochs, "eval_every": self.eval_every}
        return {"epochs": epochs, "eval_every": max(1, round(self.eval_every * epochs / self.epochs))}

    def describe(self) -> str:
        """For a deviation: "100 epochs, at most 800 steps"."""
        return f"{self.epochs:,} epochs, at most {self.max_steps:,} steps"


def training_set_deviation(items: int, released_items: int, released: str) -> list[str]:
    """The deviation of training on the protocol's split instead of the released images."""
    if items == released_items:
        return []
    return [
        f"trains on the protocol's {items:,} training items (released: {released}); "
        "the released number of optimiser steps is kept"
    ]


def check_backbone_weights(params: Any, owner: str) -> None:
    """A weights file and random weights cannot both be asked for."""
    if params.backbone_weights is not None and not params.pretrained:
        raise UserError(f"{owner}.backbone_weights and pretrained=false contradict each other; drop one")


def declared_profile(split: DataSplit) -> str | None:
    """``paper`` / ``tiny`` from the image profile the split's dataset declares, if any
    (read from the data the method is given: ``DataSplit.image_profile``)."""
    declared = getattr(split, "image_profile", None)
    return {"natural": "paper", "tiny": "tiny"}.get(declared) if isinstance(declared, str) else None


def large_images(image_values: int) -> bool:
    """Whether images of ``image_values`` values (pixels × channels) are large enough for
    parallel kernels and channels-last batches (the tiny profile on the CPU)."""
    return image_values >= PARALLEL_ITEM_VALUES


def training_threads(requested: int | None, profile: str, device: torch.device, image_values: int = 0) -> int | None:
    """Intra-op CPU threads of a run: as asked; for the tiny profile on the CPU, by input;
    otherwise None (torch's setting as it is).

    ``image_values``: pixels × channels of the images an image method trains on (0 for a
    feature method). Tiny profile: up to ``PARALLEL_THREADS`` (2) threads for images of at
    least ``PARALLEL_ITEM_VALUES`` (256) values, such as 28×28, never more than the process's
    own thread budget (a worker's share under ``--jobs``, Slurm's CPUs); 1 thread otherwise.
    Measured on two idle cores (benchmarks/README.md): two threads make a 28×28 step of
    CIBHash's small backbone 1.5 times faster, BGAN's 1.5 times, encoding 1.7 times; an 8×8
    digits step several times slower (its kernels are too small to share); the feature
    methods' dense layers on 784 pixel values gain little (TBH 1.1 times, GreedyHash
    nothing). On a machine where another process keeps a core busy, two threads wait for
    each other at every kernel and a 28×28 step becomes several times slower than on one
    thread: ask ``cpu_threads=1`` there (or run with ``--jobs``, whose workers share the cores).

    The count is recorded (``settings.cpu_threads``). torch's CPU kernels may split a reduction
    (a weight gradient, batch-norm statistics) by thread, so the last bits of a result, and
    after many steps the codes, can depend on the thread count: one thread makes digits'
    results independent of the machine; on larger images, the fixed count of two makes them
    the same on every machine with at least two cores (and the same instruction set), not
    only on the one that ran them. Ask ``cpu_threads`` for more threads, or to repeat a run
    exactly where fewer cores are free.
    """
    if requested is not None:
        return requested
    if profile != "tiny" or device.type != "cpu":
        return None
    if not large_images(image_values):
        return 1
    import torch

    return max(1, min(PARALLEL_THREADS, torch.get_num_threads()))


def backbone_features(split: DataSplit) -> Any | None:
    """The backbone-feature cache behind ``split.features``, when that is where they come from."""
    from hashbench.toolkit.backbone_features import BackboneFeatures

    source = split.feature_source
    return source if isinstance(source, BackboneFeatures) else None


def describe_features(split: DataSplit, features: np.ndarray | None = None, cache: Any | None = None) -> dict[str, Any]:
    """What the feature vectors of ``split`` are, for the run record (``features`` and
    ``cache``: another layer's, when the method reads those instead)."""
    features = split.features if features is None else features
    cache = backbone_features(split) if cache is None else cache
    if cache is not None:
        source = f"{cache.backbone} backbone features ({cache.layer} of the evaluation-preprocessed images, feature cache)"
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


def validation_map(
    val_codes: np.ndarray, train_codes: np.ndarray, val: DataSplit, train: DataSplit, bits: int, topk: int | None = None
) -> float:
    """mAP of the validation items (never queries) against the training split: over the full
    ranking, or at ``topk``."""
    from hashbench.metrics import mean_average_precision

    return mean_average_precision(val_codes, train_codes, val.labels, train.labels, bits=bits, topk=topk)


# --------------------------------------------------------------------------------------------
# the shared setup


class DeepHashingMethod(HashingMethod):
    """A deep method: profile, settings, device, thread budget, trainer and encoding.

    Subclasses define:

    ``profile_settings(profile, train)``  the method's :class:`DeepSettings` for a resolved
        profile (:meth:`profile_values` picks each value as asked or the profile's);
    ``train_model(train, val)``  build ``self.model`` and its optimisers, then train with
        :meth:`run_trainer`;
    ``code_batch(batch)``  bool (or {0, 1}) codes of one batch of network inputs: uint8
        images (image methods) or rows of :meth:`inputs` (feature methods);
    ``transform_features(features)``  feature methods only, optional: what the network sees
        of the feature vectors (e.g. centred), set up in ``train_model``;
    ``deviations(train)``  optional: the deviations from the released code that remain in
        this run, as short strings (recorded as ``deviations``).

    ``fit`` resolves the settings (``self.settings``), seeds, picks the device
    (``self.device``) and runs ``train_model`` under the thread budget; ``encode`` checks the
    split against the training input (``self.input_shape``) and encodes it in batches.
    """

    Params: ClassVar[type] = DeepParams
    # Set when the run's precision is not the trainer's (bf16 autocast on CUDA), e.g. small
    # dense layers kept in float32.
    precision: ClassVar[str | None] = None

    # ---- what a method defines ----------------------------------------------------------

    @abc.abstractmethod
    def profile_settings(self, profile: str, train: DataSplit) -> DeepSettings:
        """The resolved settings for ``profile`` (``paper`` or ``tiny``)."""

    @abc.abstractmethod
    def train_model(self, train: DataSplit, val: DataSplit | None) -> None:
        """Build ``self.model`` and train it with :meth:`run_trainer`."""

    @abc.abstractmethod
    def code_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Codes of one batch of network inputs (called under ``torch.no_grad``, model in eval mode)."""

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        """Feature methods: the network's input from the raw feature vectors."""
        return features

    def deviations(self, train: DataSplit) -> list[str]:
        """What in this run differs from the released code (after ``train_model``)."""
        return []

    @property
    def validated(self) -> bool:
        """Whether the run selected its epoch on the validation split (after training)."""
        return bool((self.context.record.get("validation") or {}).get("metric"))

    # ---- profile and settings -----------------------------------------------------------

    def resolve_profile(self, train: DataSplit) -> str:
        """``paper`` or ``tiny``: as asked; for ``auto`` what the dataset declares, else by input.

        Image methods: ``tiny`` for grey images or images smaller than 32 pixels. Feature
        methods: ``paper`` on backbone (VGG-16 fc7) features, ``tiny`` on a dataset's own
        vectors (the pixels of tiny images).
        """
        if self.input == "images":
            shape = train.image_shape
            if shape is None or len(shape) != 3:
                raise UserError(f"{self.name} trains on images; this dataset provides none (use a feature method)")
        requested = self.params.profile
        if requested != "auto":
            return requested
        declared = declared_profile(train)
        if declared is not None:
            return declared
        if self.input == "images":
            return "tiny" if shape[2] == 1 or min(shape[:2]) < 32 else "paper"
        return "paper" if backbone_features(train) is not None else "tiny"

    def resolve_settings(self, train: DataSplit) -> DeepSettings:
        settings = self.profile_settings(self.resolve_profile(train), train)
        return replace(settings, steps=settings.epochs * steps_per_epoch(len(train), settings.batch_size))

    def schedule(
        self, budget: ReleasedBudget | TinyBudget, train: DataSplit, batch_size: int, intervals: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        """The one place where a profile's budget becomes a schedule for this training split.

        Returns settings: ``epochs`` and ``eval_every`` (the parameters' own where they are
        asked for), ``released_steps`` (a :class:`ReleasedBudget`'s steps) and ``max_steps``
        (a :class:`TinyBudget`'s cap, where the epochs were not asked for). ``intervals``
        (released budgets only): further intervals in released optimiser steps, e.g.
        ``{"lr_step": 30_000}`` between learning-rate decays (0: never), in epochs of
        ``train``, each also as asked where the parameter of its name is set.
        """
        items = len(train)
        if isinstance(budget, ReleasedBudget):
            planned = {"epochs": budget.epochs(items, batch_size), "eval_every": budget.every(budget.validate_steps, items, batch_size)}
            planned.update({name: budget.every(steps, items, batch_size) if steps else 0 for name, steps in (intervals or {}).items()})
            limits = {"released_steps": budget.steps, "max_steps": None}
        else:
            if intervals:
                raise ValueError("a tiny budget takes no released intervals")
            planned = budget.schedule(items, batch_size)
            asked_epochs = getattr(self.params, "epochs", None) is not None
            limits = {"released_steps": None, "max_steps": None if asked_epochs else budget.max_steps}
        return {**self.profile_values(planned), **limits}

    def interval_steps(self, name: str, train: DataSplit) -> int:
        """The settings' interval ``name`` (in epochs, as :meth:`schedule` resolved it) in
        optimiser steps of ``train``: for a step-level hook that runs every so many steps."""
        return int(getattr(self.settings, name)) * steps_per_epoch(len(train), self.settings.batch_size)

    def profile_values(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Each setting named in ``defaults`` (a profile's values): as asked in the
        parameters, or the profile's where the parameter is None or ``auto``."""
        values = {}
        for name, default in defaults.items():
            asked = getattr(self.params, name)
            values[name] = default if asked is None or asked == "auto" else asked
        return values

    # ---- training -----------------------------------------------------------------------

    def fit(self, train: DataSplit, val: DataSplit | None = None) -> None:
        import torch

        from hashbench.toolkit.training import cpu_threads, setup

        self.device = setup(self.context)
        self.settings = self.resolve_settings(train)
        self.input_shape = self._input_shape(train)
        image_values = math.prod(self.input_shape) if self.input == "images" else 0
        self.threads = training_threads(self.params.cpu_threads, self.settings.profile, self.device, image_values)
        # Channels-last images on the CPU: oneDNN's convolutions, batch norm and pooling run
        # faster on them (a 28×28 step of the small backbone about 1.3 times on one thread).
        self.channels_last = self.device.type == "cpu" and self.settings.profile == "tiny" and large_images(image_values)
        with cpu_threads(self.threads):
            threads = torch.get_num_threads()
            self.context.record.update(
                settings={**asdict(self.settings), "cpu_threads": threads, "memory_format": self.memory_format_name},
                cpu_threads=threads,
            )
            self.train_model(train, val)
        self.context.record["deviations"] = self.deviations(train)
        self.model.eval()

    @property
    def memory_format_name(self) -> str:
        """How image batches are laid out on the CPU: ``channels_last`` or ``contiguous``."""
        return "channels_last" if getattr(self, "channels_last", False) else "contiguous"

    def to_memory_format(self, tensor: torch.Tensor) -> torch.Tensor:
        """An image batch (or a module) in the run's CPU memory format (unchanged unless
        channels-last; CUDA layouts are the methods' own)."""
        if not getattr(self, "channels_last", False):
            return tensor
        import torch

        if isinstance(tensor, torch.Tensor):
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor.to(memory_format=torch.channels_last)

    def run_trainer(
        self,
        optimizers: Mapping[str, torch.optim.Optimizer],
        step: Callable[[Any], Mapping[str, torch.Tensor]],
        train: DataSplit,
        val: DataSplit | None,
        *,
        load: Callable[[np.ndarray], Any] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        validation_topk: int | None = None,
        on_divergence: str = "fail",
    ) -> TrainingResult:
        """Train ``self.model`` for the settings' schedule with the :class:`Trainer`.

        ``step(batch)`` trains on one batch (``load(positions)``, or the positions) and returns
        its loss terms. With a non-empty ``val``, the model is scored every ``eval_every``
        epochs (mAP against the training split, at ``validation_topk`` or over the full
        ranking) and the best one kept. ``fingerprint`` adds what else a checkpoint depends on
        (e.g. the backbone's weights) to the bits, parameters, settings and data sizes.
        ``on_divergence``: the Trainer's (``fail`` or ``keep_best``).
        """
        from hashbench.toolkit.training import Schedule, Trainer

        settings = self.settings
        validating = val is not None and len(val) > 0
        kind = "images" if self.input == "images" else "items"
        trainer = Trainer(
            self.context,
            self.model,
            optimizers,
            Schedule(settings.epochs, settings.batch_size, settings.eval_every if validating else 0),
            name=self.name,
            fingerprint={
                "bits": self.bits,
                "params": params_to_dict(self.params),
                "settings": asdict(settings),
                "dataset": train.dataset,
                "train": [len(train), *self.input_shape],
                "val": len(val) if val is not None else 0,
                # The thread count and the memory format change the last bits of a step.
                "cpu_threads": self.context.record.get("cpu_threads"),
                "memory_format": self.memory_format_name,
                **dict(fingerprint or {}),
            },
            schedulers=schedulers,
            validation_metric=(
                f"mAP over the full ranking: validation {kind} against the training split"
                if validation_topk is None
                else f"mAP@{validation_topk}: validation {kind} against the training split"
            ),
            checkpoint_seconds=CHECKPOINT_SECONDS if self.input == "features" else 0.0,
            on_divergence=on_divergence,
        )

        def validate() -> float:
            return validation_map(self.codes(val), self.codes(train), val, train, self.bits, validation_topk)

        result = trainer.fit(len(train), step, load=load, validate=validate if validating else None)
        if self.precision is not None:
            self.context.record["precision"] = self.precision
        return result

    # ---- encoding -----------------------------------------------------------------------

    def _input_shape(self, split: DataSplit) -> tuple[int, ...]:
        return tuple(split.image_shape) if self.input == "images" else (int(split.features.shape[1]),)

    def inputs(self, split: DataSplit) -> torch.Tensor:
        """Feature methods: the network's input for a whole split, on the run's device."""
        from hashbench.toolkit.layers import feature_tensor

        return self.transform_features(feature_tensor(split, self.device))

    def _batches(self, split: DataSplit) -> Iterable[torch.Tensor]:
        from hashbench.toolkit.training import batch_positions, image_loader, prefetch

        if self.input == "images":
            return prefetch(batch_positions(len(split), IMAGE_ENCODE_BATCH), image_loader(split, self.device))
        inputs = self.inputs(split)
        return (inputs[start : start + FEATURE_ENCODE_BATCH] for start in range(0, inputs.shape[0], FEATURE_ENCODE_BATCH))

    def codes(self, split: DataSplit) -> np.ndarray:
        """bool codes ``(n, bits)`` of a split, batch by batch, the model in eval mode."""
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            chunks = [self.code_batch(batch).bool().cpu() for batch in self._batches(split)]
        model.train(was_training)
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.bits), dtype=bool)

    def check_split(self, split: DataSplit) -> None:
        """Refuse a split whose input differs from the training split's."""
        if self.input == "images":
            if tuple(split.image_shape or ()) != self.input_shape:
                raise UserError(
                    f"{self.name}: images of shape {split.image_shape} differ from the training images' {self.input_shape}"
                )
        elif self._input_shape(split) != self.input_shape:
            raise UserError(
                f"{self.name}: features of {split.name} have {split.features.shape[1]} dimensions, "
                f"the model was trained on {self.input_shape[0]}"
            )

    def encode(self, split: DataSplit) -> np.ndarray:
        from hashbench.toolkit.training import cpu_threads

        require_fitted(self, "model")
        self.check_split(split)
        with cpu_threads(self.threads):
            return self.codes(split)

