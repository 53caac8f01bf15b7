"""DSCH: the component step and the loss terms against transcriptions of the released
computation and the paper's formulas, the released budget, and real training on digits.

The released code is github.com/Bruce-XJChen/DSCH; ``run_dsch_cifar.py`` is cited by line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._dsch_components import (
    ComponentState,
    component_loss,
    dsch_loss,
    estimate_components,
    instance_loss,
)
from hashbench.methods.dsch import (
    DSCH,
    RELEASED_BUDGET,
    RELEASED_ESTIMATE_STEPS,
    DSCHParams,
)
from hashbench.params import resolve_params
from hashbench.toolkit.layers import nt_xent

# --------------------------------------------------------------------------------------------
# the component step


def released_component_step(codes: np.ndarray, m1: int, m2: int, seed: int) -> dict[str, np.ndarray]:
    """run_dsch_cifar.py lines 215-239, transcribed (seeded here so that it can be compared)."""
    from sklearn import preprocessing
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=m1, random_state=seed)
    gmm.fit(codes)
    p1 = preprocessing.normalize(gmm.predict_proba(codes), norm="l2")
    s = np.matmul(p1, p1.T)
    kmean = KMeans(n_clusters=m2, n_init=10, random_state=seed)
    kmean.fit(gmm.means_)
    p21 = np.eye(m2)[kmean.labels_]  # one_hot_label_db
    return {
        "p1": p1, "mu1": np.sign(gmm.means_), "pi1": gmm.weights_, "s": s,
        "mu2": np.sign(kmean.cluster_centers_), "pi2": np.ones((m2,)) / m2, "p2": np.matmul(p1, p21),
    }  # fmt: skip


def clustered_codes() -> np.ndarray:
    """Three tight groups of 4-d codes: A and B near each other, C far from both."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.7, 0.9], [-0.9, -0.9, -0.9, -0.9]])
    return np.concatenate([centre + 0.01 * rng.standard_normal((6, 4)) for centre in centres])


