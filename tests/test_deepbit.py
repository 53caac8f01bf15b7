"""DeepBit: the released layers, loss terms, rotations, solver schedule and test-time codes,
pinned against the authors' Caffe release (github.com/kevinlin311tw/cvpr16-deepbit); it
learns on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hashbench import registry
from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.data.splits import draw_split
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._deepbit_model import (
    LatentLayer,
    balance_loss,
    deepbit_terms,
    quantization_loss,
    rotate,
    rotation_angles,
    rotation_loss,
    rotation_weight,
)
from hashbench.methods.deepbit import RELEASED_BUDGET, DeepBit, DeepBitParams, lr_factor
from hashbench.methods.lsh import LSH
from hashbench.metrics import mean_average_precision
from hashbench.params import resolve_params

# A hand-made batch of N = 3 codes of K = 4 units (ReLU outputs).
X = np.array([[0.9, 0.2, 0.6, 0.0], [0.4, 0.7, 1.3, 0.5], [0.1, 0.8, 0.55, 0.3]])


def _min_quantize(x):
    """K2_min_quantize_loss_layer.cpp Forward_cpu: Σ (binary − data)² / num / 2."""
    binary = (x > 0.5).astype(float)
    return np.sum((binary - x) ** 2) / x.shape[0] / 2


def _even_dist(x):
    """K1_even_dist_loss_layer.cpp Forward_cpu: per channel avg = #(data > 0.5) / batch;
    Σ (avg − 0.5)² / num / 2."""
    loss = 0.0
    for i in range(x.shape[1]):
        avg = sum(1 for j in range(x.shape[0]) if x[j, i] > 0.5) / x.shape[0]
        loss += (avg - 0.5) ** 2
    return loss / x.shape[0] / 2


def _transform(a, b, w1, w2):
    """K3_transform_loss_layer.cpp Forward_cpu: Σ_i w2_i (w1_i ‖a_i − b_i‖²) / num / 2."""
    return (
        sum(w2[i] * (w1[i] * np.dot(a[i] - b[i], a[i] - b[i])) for i in range(a.shape[0]))
        / a.shape[0]
        / 2
    )


def test_loss_values_match_the_released_layers():
    x = torch.tensor(X)
    assert quantization_loss(x).item() == pytest.approx(_min_quantize(X), abs=1e-12)
    assert balance_loss(x).item() == pytest.approx(_even_dist(X), abs=1e-12)
    rotated = X[::-1].copy() + 0.05
    weights = np.array([math.exp(-2), math.exp(-0.5), 1.0])
    value = rotation_loss(torch.tensor(rotated), x, torch.tensor(weights), torch.ones(3))
    # bottoms: fc8_kevin_p (rotated), fc8_kevin, weight_p, weight (the original's weight 1)
    assert value.item() == pytest.approx(_transform(rotated, X, weights, np.ones(3)), abs=1e-12)
    for gradients in ("objective", "released"):
        assert quantization_loss(x, gradients).item() == pytest.approx(_min_quantize(X), abs=1e-12)


def test_objective_gradients():
    x = torch.tensor(X, requires_grad=True)
    quantization_loss(x).backward()
    binary = (X > 0.5).astype(float)
    np.testing.assert_allclose(x.grad.numpy(), (X - binary) / 3, atol=1e-12)
    x.grad = None
    balance_loss(x).backward()  # straight-through: d/dx_nk of Σ_k (μ_k − ½)² / 2N is (μ_k − ½) / N²
    mu = binary.mean(axis=0)
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to((mu - 0.5) / 9, X.shape), atol=1e-12)


def test_released_gradients_cancel_for_quantisation_and_balance_and_ignore_rotation_weights():
    # Caffe sums the +g / −g its two identical bottoms receive: zero.
    x = torch.tensor(X, requires_grad=True)
    rotated = torch.tensor(X + 0.1, requires_grad=True)
    weights = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    terms = deepbit_terms(x, "released", 1.0, 1.0, rotated, weights, gamma=0.001)
    terms["loss"].backward()
    # TransformLoss Backward_cpu: ± loss_weight · (a − b) / num, unweighted
    np.testing.assert_allclose(rotated.grad.numpy(), 0.001 * 0.1 / 3 * np.ones_like(X), atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), -0.001 * 0.1 / 3 * np.ones_like(X), atol=1e-12)
    stage_one = torch.tensor(X, requires_grad=True)
    deepbit_terms(stage_one, "released", 1.0, 1.0)["loss"].backward()
    assert torch.count_nonzero(stage_one.grad) == 0  # only weight decay moves the weights


def test_rotations_as_released():
    # aug_img_faster.m: rotate_angle = 5*(aug-3), weight = exp(1)^(-(aug-3)*(aug-3)/2), aug = 1..5
    assert rotation_angles(5, 5.0) == [-10.0, -5.0, 0.0, 5.0, 10.0]
    assert [rotation_weight(a, 5.0) for a in (-10, -5, 0, 5, 10)] == pytest.approx(
        [math.exp(-((aug - 3) ** 2) / 2) for aug in range(1, 6)], abs=1e-12
    )
    images = torch.arange(2 * 36, dtype=torch.float32).view(2, 1, 6, 6)
    assert torch.equal(rotate(images, torch.zeros(2)), images)
    turned = rotate(images, torch.full((2,), 90.0))
    assert torch.equal(turned, torch.rot90(images, 1, dims=(2, 3))) or torch.equal(
        turned, torch.rot90(images, -1, dims=(2, 3))
    )


def test_latent_layer_as_released():
    # fc8_kevin: num_output K, weight_filler gaussian std 0.01, bias constant 0; relu8_kevin
    torch.manual_seed(0)
    layer = LatentLayer(4096, 32)
    assert (
        tuple(layer.linear.weight.shape) == (32, 4096)
        and torch.count_nonzero(layer.linear.bias) == 0
    )
    assert float(layer.linear.weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    with torch.no_grad():
        assert float(layer(torch.randn(5, 4096)).min()) >= 0


# solver_stage1: max_iter 50,000, stepsize 25,000; solver_stage2: max_iter 5,000, stepsize 1,000;
# base_lr 1e-3 / 1e-4, gamma 0.1, momentum 0.9, weight_decay 5e-4; batch 32 (stage one), 30 (two).
def _settings(params, count, shape=(32, 32, 3)):
    arrays = DatasetArrays(
        labels=np.ones((count, 1), bool), images=np.zeros((count, *shape), np.uint8)
    )
    return DeepBit(32, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


def test_released_solver_schedule_in_optimiser_steps():
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps) == (55_000, 5_000)
    params = DeepBitParams()
    assert (
        params.momentum,
        params.weight_decay,
        params.lr_gamma,
        params.batch_size,
        params.pair_batch,
    ) == (0.9, 5e-4, 0.1, 32, 30)
    assert (params.alpha, params.beta, params.gamma, params.rotations, params.rotation_step) == (
        1.0,
        1.0,
        0.001,
        5,
        5.0,
    )
    settings = _settings(params, 50_000)
    per_epoch = math.ceil(50_000 / 32)  # 1,563
    assert (settings.profile, settings.backbone, settings.lr, settings.lr_two) == (
        "paper",
        "vgg16",
        1e-3,
        1e-4,
    )
    assert settings.epochs == math.ceil(55_000 / per_epoch) and settings.released_steps == 55_000
    assert (settings.lr_step, settings.stage_two, settings.lr_step_two) == (
        round(25_000 / per_epoch),
        round(50_000 / per_epoch),
        max(1, round(1_000 / per_epoch)),
    )
    small = _settings(params, 5_000)  # 157 steps an epoch
    assert (small.epochs, small.lr_step, small.stage_two, small.lr_step_two) == (351, 159, 318, 6)
    assert lr_factor(0, small, 0.1) == 1.0 and lr_factor(159, small, 0.1) == pytest.approx(0.1)
    assert lr_factor(318, small, 0.1) == pytest.approx(0.1) and lr_factor(
        324, small, 0.1
    ) == pytest.approx(0.01)
    tiny = _settings(params, 500, (8, 8, 1))
    assert (tiny.profile, tiny.epochs, tiny.stage_two, tiny.lr_step) == ("tiny", 60, 45, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"pair_batch": "31"}, "multiple of rotations"),
        ({"momentum": "1"}, "momentum must lie in"),
        ({"gradients": "caffe"}, "is not one of"),
        ({"gamma": "-1"}, "gamma must be >= 0"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(DeepBitParams, overrides, owner="deepbit")


def test_conforms():
    assert_conforms(DeepBit)


def _toy(shape=(16, 16, 3), count=8):
    rng = np.random.default_rng(0)
    arrays = DatasetArrays(
        labels=np.eye(2, dtype=bool)[np.arange(count) % 2],
        images=rng.integers(0, 255, (count, *shape), dtype=np.uint8),
    )
    return DataSplit("train", np.arange(count), arrays)


@pytest.mark.slow  # a random VGG-16 at 224 px on the CPU: about a minute
def test_paper_profile_trains_fc8_only_in_both_stages_and_codes_at_the_training_mean():
    train = _toy()
    context = RunContext(seed=0)
    params = DeepBitParams(
        profile="paper",
        pretrained=False,
        epochs=2,
        stage_two=1,
        batch_size=4,
        pair_batch=10,
        eval_every=0,
    )
    method = DeepBit(8, params, context)
    method.fit(train, None)
    assert set(context.record["curve"][1]) >= {"quantization", "balance", "rotation"}
    assert (
        context.record["curve"][0]["rotation"] == 0 and context.record["curve"][1]["rotation"] > 0
    )
    trainable = {name for name, p in method.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc8.linear.weight", "fc8.linear.bias"}
    # fc8_kevin's param blocks: lr_mult 1 / 2 and decay_mult 1 / 0 (weight / bias)
    assert context.record["solver"]["groups"] == [
        {"params": 1, "lr": 1e-3, "weight_decay": 5e-4},
        {"params": 1, "lr": 2e-3, "weight_decay": 0.0},
    ]
    activations = method.activations(train)
    assert context.record["threshold"] == pytest.approx(float(activations.mean()), rel=1e-5)
    assert np.array_equal(method.encode(train), (activations > method.threshold).cpu().numpy())


def _digits():
    dataset = registry.get_dataset("digits")()
    arrays = dataset.load(None)
    manifest = draw_split("digits", dataset.protocol(None), arrays, 0)
    return {
        name: DataSplit(name, indices, arrays) for name, indices in manifest.splits.items()
    }, manifest.topk


def _map(method, splits, topk):
    method.fit(splits["train"], splits["val"])
    query, database = method.encode(splits["query"]), method.encode(splits["database"])
    return mean_average_precision(
        query, database, splits["query"].labels, splits["database"].labels, bits=16, topk=topk
    )


def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh():
    # The paper's sigmoid and a balance weight of the batch size (the released normalisation
    # makes each unit's balance gradient N times weaker than its quantisation gradient).
    splits, topk = _digits()
    common = {"activation": "sigmoid", "beta": 32.0, "eval_every": 0, "cpu_threads": 1}
    lsh = _map(LSH(16, context=RunContext(seed=0)), splits, topk)
    untrained = _map(
        DeepBit(16, DeepBitParams(**common, epochs=1, lr=1e-12, lr_two=1e-12), RunContext(seed=0)),
        splits,
        topk,
    )
    context = RunContext(seed=0)
    trained = _map(DeepBit(16, DeepBitParams(**common), context), splits, topk)
    assert (
        context.record["settings"]["stage_two"] == 45
        and context.record["curve"][-1]["rotation"] > 0
    )
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
