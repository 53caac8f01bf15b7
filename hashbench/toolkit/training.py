"""The training layer shared by the deep methods (CIBHash, BGAN, TBH, GreedyHash, ...).

The built-in deep methods reach it through ``hashbench.deep.DeepHashingMethod``,
which builds the trainer from the method's resolved settings. Used directly, a method builds
its networks and optimisers, then hands the loop to a :class:`Trainer`::

    device = setup(self.context)                         # seeds, device, cuDNN settings
    model = nn.ModuleDict({"backbone": ..., "head": ...}).to(device)
    optimizer = torch.optim.Adam(trainable(model), lr=...)
    trainer = Trainer(self.context, model, {"adam": optimizer},
                      Schedule(epochs=60, batch_size=64, validate_every=20),
                      name="cibhash", fingerprint={"bits": 32, "params": {...}})

    def step(images):                                    # one batch; returns its loss terms
        with autocast(device):
            ...
        loss.backward(); optimizer.step(); optimizer.zero_grad()
        return {"loss": loss, "contrastive": ..., "kl": ...}

    trainer.fit(len(train), step, load=image_loader(train, device), validate=score_on_val)

What the trainer does for every method:

* batches: a shuffled order of the training positions per epoch, drawn from a generator
  derived from the run seed; ``load(positions)`` (when given) runs one batch ahead in a
  background thread, so reading/decoding images overlaps the GPU's work;
* progress: a rich progress bar with the running loss;
* a NaN/inf guard: any non-finite loss term stops training. With ``on_divergence="fail"``
  (the default) the run fails with :class:`TrainingDiverged` (epoch, step and the terms'
  values in the message); with ``"keep_best"`` (the released CIBHash code's behaviour)
  training stops there and the best validated weights are kept, or, before any validation,
  those of the last epoch that ended with finite weights; ``diverged`` in the record says
  where it stopped and what was kept;
* validation every ``validate_every`` epochs (and at the last epoch) when a ``validate``
  callback is given — the callback scores the model on the validation split, never on the
  query split — keeping the best-scoring weights, which are restored at the end;
* a checkpoint after every epoch in ``RunContext.work_dir`` (trainable weights, buffers,
  optimiser states, every random generator's state, curve, best weights), so a killed run
  resumes from its last finished epoch and ends with the same codes as an uninterrupted
  one on the same device; a checkpoint whose fingerprint differs from the run's (other
  hyperparameters, code version, device type) is discarded; it is deleted after success;
* the record: per-epoch loss terms, wall and process CPU time (``curve``), validation scores and the selected
  epoch, total time, precision, resumption, all into ``RunContext.record``.

Frozen parameters (``requires_grad=False``, e.g. the VGG-16 trunk) are not checkpointed:
they are rebuilt from their source when the run resumes.

Fault injection for tests: with ``HASHBENCH_KILL_AFTER_EPOCH=k`` in the environment the
process kills itself (SIGKILL) right after writing the checkpoint of epoch ``k``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hashbench import progress
from hashbench.environment import seed_everything
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.storage import atomic

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
KILL_AFTER_EPOCH_ENV = "HASHBENCH_KILL_AFTER_EPOCH"
_SHUFFLE_STREAM = 7  # RunContext.rng stream of the batch order


class TrainingDiverged(RuntimeError):
    """A loss term became NaN or infinite; the run fails with this reason."""

    def __init__(self, message: str, epoch: int = 0, step: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


ON_DIVERGENCE = ("fail", "keep_best")


@dataclass(frozen=True)
class Schedule:
    """How long and in which batches to train, and how often to validate."""

    epochs: int
    batch_size: int
    validate_every: int = 0  # epochs between validations; 0 = never
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.validate_every < 0:
            raise UserError(
                f"the validation interval must be >= 0 epochs, got {self.validate_every}"
            )


# --------------------------------------------------------------------------------------------
# device, seeding, precision


def setup(context: RunContext, *, deterministic: bool = True) -> torch.device:
    """Seed every generator from the run seed and return the run's device.

    ``deterministic`` asks cuDNN for deterministic algorithms (the same seed on the same
    GPU then gives the same codes); CPU kernels are deterministic already.
    """
    seed_everything(context.seed)
    device = torch.device(context.device)
    if device.type == "cuda":
        if device.index is not None:
            torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    return device


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op CPU threads (None: torch's setting as it is), then restore.

    Small networks gain nothing from parallel kernels and, on a shared machine, lose a lot to
    threads waiting for each other; one thread also makes CPU results independent of the
    number of cores.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (the networks' matrix work), a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: torch.device | str) -> str:
    return "bf16 autocast" if torch.device(device).type == "cuda" else "float32"


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should update (frozen ones excluded)."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def batch_positions(
    count: int, batch_size: int, order: np.ndarray | None = None
) -> list[np.ndarray]:
    """Consecutive batches of ``order`` (default 0..count-1); a last batch of one is merged.

    A single-item batch has no negatives for a contrastive loss and breaks batch norm, so it
    joins the previous batch instead.
    """
    order = np.arange(count) if order is None else order
    batches = [order[start : start + batch_size] for start in range(0, count, batch_size)]
    if len(batches) > 1 and batches[-1].size == 1:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def image_loader(split: Any, device: torch.device | str) -> Callable[[np.ndarray], torch.Tensor]:
    """``positions → uint8 (n, H, W, C)`` tensor of ``split``'s images (pinned on CUDA).

    Runs in the trainer's prefetch thread, so the copy to the GPU can be asynchronous.
    """
    pin = torch.device(device).type == "cuda"

    def load(positions: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(split.images(positions)))
        return tensor.pin_memory() if pin else tensor

    return load


def prefetch(items: list[np.ndarray], load: Callable[[np.ndarray], Any] | None) -> Iterator[Any]:
    """``load(item)`` for each item, the next one prepared in a background thread."""
    if load is None:
        yield from items
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, items[0]) if items else None
        for index in range(len(items)):
            result = pending.result()
            pending = pool.submit(load, items[index + 1]) if index + 1 < len(items) else None
            yield result


# --------------------------------------------------------------------------------------------
# checkpoints


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and all buffers, on the CPU (frozen parameters are rebuilt)."""
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    return {
        name: value.detach().to("cpu", copy=True)
        for name, value in model.state_dict().items()
        if name not in frozen
    }