def test_component_step_is_the_released_one():
    codes = clustered_codes()
    ours = estimate_components(codes, 3, 2, seed=5)
    released = released_component_step(codes, 3, 2, seed=5)
    for name in ("p1", "mu1", "pi1", "p2", "mu2", "pi2"):
        np.testing.assert_allclose(getattr(ours, name), released[name], rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(ours.p1 @ ours.p1.T, released["s"], atol=1e-12)


def test_component_step_on_a_hand_made_set():
    codes = clustered_codes()
    found = estimate_components(codes, 3, 2, seed=0)
    # One fine component per group: one-hot (l2-normalised) assignments, s = same group.
    fine = found.p1.argmax(axis=1)
    assert np.array_equal(np.round(found.p1).sum(axis=1), np.ones(18))
    assert len(set(fine[:6])) == len(set(fine[6:12])) == len(set(fine[12:])) == 1 and len(set(fine)) == 3
    same_group = (np.arange(18)[:, None] // 6) == (np.arange(18)[None, :] // 6)
    assert np.array_equal(np.round(found.p1 @ found.p1.T).astype(int), same_group.astype(int))
    np.testing.assert_allclose(found.pi1, 1 / 3, atol=1e-6)
    # Centres: the sign of the means; A and B share a coarse component, C has its own.
    assert {tuple(row) for row in found.mu1.astype(int)} == {(1, 1, 1, 1), (-1, -1, -1, -1)}
    coarse = found.coarse_of_fine[fine]
    assert coarse[0] == coarse[6] != coarse[12]
    assert np.array_equal(np.round(found.p2).astype(int), np.eye(2, dtype=int)[coarse])
    np.testing.assert_allclose(found.pi2, [0.5, 0.5])
    # Without the CIFAR-10 script's sign and normalisation (the FLICKR25K / NUS-WIDE scripts):
    raw = estimate_components(codes, 3, 2, seed=0, binary_centres=False, l2_assignments=False)
    np.testing.assert_allclose(raw.p1.sum(axis=1), 1.0, atol=1e-9)
    assert not np.all(np.abs(raw.mu1) == 1)


def test_batch_targets_index_the_doubled_released_matrices():
    codes = clustered_codes()
    found = estimate_components(codes, 3, 2, seed=0)
    n = len(codes)
    state = ComponentState(n, 3, 2, 4)
    state.assign(found)
    positions = np.array([4, 13, 0, 7])
    similarity, (mu1, p1, log_pi1), (mu2, p2, log_pi2) = state.batch_targets(positions)
    # Lines 236-239 double S and P for the two views; rows i and i + n are one image's views.
    s2 = np.tile(found.p1 @ found.p1.T, (2, 2))
    rows = np.concatenate([positions, positions + n])
    np.testing.assert_allclose(similarity.numpy(), s2[rows][:, rows], atol=1e-6)
    np.testing.assert_allclose(p1.numpy(), np.tile(found.p1, (2, 1))[rows], atol=1e-6)
    np.testing.assert_allclose(p2.numpy(), np.tile(found.p2, (2, 1))[rows], atol=1e-6)
    np.testing.assert_allclose(log_pi1.exp().numpy(), found.pi1, rtol=1e-5)
    np.testing.assert_allclose(log_pi2.exp().numpy(), 0.5, rtol=1e-6)
    assert torch.equal(mu1, torch.as_tensor(found.mu1, dtype=torch.float32)) and mu2.shape == (2, 4)


def test_too_many_components_are_refused():
    with pytest.raises(UserError, match="m2 <= m1 <= training items"):
        estimate_components(clustered_codes(), 30, 2, seed=0)


# --------------------------------------------------------------------------------------------
# the loss terms


def cos(a: np.ndarray, b: np.ndarray) -> float:
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else 0.0  # a zero vector: cosine 0


def direct_instance_loss(h: np.ndarray, s: np.ndarray, tau: float) -> float:
    """L_ic one anchor at a time: Σ_{b≠a} s_ab/Σ_{c≠a} s_ac · −log softmax_{b≠a} cos(h_a, h_b)/τ."""
    total = 0.0
    for a in range(len(h)):
        others = [b for b in range(len(h)) if b != a]
        denominator = sum(math.exp(cos(h[a], h[b]) / tau) for b in others)
        weight = sum(s[a, b] for b in others)
        total += sum(s[a, b] / weight * -math.log(math.exp(cos(h[a], h[b]) / tau) / denominator) for b in others)
    return total / len(h)


def direct_component_loss(h: np.ndarray, mu: np.ndarray, p: np.ndarray, pi: np.ndarray, tau: float) -> float:
    """−Σ_j p_ja log [π_j exp(cos(h_a, μ_j)/τ) / Σ_k π_k exp(cos(h_a, μ_k)/τ)], averaged over a."""
    total = 0.0
    for a in range(len(h)):
        scores = [pi[j] * math.exp(cos(h[a], mu[j]) / tau) for j in range(len(mu))]
        total += -sum(p[a, j] * math.log(scores[j] / sum(scores)) for j in range(len(mu)))
    return total / len(h)


def test_instance_loss_on_a_hand_computable_batch():
    # Two images, identical views: cos(view, other view) = 1, cos(a, b) = 0, s = same image.
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
    s = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    tau = 0.5
    assert instance_loss(h, s, tau).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)


def test_instance_loss_with_identity_similarity_is_nt_xent():
    # run_baseline_cifar.py sets S = identity, doubled: the baseline's term is plain NT-Xent.
    rng = np.random.default_rng(1)
    h = torch.tensor(np.tanh(rng.standard_normal((10, 8))))
    s = torch.eye(5, dtype=h.dtype).repeat(2, 2)
    assert instance_loss(h, s, 0.3).item() == pytest.approx(nt_xent(h[:5], h[5:], 0.3).item(), rel=1e-6)


def test_instance_loss_equals_the_direct_formula():
    rng = np.random.default_rng(2)
    h = np.tanh(rng.standard_normal((6, 5)))
    p = rng.dirichlet(np.ones(4), size=3)
    s = np.tile(p @ p.T, (2, 2))
    ours = instance_loss(torch.tensor(h), torch.tensor(s), 0.7).item()
    assert ours == pytest.approx(direct_instance_loss(h, s, 0.7), rel=1e-6)


def test_component_loss_equals_the_direct_formula():
    rng = np.random.default_rng(3)
    h = np.tanh(rng.standard_normal((6, 5)))
    mu = np.sign(rng.standard_normal((4, 5)))
    p = rng.dirichlet(np.ones(4), size=6)
    pi = rng.dirichlet(np.ones(4))
    ours = component_loss(torch.tensor(h), torch.tensor(mu), torch.tensor(p), torch.tensor(np.log(pi)), 1.0).item()
    assert ours == pytest.approx(direct_component_loss(h, mu, p, pi, 1.0), rel=1e-6)
    # A centre of exactly 0 (the sign of a zero mean) has cosine 0, not NaN.
    mu[1] = 0.0
    ours = component_loss(torch.tensor(h), torch.tensor(mu), torch.tensor(p), torch.tensor(np.log(pi)), 1.0).item()
    direct = direct_component_loss(h, mu, p, pi, 1.0)
    assert math.isfinite(ours) and ours == pytest.approx(direct, rel=1e-6)


def test_loss_composes_as_released():
    # run_dsch_cifar.py line 122: loss = loss_ic + lambd * loss_cc_f + lambd * loss_cc_c.
    rng = np.random.default_rng(4)
    h = torch.tensor(np.tanh(rng.standard_normal((6, 5))))
    p1, p2 = torch.tensor(rng.dirichlet(np.ones(4), size=6)), torch.tensor(rng.dirichlet(np.ones(2), size=6))
    fine = (torch.tensor(np.sign(rng.standard_normal((4, 5)))), p1, torch.log(torch.full((4,), 0.25, dtype=h.dtype)))
    coarse = (torch.tensor(np.sign(rng.standard_normal((2, 5)))), p2, torch.log(torch.full((2,), 0.5, dtype=h.dtype)))
    s = p1 @ p1.T
    terms = dsch_loss(h, s, fine, coarse, tau=1.0, lambd=0.1)
    assert terms["instance"].item() == pytest.approx(instance_loss(h, s, 1.0).item())
    assert terms["fine"].item() == pytest.approx(component_loss(h, *fine, 1.0).item())
    assert terms["loss"].item() == pytest.approx(
        terms["instance"].item() + 0.1 * terms["fine"].item() + 0.1 * terms["coarse"].item(), rel=1e-12
    )


# --------------------------------------------------------------------------------------------
# the released settings and budget


def resolve(params: DSCHParams, image_shape, count: int):
    arrays = DatasetArrays(labels=np.ones((count, 1), dtype=bool), images=np.zeros((count, *image_shape), np.uint8))
    return DSCH(32, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


def test_released_budget_in_optimiser_steps():
    # Lines 73, 192-241: 10 rounds × 1 epoch × floor(5,000 / 15) = 333 steps; one component
    # step and one evaluation per round.
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps, RELEASED_ESTIMATE_STEPS) == (3_330, 333, 333)
    paper = resolve(DSCHParams(), (32, 32, 3), 5_000)
    assert (paper.profile, paper.backbone, paper.augment.size) == ("paper", "vgg16", 224)
    assert (paper.epochs, paper.eval_every, paper.estimate_every, paper.released_steps) == (10, 1, 1, 3_330)
    assert paper.steps == 10 * 334  # the trainer keeps the last partial batch
    assert (paper.m1, paper.m2) == (1000, 100)
    # A training set three times larger: a third of the epochs, the released steps kept.
    larger = resolve(DSCHParams(), (32, 32, 3), 15_000)
    assert (larger.epochs, larger.estimate_every, larger.released_steps) == (4, 1, 3_330)
    tiny = resolve(DSCHParams(), (8, 8, 1), 500)
    assert (tiny.profile, tiny.backbone, tiny.epochs, tiny.steps, tiny.estimate_every) == ("tiny", "small", 30, 1_020, 1)
    assert (tiny.m1, tiny.m2, tiny.max_steps) == (50, 10, 2_400)
    asked = resolve(DSCHParams(epochs=3, estimate_every=2, m1=20, m2=4), (8, 8, 1), 500)
    assert (asked.epochs, asked.estimate_every, asked.m1, asked.m2) == (3, 2, 20, 4)


def test_released_defaults():
    params = DSCHParams()
    # argparser lines 22-31 and the optimiser of lines 110-111.
    assert (params.batch_size, params.lr, params.lambd) == (15, 5e-4, 0.1)
    assert (params.adam_eps, params.lr_decay, params.lr_decay_steps) == (1.0, 0.99, 200)
    assert params.binary_centres and params.l2_assignments and params.covariance_type == "full"
    assert (params.gmm_max_iter, params.tau) == (100, 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tau": "0"}, "tau must be positive"),
        ({"lambd": "-1"}, "lambd must be >= 0"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"lr_decay": "0"}, "lr_decay must lie in"),
        ({"m1": "0"}, "m1 must be at least 1"),
        ({"m1": "5", "m2": "10"}, "exceed m1"),
        ({"covariance_type": "round"}, "is not one of"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(DSCHParams, overrides, owner="dsch")


def test_more_components_than_training_images_are_refused():
    with pytest.raises(UserError, match="m2 <= m1 <= training items"):
        resolve(DSCHParams(m1=600), (8, 8, 1), 500)


# --------------------------------------------------------------------------------------------
# training for real


def digits_splits() -> tuple[DataSplit, DataSplit]:
    from hashbench import registry

    arrays = registry.get_dataset("digits")().load(None)
    return DataSplit("train", np.arange(0, 200), arrays), DataSplit("val", np.arange(200, 260), arrays)


def test_fit_re_estimates_the_components_every_epoch_and_records_them():
    train, val = digits_splits()
    context = RunContext(seed=0)
    params = DSCHParams(epochs=3, eval_every=3, m1=20, m2=5, lr_decay=0.5, lr_decay_steps=10, cpu_threads=1)
    method = DSCH(16, params, context)
    method.fit(train, val)
    steps = 14  # ceil(200 / 15)
    # tf exponential_decay(staircase=True): the last step (41 done before it) ran at lr · 0.5⁴.
    assert method.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.5**4)
    assert [entry["step"] for entry in context.record["components"]] == [0, steps, 2 * steps]
    assert int(method.model["components"].step) == 3 * steps
    assert {"loss", "instance", "fine", "coarse"} <= set(context.record["curve"][0])
    assert context.record["settings"]["estimate_every"] == 1
    assert any("utils/Update.py" in text for text in context.record["deviations"])
    codes = method.encode(val)
    assert codes.shape == (60, 16) and codes.dtype == bool
    assert np.array_equal(codes, method.encode(val))


@pytest.mark.slow
def test_conforms():
    assert_conforms(DSCH)


@pytest.mark.slow
def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh(tmp_path):
    from hashbench.run.runner import GridSpec, run_grid

    def run(method: str, params: dict, folder: Path) -> dict:
        (outcome,) = run_grid(GridSpec(methods=[method], bits=[16], seeds=[0], params={method: params} if params else {},
                                       results=folder, device="cpu"))  # fmt: skip
        assert outcome.status == "ok", outcome.error
        (path,) = folder.glob("runs/*/run.json")
        return json.loads(path.read_text())

    short = {"epochs": 10, "eval_every": 0, "cpu_threads": 1}
    lsh = run("lsh", {}, tmp_path / "lsh")["metrics"]["map"]
    untrained = run("dsch", {**short, "epochs": 1, "lr": 1e-12}, tmp_path / "untrained")["metrics"]["map"]
    record = run("dsch", short, tmp_path / "trained")
    trained = record["metrics"]["map"]
    losses = [entry["loss"] for entry in record["training"]["curve"]]
    assert losses[-1] < 0.95 * losses[0]
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)


