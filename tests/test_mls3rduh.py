"""MLS3RDUH: the reconstructed similarity S against a transcription of the released
construction, the loss against its formula, the released budget in optimiser steps, the
parameters, and learning on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._mls3rduh_structure import (
    neighbour_counts,
    reconstruct_similarity,
    similarity_block,
    top_mask,
)
from hashbench.methods.mls3rduh import (
    MLS3RDUH,
    RELEASED_BUDGET,
    RELEASED_LR_STEPS,
    MLS3RDUHParams,
    mls3rduh_loss,
)
from hashbench.params import resolve_params

# --------------------------------------------------------------------------------------------
# the similarity structure


def _released_s(features: np.ndarray, rng: np.random.Generator, ratio: float = 0.06) -> np.ndarray:
    """MLS3RDUH.py lines 121-122 and 146-230, step by step with Python lists as released.

    Its torch.sort(...)[1][-k:] becomes the last k of a stable ascending sort (ties to the
    higher index), random.sample(res_ind, dim - aa) the permutation ``rng`` draws.
    """
    n = len(features)
    nnk, nno = int(n * ratio), int(n * ratio * 1.5)

    def top(row, k):
        return sorted(range(len(row)), key=lambda j: (row[j], j))[-k:]

    x = np.asarray(features, dtype=np.float64)
    x = x / np.sqrt((x**2).sum(1))[:, None]
    sim1 = x @ x.T
    final_sim = sim1 * 1.0
    sim = sim1 - np.eye(n)
    for i in range(n):
        row = sim[i].copy()
        zero = np.zeros(n)
        zero[top(row, nnk)] = 1.0
        sim[i] = row * zero
    a = (sim > 0.0001).astype(float)
    a = a * a.T * sim
    sum_row = a.sum(1)
    aa = n - int((sum_row > 0).sum())
    kk = sorted(range(n), key=lambda j: (sum_row[j], j))
    res_ind = list(range(n))
    for ind in range(aa):
        res_ind.remove(kk[ind])
    res_ind = [int(v) for v in rng.permutation(np.array(res_ind))]
    ind_to_new_id = {i: res_ind[i] for i in range(n - aa)}
    sim = sim[res_ind][:, res_ind]
    dim = n - aa
    sim20 = {}
    for i in range(dim):
        row = sim[i].copy()
        zero = np.zeros(dim)
        chosen = top(row, nnk)
        zero[chosen] = 1.0
        sim20[i] = list(chosen)
        sim[i] = row * zero
    a = (sim > 0.0001).astype(float)
    a = a * a.T * sim
    d = np.diag(a.sum(1) ** -0.5)
    a = d @ a @ d
    alpha = 0.99
    manifold_sim = (1 - alpha) * np.linalg.inv(np.eye(dim) - alpha * a)
    manifold20 = {i: list(top(manifold_sim[i], nno)) for i in range(dim)}
    for i in range(len(sim20)):
        zz = list(manifold20[i])
        ddd = []
        for k in range(len(zz)):
            if zz[k] in sim20[i]:
                sim20[i].remove(zz[k])
                manifold20[i].remove(zz[k])
                ddd.append(ind_to_new_id[zz[k]])
        j = ind_to_new_id[i]
        for col in ddd:
            final_sim[j, col] = 1.0
        for col in sim20[i]:
            final_sim[j, ind_to_new_id[col]] = 0.0
    f1 = (final_sim > 0.999).astype(float)
    f1 = ((f1 + f1.T) > 0.999).astype(float)
    f2 = (final_sim < 0.0001).astype(float)
    f2 = ((f2 + f2.T) > 0.999).astype(float)
    final_sim = final_sim * (1.0 - f2)
    final_sim = final_sim * (1.0 - f1) + f1
    return 2 * final_sim - 1.0


def _hand_made_features(seed: int = 5) -> np.ndarray:
    """Three non-negative clusters in 6-d (like ReLU features), two far outliers, and one
    item orthogonal to one cluster (cosine exactly 0 to it)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[3, 1, 0, 0, 0, 1], [0, 1, 3, 1, 0, 0], [0, 0, 0, 1, 3, 1]], dtype=float)
    clusters = [np.abs(centre + rng.normal(0, 0.8, size=(32, 6))) for centre in centres]
    outliers = np.array([[0.0, 5.0, 0.0, 0.0, 0.1, 0.0], [0.1, 0.0, 0.0, 5.0, 0.0, 0.2]])
    orthogonal = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    orthogonal[0, 3] = 4.0
    return np.concatenate([*clusters, outliers, orthogonal])


