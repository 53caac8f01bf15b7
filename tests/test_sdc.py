"""SDC: the released calibration loss against a transcription, budget, parameters, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from digits_runs import run_map
from scipy import stats

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.methods._sdc_common import calibration_targets, sdc_head, sdc_loss
from hashbench.methods.sdc import RELEASED_BUDGET, RELEASED_LR_STEP, SDC, SDCParams
from hashbench.params import resolve_params


def test_conforms():
    assert_conforms(SDC)


# --------------------------------------------------------------------------------------------
# released pieces (github.com/kamwoh/sdc at 9981beb, models/loss/sdc.py)


def test_calibration_targets_are_the_beta_midpoint_quantiles():
    # Four pairs: quantiles at 1/8, 3/8, 5/8, 7/8 of Beta(5, 5), mapped to [−1, 1].
    expected = np.array([stats.beta.ppf(q, 5, 5) * 2 - 1 for q in (0.125, 0.375, 0.625, 0.875)])
    np.testing.assert_allclose(calibration_targets(4, 5, 5), expected, rtol=1e-5)
    assert np.allclose(calibration_targets(4, 5, 5), -calibration_targets(4, 5, 5)[::-1], atol=1e-6)  # symmetric
    assert (calibration_targets(4, 5, 5, ortho=True) >= 0).all()


def released_sdc_loss(x: np.ndarray, v: np.ndarray, a: float, b: float) -> float:
    """SDCLoss.forward with rec=1, rec_type=l1, quan=1, quan_type=cs, no contrastive term."""
    if len(x) % 2:
        x, v = x[:-1], v[:-1]
    half = len(x) // 2

    def cos(p, q):
        return (p * q).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))

    order = np.argsort(cos(x[:half], x[half:]), kind="stable")
    hash_cos = cos(v[:half], v[half:])[order]
    grid = np.arange(1.0, 2 * half, 2.0) / (2 * half)
    target = stats.beta.ppf(grid, a=a, b=b) * 2 - 1
    return np.abs(hash_cos - target).mean() + (1 - cos(v, np.sign(v))).mean()


@pytest.mark.parametrize("count", [6, 7])  # an odd batch drops its last item, as released
def test_sdc_loss_matches_the_released_loss_on_a_hand_made_batch(count):
    rng = np.random.default_rng(1)
    x, v = rng.random((count, 10)), rng.standard_normal((count, 4))
    terms = sdc_loss(torch.tensor(x), torch.tensor(v), rec=1.0, quan=1.0, beta_a=5, beta_b=5)
    assert terms["loss"].item() == pytest.approx(released_sdc_loss(x, v, 5, 5), rel=1e-5)


def test_the_features_only_order_the_pairs():
    x = torch.rand(8, 5, requires_grad=True)
    v = torch.randn(8, 3, requires_grad=True)
    sdc_loss(x, v, rec=1.0, quan=0.0, beta_a=5, beta_b=5)["loss"].backward()
    assert x.grad is None and v.grad is not None and v.grad.abs().sum() > 0


def test_head_as_released():
    head = sdc_head(4096, 32)
    assert [type(layer).__name__ for layer in head] == ["Linear", "GELU", "Linear", "BatchNorm1d"]
    assert (head[0].out_features, head[2].out_features) == (4096, 32)


def test_released_budget_in_optimiser_steps():
    # configs/train.yaml: batch 64, 100 epochs, eval_interval 10; scheduler/step.yaml: step
    # int(0.8 · epochs) = 80 epochs; cifar10.yaml ep 1: 5,000 training images; the training
    # loader drops its last batch: 5,000 // 64 = 78 steps an epoch.
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps, RELEASED_LR_STEP) == (7_800, 780, 6_240)


def settings_for(params: SDCParams, count: int, shape=(32, 32, 3), bits: int = 64):
    arrays = DatasetArrays(labels=np.ones((count, 1), dtype=bool), images=np.zeros((count, *shape), np.uint8))
    return SDC(bits, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


def test_paper_defaults_and_profiles():
    params = SDCParams()
    assert (params.rec, params.rec_type, params.quan, params.quan_type, params.beta_a, params.beta_b) == (1.0, "l1", 1.0, "cs", 5.0, 5.0)
    assert (params.batch_size, params.weight_decay, params.ortho_constraint, params.backbone) == (64, 1e-5, False, "vgg16")
    # The released 7,800 steps: hashbench keeps the last, smaller batch (79 steps an epoch of
    # 5,000 images), so 99 epochs make them; the decay after 6,240 steps is after 79 epochs.
    paper = settings_for(params, 5_000)
    assert (paper.profile, paper.backbone, paper.lr, paper.epochs, paper.eval_every, paper.lr_step) == ("paper", "vgg16", 1e-4, 99, 10, 79)
    assert paper.released_steps == 7_800 and paper.steps == 99 * 79
    assert settings_for(SDCParams(backbone="vit_b_16"), 5_000).backbone == "vit_b_16"
    tiny = settings_for(params, 500, (8, 8, 1), bits=16)
    assert (tiny.profile, tiny.backbone, tiny.lr, tiny.epochs, tiny.lr_step) == ("tiny", "small", 1e-3, 100, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta_a": "0"}, "beta_a must be positive"),
        ({"rec": "-1"}, "rec must be >= 0"),
        ({"rec_type": "l3"}, "is not one of"),
        ({"backbone": "resnet50"}, "is not one of"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(SDCParams, overrides, owner="sdc")


# --------------------------------------------------------------------------------------------
# learning on digits (as tests/test_learning.py)




@pytest.mark.slow
def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh(tmp_path):
    params = {"epochs": 30, "eval_every": 0, "cpu_threads": 1}
    trained = run_map("sdc", params, tmp_path / "trained")
    untrained = run_map("sdc", {**params, "epochs": 1, "lr": 1e-12}, tmp_path / "untrained")
    lsh = run_map("lsh", {}, tmp_path / "lsh")
    # Measured: trained 0.810, untrained 0.54, LSH about 0.51 (mAP@100, 16 bits).
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
