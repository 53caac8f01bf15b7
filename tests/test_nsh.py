"""NSH: the released soft sort and SortedNCE against transcriptions, budget, parameters, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from digits_runs import run_map

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.methods._sdc_common import nsh_heads, soft_sort, sorted_nce
from hashbench.methods.nsh import NSH, RELEASED_BUDGET, RELEASED_LR_STEP, NSHParams
from hashbench.params import resolve_params


def test_conforms():
    assert_conforms(NSH)


# --------------------------------------------------------------------------------------------
# released pieces (github.com/kamwoh/sdc at 9981beb)


def released_soft_sort(scores: np.ndarray, tau: float) -> np.ndarray:
    """models/layers/softsort.py, one row and one rank at a time."""
    n, k = scores.shape
    out = np.zeros((n, k, k))
    for i in range(n):
        ordered = np.sort(scores[i])[::-1]
        for r in range(k):
            logits = -np.abs(scores[i] - ordered[r]) / tau
            out[i, r] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return out


def test_soft_sort_matches_the_released_formula_and_sorts_when_cold():
    scores = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.3]])
    ours = soft_sort(torch.tensor(scores), tau=0.25).numpy()
    np.testing.assert_allclose(ours, released_soft_sort(scores, 0.25), rtol=1e-6)
    cold = soft_sort(torch.tensor(scores), tau=1e-4).numpy()
    # Row r picks the r-th largest entry: the permutation matrix of a descending sort.
    assert (cold.argmax(-1) == np.array([[1, 2, 0], [0, 2, 1]])).all()


def released_sorted_nce(b: np.ndarray, z: np.ndarray, m: int, tau: float, softsort_tau: float, quan: float) -> float:
    """models/loss/nsh.py NSHLoss.forward, transcribed with explicit loops."""
    half, bits = b.shape[0] // 2, b.shape[1]
    b1, b2, z1, z2 = b[:half], b[half:], z[:half], z[half:]
    s = b1 @ b2.T / (2 * bits) + 0.5
    p = released_soft_sort(s, softsort_tau)
    cossim = np.array([[p[i, r] @ z1 @ z2[i] for r in range(half)] for i in range(half)])
    ce = 0.0
    for rank in range(m):
        logits = np.concatenate([cossim[:, rank : rank + 1], cossim[:, m:]], axis=1) / tau
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # torch.softmax
        ce += np.mean(-probs[:, 0] + np.log(np.exp(probs).sum(1))) / m  # F.cross_entropy(probs, 0)
    return ce + quan * np.mean((b - np.sign(b)) ** 2)


def test_sorted_nce_matches_the_released_loss_on_a_hand_made_batch():
    rng = np.random.default_rng(0)
    b = np.tanh(rng.standard_normal((8, 6)))  # 4 images × 2 views, 6 bits
    z = rng.standard_normal((8, 5))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    terms = sorted_nce(torch.tensor(b), torch.tensor(z), m=2, tau=0.3, softsort_tau=1 / 6, quan=1.0)
    assert terms["loss"].item() == pytest.approx(released_sorted_nce(b, z, 2, 0.3, 1 / 6, 1.0), rel=1e-6)
    assert terms["quantization"].item() == pytest.approx(np.mean((b - np.sign(b)) ** 2), rel=1e-9)
    paper = sorted_nce(torch.tensor(b), torch.tensor(z), 2, 0.3, 1 / 6, 0.0, variant="paper")["nce"].item()
    assert paper != pytest.approx(terms["nce"].item())
    # The released double softmax bounds the cross-entropy between log(k − 1 + e) − 1 and log(k − 1 + e).
    k = 1 + (4 - 2)
    assert math.log(k - 1 + math.e) - 1 <= terms["nce"].item() <= math.log(k - 1 + math.e)


def test_heads_as_released():
    heads = nsh_heads(4096, 64, 1024)
    assert [type(layer).__name__ for layer in heads["hash"]] == ["Linear", "Tanh"]
    assert heads["hash"][0].in_features == 4096 and heads["hash"][0].out_features == 64
    latent = heads["latent"](torch.randn(3, 4096))
    assert latent.shape == (3, 1024) and torch.allclose(latent.norm(dim=1), torch.ones(3))
    assert [type(layer).__name__ for layer in nsh_heads(8, 4, 2, batch_norm=True)["hash"]] == ["Linear", "BatchNorm1d", "Tanh"]


def test_released_budget_in_optimiser_steps():
    # configs/model/nsh.yaml: batch 50, 200 epochs, dataset.ep 5 (train = the 50,000 CIFAR-10
    # training images), scheduler.step_size = epochs; train.yaml: eval_interval 10;
    # trainers/base.py: the training loader drops the last batch (50,000 / 50 = 1,000 steps).
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps, RELEASED_LR_STEP) == (200_000, 10_000, 200_000)


def settings_for(params: NSHParams, count: int, shape=(32, 32, 3), bits: int = 64):
    arrays = DatasetArrays(labels=np.ones((count, 1), dtype=bool), images=np.zeros((count, *shape), np.uint8))
    return NSH(bits, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


def test_paper_defaults_and_profiles():
    params = NSHParams()
    assert (params.m, params.tau, params.quan, params.latent_dim, params.batch_size, params.weight_decay) == (2, 0.3, 1.0, 1024, 50, 1e-5)
    paper = settings_for(params, 50_000)
    assert (paper.profile, paper.backbone, paper.lr, paper.epochs, paper.eval_every, paper.lr_step) == ("paper", "vgg16", 1e-5, 200, 10, 200)
    assert paper.released_steps == 200_000 and not paper.hash_batch_norm
    first, second = paper.views
    assert (first.size, first.crop_scale, first.jitter_p, first.hue, first.blur_p) == (224, (0.2, 1.0), 0.8, 0.1, 1.0)
    assert (second.jitter_p, second.hue, second.blur_p, second.grayscale_p) == (1.0, 0.4, 0.0, 0.2)
    assert settings_for(params, 5_000).epochs == 2_000  # the released steps on a tenth of the images
    tiny = settings_for(params, 500, (8, 8, 1), bits=16)
    assert (tiny.profile, tiny.backbone, tiny.lr, tiny.epochs, tiny.hash_batch_norm) == ("tiny", "small", 1e-3, 100, True)
    assert tiny.views[0].flip_p == 0.0 and tiny.views[0].crop_scale == (0.5, 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tau": "0"}, "tau must be positive"),
        ({"m": "0"}, "m must be at least 1"),
        ({"m": "50"}, "leaves no negatives"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"nce": "double"}, "is not one of"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(NSHParams, overrides, owner="nsh")


# --------------------------------------------------------------------------------------------
# learning on digits (as tests/test_learning.py)




@pytest.mark.slow
def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh(tmp_path):
    params = {"epochs": 30, "eval_every": 0, "cpu_threads": 1}
    trained = run_map("nsh", params, tmp_path / "trained")
    untrained = run_map("nsh", {**params, "epochs": 1, "lr": 1e-12}, tmp_path / "untrained")
    lsh = run_map("lsh", {}, tmp_path / "lsh")
    # Measured: trained 0.599, untrained 0.446, LSH about 0.51 (mAP@100, 16 bits).
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