@pytest.mark.parametrize("seed", [5, 6])
def test_structure_matches_the_released_construction(seed):
    features = _hand_made_features(seed)
    structure = reconstruct_similarity(features, np.random.default_rng(3))
    expected = _released_s(features, np.random.default_rng(3))
    s = structure.similarity
    assert (structure.nnk, structure.nno) == (5, 8)  # int(99 · 0.06), int(99 · 0.09)
    exact = np.isin(expected, (-1.0, 1.0))
    assert np.array_equal(np.isin(s, (-1.0, 1.0)), exact)
    assert np.array_equal(s[exact], expected[exact])  # the ±1 entries exactly
    assert np.allclose(s[~exact], expected[~exact], atol=1e-6)  # 2·cos − 1, float32
    assert np.array_equal(s, s.T) and np.all(np.diag(s) == 1)
    # the construction's three kinds of entries are all there
    assert (s == 1).sum() > s.shape[0] and (s == -1).sum() > 0 and (~exact).sum() > 0


def test_structure_on_tiny_graphs_with_isolated_items_matches_too():
    # Few items and a larger ratio: isolated items and kNN lists padded with zero entries.
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(size=(30, 4))) ** 3
    structure = reconstruct_similarity(features, np.random.default_rng(1), knn_ratio=0.1)
    expected = _released_s(features, np.random.default_rng(1), ratio=0.1)
    assert structure.isolated > 0
    exact = np.isin(expected, (-1.0, 1.0))
    assert np.array_equal(structure.similarity[exact], expected[exact])
    assert np.allclose(structure.similarity, expected, atol=1e-6)


def test_neighbour_counts_are_the_released_formulas():
    assert neighbour_counts(5_000) == (300, 450)  # CIFAR-10's 5,000 training images
    assert neighbour_counts(10_000) == (600, 900)
    assert neighbour_counts(500) == (30, 45)  # digits
    assert neighbour_counts(10) == (1, 1)  # the released formula would give 0


def test_top_mask_breaks_ties_towards_the_higher_index():
    mask = top_mask(np.array([[0.5, 0.0, 0.0, 0.0, 0.9]]), 3)
    assert mask.tolist() == [[True, False, False, True, True]]


def test_similarity_block_is_the_batch_submatrix():
    s = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert similarity_block(s, np.array([2, 0])).tolist() == [[10, 8], [2, 0]]


# --------------------------------------------------------------------------------------------
# the loss


def test_loss_matches_the_released_formula():
    hashes = torch.tensor([[0.9, -0.2, 0.4], [-0.7, 0.1, 0.99], [0.3, 0.3, -0.5], [0.0, -1.0, 0.2]])
    s = torch.tensor([[1.0, -1.0, 0.2, 1.0], [-1.0, 1.0, -0.4, -1.0], [0.2, -0.4, 1.0, 0.6], [1.0, -1.0, 0.6, 1.0]])
    terms = mls3rduh_loss(hashes, s, bits=3)
    h, target = hashes.double().numpy(), s.double().numpy()
    # MLS3RDUH.py lines 244-247: log(cosh(HHᵀ/code_length − S)).sum()/B², (sign H − H)².sum()/B²
    pairwise = np.log(np.cosh(h @ h.T / 3 - target)).sum() / 16
    quantization = ((np.sign(h) - h) ** 2).sum() / 16
    assert float(terms["pairwise"]) == pytest.approx(pairwise, rel=1e-5)
    assert float(terms["quantization"]) == pytest.approx(quantization, rel=1e-5)


def test_loss_is_stable_for_large_gaps_and_its_gradient_is_tanh():
    hashes = torch.tensor([[30.0], [-30.0]], requires_grad=True)
    terms = mls3rduh_loss(hashes, torch.zeros(2, 2), bits=1)
    assert torch.isfinite(terms["pairwise"])
    terms["pairwise"].backward()
    h = hashes.detach().double()
    gap = (h @ h.T).numpy()
    expected = (2 * np.tanh(gap) @ h.numpy()) / 4  # d/dH Σ log cosh(HHᵀ − S) / B²
    assert np.allclose(hashes.grad.numpy(), expected, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# budget, profiles, parameters


def _natural_split(count: int = 40, side: int = 8) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 2), dtype=bool)
    labels[np.arange(count), np.arange(count) % 2] = True
    images = rng.integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    features = images.reshape(count, -1).astype(np.float32) / 255
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, images=images, features=features))