@pytest.mark.slow
def test_paper_profile_trains_only_the_hash_layer_and_caches_the_frozen_features():
    rng = np.random.default_rng(0)
    arrays = DatasetArrays(labels=np.eye(2, dtype=bool)[np.arange(8) % 2], images=rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8))
    train, val = DataSplit("train", np.arange(6), arrays), DataSplit("val", np.arange(6, 8), arrays)
    context = RunContext(seed=0)
    params = DSCHParams(profile="paper", pretrained=False, epochs=1, eval_every=0, batch_size=3, m1=2, m2=1, cpu_threads=2)
    method = DSCH(8, params, context)
    method.fit(train, None)
    trained = {name for name, parameter in method.model.named_parameters() if parameter.requires_grad}
    assert trained == {"head.0.weight", "head.0.bias"}
    assert context.record["backbone"]["name"] == "vgg16" and not context.record["backbone"]["trained"]
    assert [entry["step"] for entry in context.record["components"]] == [0]
    # The component step's codes from the cached trunk features are the codes of a forward pass.
    cached = method.continuous_codes(train)
    bits = method.encode(train)
    assert method.features.shape == (6, 4096) and method.encode(val).shape == (2, 8)
    assert np.array_equal(cached >= 0, bits) or np.abs(cached[(cached >= 0) != bits]).max() < 1e-3
