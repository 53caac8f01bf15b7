"""The shared training layer: NaN guard, validation selection, checkpoints and resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.toolkit.training import (
    CHECKPOINT_NAME,
    Schedule,
    Trainer,
    TrainingDiverged,
    autocast,
    batch_positions,
    cpu_threads,
    image_loader,
    prefetch,
    setup,
    trainable,
)

TARGET = torch.linspace(-1, 1, 40).view(20, 2)
INPUTS = torch.linspace(0, 1, 60).view(20, 3)


class Interrupted(Exception):
    """Stands in for a kill in the middle of an epoch."""


def make_trainer(
    context: RunContext, schedule: Schedule, **fingerprint
) -> tuple[Trainer, nn.Module]:
    setup(context)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.BatchNorm1d(8), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(trainable(model), lr=0.05)
    trainer = Trainer(
        context, model, {"adam": optimizer}, schedule, name="toy", fingerprint=fingerprint
    )

    def step(positions: np.ndarray) -> dict[str, torch.Tensor]:
        # Dropout and the noise draw use torch's generator: resumption must restore it.
        noisy = INPUTS[positions] + 0.01 * torch.randn(len(positions), 3)
        loss = ((model(noisy) - TARGET[positions]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss, "half": loss / 2}

    trainer.step = step  # kept with the trainer for the tests
    return trainer, model


def test_loop_records_curve_and_times_and_removes_its_checkpoint(tmp_path):
    context = RunContext(seed=0, work_dir=tmp_path)
    trainer, _ = make_trainer(context, Schedule(epochs=3, batch_size=6))
    result = trainer.fit(20, trainer.step)
    curve = context.record["curve"]
    assert [entry["epoch"] for entry in curve] == [1, 2, 3]
    assert all(
        entry["seconds"] > 0 and entry["half"] == pytest.approx(entry["loss"] / 2)
        for entry in curve
    )
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert context.record["epoch_seconds"] == [entry["seconds"] for entry in curve]
    assert context.record["validation"]["selection"] == "last epoch (no validation)"
    assert result.selected_epoch == 3 and result.resumed_from_epoch is None
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_nan_guard_fails_the_run_with_epoch_and_step():
    context = RunContext(seed=0)
    trainer, _ = make_trainer(context, Schedule(epochs=5, batch_size=5))
    calls = []

    def step(positions):
        calls.append(1)
        terms = trainer.step(positions)
        if len(calls) == 6:  # epoch 2 (4 batches per epoch), its second step
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 2 \(loss=nan, half="):
        trainer.fit(20, step)


def nan_from_epoch(trainer: Trainer, epoch: int, steps_per_epoch: int = 4):
    """A step function whose loss turns NaN at the second step of ``epoch``, after updating the
    weights with NaN gradients (as a diverging step does)."""
    calls = []

    def step(positions):
        calls.append(1)
        if len(calls) >= (epoch - 1) * steps_per_epoch + 2:
            for parameter in trainable(trainer.model):
                parameter.data.fill_(float("nan"))
            return {"loss": torch.tensor(float("nan")), "half": torch.tensor(float("nan"))}
        return trainer.step(positions)

    return step


def test_keep_best_stops_at_a_nan_loss_and_keeps_the_best_validated_epoch():
    context = RunContext(seed=0)
    trainer, model = make_trainer(context, Schedule(epochs=8, batch_size=5, validate_every=2))
    trainer.on_divergence = "keep_best"
    scores = iter([0.3, 0.8, 0.5])
    snapshots = {}

    def validate():
        epoch = 2 * (len(snapshots) + 1)
        snapshots[epoch] = _final_state(model)
        return next(scores)

    result = trainer.fit(20, nan_from_epoch(trainer, 7), validate=validate)
    assert result.diverged == {"epoch": 7, "step": 2, "kept": "best validated epoch 4"}
    assert result.selected_epoch == 4 and [entry["epoch"] for entry in result.curve] == [1, 2, 3, 4, 5, 6]
    assert all(torch.equal(value, snapshots[4][key]) for key, value in model.state_dict().items())
    record = context.record
    assert record["diverged"] == result.diverged and record["on_divergence"] == "keep_best"
    assert record["validation"]["selected_epoch"] == 4
    assert record["validation"]["selection"] == "stopped at a non-finite loss: best validated epoch 4"


def test_keep_best_without_a_validated_epoch_keeps_the_last_finite_one():
    context = RunContext(seed=0)
    trainer, model = make_trainer(context, Schedule(epochs=8, batch_size=5))
    trainer.on_divergence = "keep_best"
    result = trainer.fit(20, nan_from_epoch(trainer, 4))
    assert result.diverged == {"epoch": 4, "step": 2, "kept": "last finite epoch 3"}
    assert result.selected_epoch == 3 and len(result.curve) == 3
    # The weights epoch 3 ended with, as a run of 3 epochs from the same seed ends: the
    # spoilt update and epoch 4's finite first step are both undone.
    clean_context = RunContext(seed=0)
    clean, clean_model = make_trainer(clean_context, Schedule(epochs=3, batch_size=5))
    clean.fit(20, clean.step)
    expected = _final_state(clean_model)
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_fail_is_the_default_and_an_unknown_choice_is_refused():
    context = RunContext(seed=0)
    trainer, _ = make_trainer(context, Schedule(epochs=3, batch_size=5))
    assert trainer.on_divergence == "fail"
    with pytest.raises(TrainingDiverged, match="epoch 2, step 2"):
        trainer.fit(20, nan_from_epoch(trainer, 2))
    with pytest.raises(UserError, match="on_divergence"):
        Trainer(context, nn.Linear(1, 1), {}, Schedule(epochs=1, batch_size=2), name="toy", on_divergence="skip")


def test_infinite_loss_is_caught_too():
    context = RunContext(seed=0)
    trainer, _ = make_trainer(context, Schedule(epochs=1, batch_size=10))
    with pytest.raises(TrainingDiverged, match="loss=inf"):
        trainer.fit(20, lambda positions: {"loss": torch.tensor(float("inf"))})


def test_best_validation_epoch_is_selected_and_restored():
    context = RunContext(seed=0)
    trainer, model = make_trainer(context, Schedule(epochs=6, batch_size=5, validate_every=2))
    scores = iter([0.2, 0.9, 0.5])
    snapshots = {}

    def validate():
        assert not model.training  # validation runs in eval mode
        epoch = 2 * (len(snapshots) + 1)
        snapshots[epoch] = {key: value.clone() for key, value in model.state_dict().items()}
        return next(scores)

    result = trainer.fit(20, trainer.step, validate=validate)
    assert result.selected_epoch == 4
    assert [v["epoch"] for v in result.validation] == [2, 4, 6]
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[4][key]), key
    validation = context.record["validation"]
    assert validation["selected_epoch"] == 4 and validation["every"] == 2
    assert validation["selection"] == "best validation score"
    assert "validation_seconds" in context.record["curve"][1]


def test_last_epoch_is_validated_when_not_a_multiple():
    context = RunContext(seed=0)
    trainer, _ = make_trainer(context, Schedule(epochs=5, batch_size=5, validate_every=2))
    result = trainer.fit(20, trainer.step, validate=lambda: 1.0)
    assert [v["epoch"] for v in result.validation] == [2, 4, 5]
    assert result.selected_epoch == 2  # ties keep the earlier epoch


def _final_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_interrupted_run_resumes_from_its_checkpoint_and_ends_identically(tmp_path):
    schedule = Schedule(epochs=5, batch_size=6, validate_every=2)
    scores = [0.1, 0.7, 0.3]

    clean_context = RunContext(seed=3, work_dir=tmp_path / "clean")
    clean, clean_model = make_trainer(clean_context, schedule)
    clean_scores = iter(scores)
    clean.fit(20, clean.step, validate=lambda: next(clean_scores))

    context = RunContext(seed=3, work_dir=tmp_path / "killed")
    first, _ = make_trainer(context, schedule)
    steps = []

    def dying_step(positions):
        steps.append(1)
        if len(steps) == 3 * 4 + 2:  # in the middle of epoch 4
            raise Interrupted
        return first.step(positions)

    first_scores = iter(scores)
    with pytest.raises(Interrupted):
        first.fit(20, dying_step, validate=lambda: next(first_scores))
    assert (tmp_path / "killed" / CHECKPOINT_NAME).is_file()

    # A fresh process: new model, new optimiser, generators reseeded, then the checkpoint.
    torch.manual_seed(12345)  # disturb the global generator: the checkpoint must restore it
    resumed_context = RunContext(seed=3, work_dir=tmp_path / "killed")
    resumed, resumed_model = make_trainer(resumed_context, schedule)
    resumed_scores = iter(scores[1:])  # epoch 2 was validated before the interruption
    result = resumed.fit(20, resumed.step, validate=lambda: next(resumed_scores))

    assert result.resumed_from_epoch == 3
    assert resumed_context.record["resumed_from_epoch"] == 3
    assert result.selected_epoch == 4
    clean_final, resumed_final = _final_state(clean_model), _final_state(resumed_model)
    for key in clean_final:
        assert torch.equal(clean_final[key], resumed_final[key]), key
    losses = [entry["loss"] for entry in clean_context.record["curve"]]
    assert [entry["loss"] for entry in resumed_context.record["curve"]] == losses
    assert not (tmp_path / "killed" / CHECKPOINT_NAME).exists()


def test_checkpoint_of_another_configuration_is_discarded(tmp_path):
    context = RunContext(seed=0, work_dir=tmp_path)
    trainer, _ = make_trainer(context, Schedule(epochs=3, batch_size=5), lr=0.05)
    steps = []

    def dying_step(positions):
        steps.append(1)
        if len(steps) == 6:
            raise Interrupted
        return trainer.step(positions)

    with pytest.raises(Interrupted):
        trainer.fit(20, dying_step)
    assert (tmp_path / CHECKPOINT_NAME).is_file()

    other_context = RunContext(seed=0, work_dir=tmp_path)
    other, _ = make_trainer(other_context, Schedule(epochs=3, batch_size=5), lr=0.01)
    result = other.fit(20, other.step)
    assert result.resumed_from_epoch is None
    assert other_context.record["discarded_checkpoint"] == "made with another configuration"
    assert len(other_context.record["curve"]) == 3


def test_unreadable_checkpoint_is_discarded(tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    context = RunContext(seed=0, work_dir=tmp_path)
    trainer, _ = make_trainer(context, Schedule(epochs=1, batch_size=5))
    assert trainer.fit(20, trainer.step).resumed_from_epoch is None
    assert context.record["discarded_checkpoint"].startswith("unreadable")


def test_frozen_parameters_are_not_checkpointed(tmp_path):
    context = RunContext(seed=0, work_dir=tmp_path)
    setup(context)
    frozen = nn.Linear(3, 3)
    frozen.requires_grad_(False)
    model = nn.ModuleDict({"frozen": frozen, "head": nn.Linear(3, 1)})
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == 2
    trainer = Trainer(
        context, model, {"sgd": optimizer}, Schedule(epochs=2, batch_size=5), name="toy"
    )

    def dying_step(positions):
        if trainer.checkpoint_path.exists():
            raise Interrupted
        loss = model["head"](model["frozen"](INPUTS[positions])).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss}

    with pytest.raises(Interrupted):
        trainer.fit(20, dying_step)
    saved = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert set(saved["model"]) == {"head.weight", "head.bias"}
    assert saved["epoch"] == 1


def test_prefetch_loads_every_batch_in_order():
    batches = batch_positions(10, 4)
    loaded = list(prefetch(batches, lambda positions: positions * 10))
    assert [list(item) for item in loaded] == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90]]
    assert list(prefetch([], lambda positions: positions)) == []


def test_batches_never_end_with_a_single_item():
    sizes = [len(batch) for batch in batch_positions(9, 4)]
    assert sizes == [4, 5]
    assert [len(batch) for batch in batch_positions(8, 4)] == [4, 4]


def test_image_loader_reads_positions_of_the_split():
    class Split:
        def images(self, positions):
            return np.stack([np.full((2, 2, 1), p, dtype=np.uint8) for p in positions])

    batch = image_loader(Split(), "cpu")(np.array([3, 1]))
    assert batch.dtype == torch.uint8 and batch[:, 0, 0, 0].tolist() == [3, 1]


def test_setup_seeds_and_picks_the_device():
    device = setup(RunContext(seed=4, device="cpu"))
    first = torch.rand(3)
    setup(RunContext(seed=4, device="cpu"))
    assert device == torch.device("cpu") and torch.equal(first, torch.rand(3))
    with autocast(device):  # a no-op on the CPU: float32 stays float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_schedule_refuses_bad_values():
    with pytest.raises(UserError, match="epochs must be at least 1"):
        Schedule(epochs=0, batch_size=4)
    with pytest.raises(UserError, match="batch_size must be at least 2"):
        Schedule(epochs=1, batch_size=1)


def test_cpu_threads_are_set_for_the_block_and_restored():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):  # None leaves torch's setting alone
        assert torch.get_num_threads() == before


def test_a_nan_validation_score_never_wins():
    context = RunContext(seed=0)
    trainer, _ = make_trainer(context, Schedule(epochs=3, batch_size=5, validate_every=1))
    scores = iter([float("nan"), 0.2, 0.1])
    assert trainer.fit(20, trainer.step, validate=lambda: next(scores)).selected_epoch == 2


def test_checkpoint_interval_skips_writes_and_resumption_still_ends_identically(tmp_path):
    schedule = Schedule(epochs=4, batch_size=6)
    clean_context = RunContext(seed=5, work_dir=tmp_path / "clean")
    clean, clean_model = make_trainer(clean_context, schedule)
    clean.fit(20, clean.step)

    context = RunContext(seed=5, work_dir=tmp_path / "sparse")
    sparse, _ = make_trainer(context, schedule)
    sparse.checkpoint_seconds = 3600.0  # no epoch is long enough to earn a checkpoint
    steps = []

    def dying_step(positions):
        steps.append(1)
        if len(steps) == 3 * 4 + 1:  # at the start of epoch 4
            raise Interrupted
        return sparse.step(positions)

    with pytest.raises(Interrupted):
        sparse.fit(20, dying_step)
    assert not (tmp_path / "sparse" / CHECKPOINT_NAME).exists()

    resumed_context = RunContext(seed=5, work_dir=tmp_path / "sparse")
    resumed, resumed_model = make_trainer(resumed_context, schedule)
    result = resumed.fit(20, resumed.step)
    assert result.resumed_from_epoch is None  # started over, from the same seeds
    clean_final, resumed_final = _final_state(clean_model), _final_state(resumed_model)
    assert all(torch.equal(clean_final[key], resumed_final[key]) for key in clean_final)