# MLS3RDUH.py: batch_size = 128 (line 68), epochs = 150 (line 69); the training list is not
# shipped, 10,000 images assumed: ceil(10,000 / 128) = 79 steps per epoch. StepLR(step_size=500,
# gamma=0.5) stepped once per epoch (lines 127, 233): 500 epochs, never reached.
def test_released_budget_in_optimiser_steps():
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps, RELEASED_LR_STEPS) == (11_850, 2_370, 39_500)
    paper = MLS3RDUHParams(profile="paper", backbone="small")
    for count, epochs in ((10_000, 150), (5_000, 297)):
        settings = MLS3RDUH(32, paper).resolve_settings(_natural_split(count))
        assert (settings.epochs, settings.released_steps, settings.batch_size) == (epochs, 11_850, 128)
        assert settings.lr_step > settings.epochs  # the rate never decays, as released
    assert MLS3RDUH(32, paper).resolve_settings(_natural_split(10_000)).eval_every == 30


def test_paper_and_tiny_settings():
    paper = MLS3RDUH(32, MLS3RDUHParams(profile="paper", backbone="small")).resolve_settings(_natural_split())
    assert (paper.lr, paper.momentum, paper.weight_decay, paper.backbone) == (0.04, 0.0, 1e-5, "small")
    default = MLS3RDUH(32, MLS3RDUHParams(profile="paper")).profile_values({"backbone": "vgg16"})
    assert default == {"backbone": "vgg16"}
    tiny = MLS3RDUH(32).resolve_settings(_natural_split())
    assert (tiny.profile, tiny.backbone, tiny.momentum, tiny.batch_size, tiny.epochs, tiny.lr_step) == ("tiny", "small", 0.9, 64, 200, 0)
    assert tiny.max_steps == 2_400 and tiny.released_steps is None
    defaults = MLS3RDUHParams()
    assert (defaults.knn_ratio, defaults.manifold_factor, defaults.alpha, defaults.quantization_weight) == (0.06, 1.5, 0.99, 0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"knn_ratio": "0"}, "knn_ratio must lie in"),
        ({"alpha": "1"}, "alpha must lie in"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"lr": "0"}, "lr must be positive"),
        ({"momentum": "1"}, "momentum must lie in"),
        ({"quantization_weight": "-0.1"}, "quantization_weight must be >= 0"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(MLS3RDUHParams, overrides, owner="mls3rduh")


def test_a_weights_file_for_the_small_backbone_is_refused():
    with pytest.raises(UserError, match="trained from scratch"):
        MLS3RDUH(16, MLS3RDUHParams(backbone_weights="w.pth")).resolve_settings(_natural_split())


def test_conforms():
    assert_conforms(MLS3RDUH)


def test_fit_records_the_structure_and_the_deviations():
    split = _natural_split(48)
    context = RunContext(seed=0)
    method = MLS3RDUH(8, MLS3RDUHParams(epochs=2, eval_every=0, knn_ratio=0.2), context)
    method.fit(split)
    codes = method.encode(split)
    assert codes.shape == (48, 8) and codes.dtype == bool
    record = context.record
    structure = record["similarity_structure"]
    assert (structure["nnk"], structure["nno"]) == (9, 14) and "dataset's own" in structure["features"]["source"]
    curve = record["curve"]
    assert len(curve) == 2 and all(entry["loss"] == pytest.approx(entry["pairwise"]) for entry in curve)
    assert any("own feature vectors" in text for text in record["deviations"])
    assert any("sign 0" in text for text in record["deviations"])


def test_the_quantisation_weight_adds_the_term_to_the_optimised_loss():
    context = RunContext(seed=0)
    MLS3RDUH(8, MLS3RDUHParams(epochs=2, eval_every=0, knn_ratio=0.2, quantization_weight=0.5), context).fit(_natural_split(48))
    for entry in context.record["curve"]:
        assert entry["loss"] == pytest.approx(entry["pairwise"] + 0.5 * entry["quantization"], rel=1e-5)
    assert any("quantisation term optimised" in text for text in context.record["deviations"])


# --------------------------------------------------------------------------------------------
# learning on digits


def _run(params: dict, results: Path, method: str = "mls3rduh") -> float:
    from hashbench.run.runner import GridSpec, run_grid

    (outcome,) = run_grid(
        GridSpec(methods=[method], bits=[16], seeds=[0], params={method: params} if params else {}, results=results, device="cpu")
    )
    assert outcome.status == "ok", outcome.error
    (path,) = results.glob("runs/*/run.json")
    return float(json.loads(path.read_text())["metrics"]["map"])


def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh(tmp_path):
    params = {"epochs": 40, "eval_every": 0, "cpu_threads": 1}
    trained = _run(params, tmp_path / "trained")
    untrained = _run({**params, "epochs": 1, "lr": 1e-12}, tmp_path / "untrained")
    lsh = _run({}, tmp_path / "lsh", "lsh")
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