def _load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    result = model.load_state_dict(dict(state), strict=False)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    missing = [name for name in result.missing_keys if name not in frozen]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"checkpoint does not match the model (missing {missing}, unexpected {result.unexpected_keys})"
        )


def _all_finite(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(value).all()) for value in state.values() if value.is_floating_point())


def _rng_state(shuffle: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": shuffle.bit_generator.state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], shuffle: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.bit_generator.state = state["shuffle"]
    if (
        "cuda" in state
        and torch.cuda.is_available()
        and len(state["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _jsonable(value: Any) -> Any:
    """Fingerprints compare as JSON-like values (tuples and lists alike)."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    for plain in (int, float, str):  # subclasses (torch's version string) do not load safely
        if isinstance(value, plain):
            return plain(value)
    return str(value)


# --------------------------------------------------------------------------------------------


def _kill_after_epoch() -> int | None:
    """Fault injection for the tests: ``HASHBENCH_KILL_AFTER_EPOCH=k`` kills the process right
    after the checkpoint of epoch ``k`` is written."""
    value = os.environ.get(KILL_AFTER_EPOCH_ENV, "").strip()
    return int(value) if value.isdigit() else None


@dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` did: the curve, the selected epoch, timings."""

    curve: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    selected_epoch: int | None = None
    resumed_from_epoch: int | None = None
    # Where a non-finite loss stopped training under on_divergence="keep_best", and what was kept.
    diverged: dict[str, Any] | None = None


class Trainer:
    """The epoch loop with everything around it (see the module docstring)."""

    def __init__(
        self,
        context: RunContext,
        model: nn.Module,
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedule: Schedule,
        *,
        name: str,
        fingerprint: Mapping[str, Any] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        validation_metric: str = "validation score",
        checkpoint_seconds: float = 0.0,
        on_divergence: str = "fail",
    ) -> None:
        """``checkpoint_seconds``: least time between two checkpoints (0: after every epoch).
        Methods with thousands of sub-second epochs set it, so that checkpoint writes do not
        dominate training; a resumed run replays the epochs since the last one identically.

        ``on_divergence``: ``fail`` raises :class:`TrainingDiverged` at a non-finite loss;
        ``keep_best`` stops training there and keeps the best validated weights (else those
        of the last epoch that ended with finite weights)."""
        if on_divergence not in ON_DIVERGENCE:
            raise UserError(f"on_divergence must be one of {', '.join(ON_DIVERGENCE)}; got {on_divergence!r}")
        self.on_divergence = on_divergence
        self.context = context
        self.checkpoint_seconds = checkpoint_seconds
        self.kill_after_epoch = _kill_after_epoch()
        self.model = model
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        self.schedule = schedule
        self.name = name
        self.validation_metric = validation_metric
        self.device = torch.device(context.device)
        self.fingerprint = _jsonable(
            {
                "format": CHECKPOINT_FORMAT,
                "name": name,
                "seed": context.seed,
                "device": self.device.type,
                "torch": torch.__version__,
                "schedule": asdict(schedule),
                **dict(fingerprint or {}),
            }
        )
        self.shuffle_rng = context.rng(_SHUFFLE_STREAM)

    # ---- checkpoints --------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return (
            None if self.context.work_dir is None else Path(self.context.work_dir) / CHECKPOINT_NAME
        )

    def _save_checkpoint(
        self, epoch: int, result: TrainingResult, best: dict[str, Any] | None
    ) -> None:
        path = self.checkpoint_path
        if path is None:
            return
        payload = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "model": _trainable_state(self.model),
            "optimizers": {
                key: optimizer.state_dict() for key, optimizer in self.optimizers.items()
            },
            "schedulers": {
                key: scheduler.state_dict() for key, scheduler in self.schedulers.items()
            },
            "rng": _rng_state(self.shuffle_rng),
            "curve": result.curve,
            "validation": result.validation,
            "best": best,
        }
        with atomic.replacing(path) as temporary:  # a kill leaves the previous checkpoint intact
            torch.save(payload, temporary)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint of an interrupted run with the same fingerprint, else None."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unreadable: start over rather than fail
            self.context.log(f"{self.name}: ignoring unreadable checkpoint {path} ({error})")
            path.unlink(missing_ok=True)
            self.context.record["discarded_checkpoint"] = f"unreadable: {type(error).__name__}"
            return None
        if payload.get("fingerprint") != self.fingerprint:
            self.context.log(
                f"{self.name}: discarding checkpoint {path} made with another configuration"
            )
            path.unlink(missing_ok=True)
            self.context.record["discarded_checkpoint"] = "made with another configuration"
            return None
        return payload

    def _restore(
        self, payload: Mapping[str, Any], result: TrainingResult
    ) -> tuple[int, dict[str, Any] | None]:
        _load_trainable_state(self.model, payload["model"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(payload["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            scheduler.load_state_dict(payload["schedulers"][key])
        _set_rng_state(payload["rng"], self.shuffle_rng)
        result.curve = list(payload["curve"])
        result.validation = list(payload["validation"])
        result.resumed_from_epoch = int(payload["epoch"])
        return int(payload["epoch"]), payload["best"]

    # ---- the loop -----------------------------------------------------------------------

    def _check_finite(
        self, terms: Mapping[str, torch.Tensor], epoch: int, step: int
    ) -> dict[str, torch.Tensor]:
        detached = {key: torch.as_tensor(value).detach().float() for key, value in terms.items()}
        if not bool(torch.isfinite(torch.stack(list(detached.values()))).all()):
            shown = ", ".join(f"{key}={float(value):.4g}" for key, value in detached.items())
            raise TrainingDiverged(
                f"{self.name}: the loss is no longer finite at epoch {epoch}, step {step} ({shown}); "
                "training stopped. Try a lower learning rate, another seed, or float32 (--device cpu)",
                epoch,
                step,
            )
        return detached

    def fit(
        self,
        num_items: int,
        step: Callable[[Any], Mapping[str, torch.Tensor]],
        *,
        load: Callable[[np.ndarray], Any] | None = None,
        validate: Callable[[], float] | None = None,
    ) -> TrainingResult:
        """Train for the schedule; returns the curve and the selected epoch.

        ``step(batch)`` trains on one batch (``load(positions)``, or the positions when no
        ``load`` is given) and returns its loss terms (scalar tensors; ``loss`` first by
        convention). ``validate()`` returns a score, higher is better.

        In steps: resume from a checkpoint if there is one; each epoch, train on every batch,
        validate when due (keeping the best weights) and checkpoint when due; then select
        the weights to keep, record the run and delete the checkpoint.
        """
        if num_items < 2:
            raise UserError(f"{self.name} needs at least 2 training items, got {num_items}")
        schedule = self.schedule
        result = TrainingResult()
        start_epoch, best = self._resume(result)
        steps_per_epoch = len(batch_positions(num_items, schedule.batch_size))
        validating = validate is not None and schedule.validate_every > 0
        last_finite: dict[str, Any] | None = None  # keep_best: the weights the last finite epoch ended with
        last_checkpoint = time.monotonic()
        with progress.steps(self.name, schedule.epochs * steps_per_epoch, start_epoch * steps_per_epoch) as advance:
            for epoch in range(start_epoch + 1, schedule.epochs + 1):
                if self.on_divergence == "keep_best":
                    # A loss step already applied when its loss shows NaN may have spoilt the
                    # weights, so what is kept is a copy taken as an epoch starts.
                    state = _trainable_state(self.model)
                    if _all_finite(state):
                        last_finite = {"epoch": epoch - 1, "state": state}
                entry = self._train_epoch(epoch, num_items, step, load, advance, result)
                if entry is None:  # diverged, and keep_best: training stops here
                    break
                if validating and (epoch % schedule.validate_every == 0 or epoch == schedule.epochs):
                    best = self._validate(epoch, validate, entry, result, best)
                result.curve.append(entry)
                killing = self.kill_after_epoch == epoch  # fault injection for the tests
                if killing or time.monotonic() - last_checkpoint >= self.checkpoint_seconds:
                    self._save_checkpoint(epoch, result, best)
                    last_checkpoint = time.monotonic()
                if killing and self.checkpoint_path is not None:
                    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        self._keep_selected(result, best, last_finite)
        self._write_record(result, validating)
        if self.checkpoint_path is not None:
            self.checkpoint_path.unlink(missing_ok=True)
        return result

    def _resume(self, result: TrainingResult) -> tuple[int, dict[str, Any] | None]:
        """The epoch to go on from and the best weights so far: from the run's checkpoint when
        it has one of this fingerprint, else (0, None)."""
        payload = self._load_checkpoint()
        if payload is None:
            return 0, None
        start_epoch, best = self._restore(payload, result)
        # the run folder's name without its digest: method-dataset-protocol-split-bits-seed
        cell = Path(self.context.work_dir).name.rsplit("-", 1)[0] if self.context.work_dir else self.name
        message = f"resuming {cell} from epoch {start_epoch} of {self.schedule.epochs} (its checkpoint)"
        self.context.log(f"{self.name}: {message}")
        if progress.mode() != "quiet":
            progress.line(message)
        return start_epoch, best

    def _train_epoch(self, epoch, num_items, step, load, advance, result: TrainingResult) -> dict[str, Any] | None:
        """One pass over the training items in this epoch's order; its curve entry (mean loss
        terms, wall and CPU seconds), or None when the loss diverged under keep_best."""
        schedule = self.schedule
        self.model.train()
        order = self.shuffle_rng.permutation(num_items) if schedule.shuffle else np.arange(num_items)
        batches = batch_positions(num_items, schedule.batch_size, order)
        sums: dict[str, float] = {}
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            for index, batch in enumerate(prefetch(batches, load), start=1):
                terms = self._check_finite(step(batch), epoch, index)
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                advance(f"{self.name} epoch {epoch}/{schedule.epochs} loss {float(next(iter(terms.values()))):.4f}")
        except TrainingDiverged as error:
            if self.on_divergence != "keep_best":
                raise
            self.context.log(f"{error} Keeping the best validated or last finite weights.")
            result.diverged = {"epoch": error.epoch, "step": error.step}
            return None
        for scheduler in self.schedulers.values():
            scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        # CPU time beside wall time: their ratio shows threads at work, or contention.
        entry = {"epoch": epoch, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}
        entry.update({key: value / len(batches) for key, value in sums.items()})
        return entry

    def _validate(self, epoch, validate, entry, result: TrainingResult, best):
        """Score the model on the validation split; returns the best weights so far."""
        started = time.perf_counter()
        self.model.eval()
        with torch.no_grad():
            score = float(validate())
        self.model.train()
        entry["validation_seconds"] = time.perf_counter() - started
        result.validation.append({"epoch": epoch, "score": score})
        # Strictly better, so ties keep the earlier epoch (as the released CIBHash code); a
        # NaN score never wins.
        ranked = score if math.isfinite(score) else float("-inf")
        if best is None or ranked > best["score"]:
            return {"epoch": epoch, "score": ranked, "state": _trainable_state(self.model)}
        return best

    def _keep_selected(self, result: TrainingResult, best, last_finite) -> None:
        """Load the weights the run keeps: the best validated, else (diverged) the last finite
        ones, else the last epoch's as they are."""
        if result.diverged is not None and best is None:
            if last_finite is None:  # not even the starting weights were finite
                raise TrainingDiverged(
                    f"{self.name}: the loss is no longer finite at epoch {result.diverged['epoch']}, "
                    f"step {result.diverged['step']}, and no epoch ended with finite weights",
                    result.diverged["epoch"],
                    result.diverged["step"],
                )
            best = last_finite
            result.diverged["kept"] = f"last finite epoch {last_finite['epoch']}"
        elif result.diverged is not None:
            result.diverged["kept"] = f"best validated epoch {best['epoch']}"
        if best is not None:
            _load_trainable_state(self.model, best["state"])
            result.selected_epoch = int(best["epoch"])
        else:
            result.selected_epoch = self.schedule.epochs

    def _write_record(self, result: TrainingResult, validating: bool) -> None:
        record = self.context.record
        record["schedule"] = asdict(self.schedule)
        record["device"] = str(self.device)
        record["precision"] = precision_name(self.device)
        record["curve"] = result.curve
        record["epoch_seconds"] = [entry["seconds"] for entry in result.curve]
        record["train_seconds"] = sum(
            entry["seconds"] + entry.get("validation_seconds", 0.0) for entry in result.curve
        )
        record["resumed_from_epoch"] = result.resumed_from_epoch
        record["on_divergence"] = self.on_divergence
        record["diverged"] = result.diverged
        if result.diverged is not None:
            selection = f"stopped at a non-finite loss: {result.diverged['kept']}"
        elif validating:
            selection = "best validation score"
        else:
            selection = "last epoch (no validation)"
        record["validation"] = {
            "metric": self.validation_metric if validating else None,
            "every": self.schedule.validate_every if validating else None,
            "scores": result.validation,
            "selected_epoch": result.selected_epoch,
            "selection": selection,
        }
