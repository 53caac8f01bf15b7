"""CIBHash: its loss pieces against direct formulas, its profiles, and real training end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from hashbench import registry
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods import _cibhash_model as cibhash_model
from hashbench.methods._cibhash_model import bernoulli_kl, binary_layer, cibhash_loss, nt_xent
from hashbench.methods.cibhash import (
    RELEASED_BUDGET,
    RELEASED_BUDGET_16,
    CIBHash,
    CIBHashParams,
    CLHash,
    ContrastiveHashParams,
    released_topk,
)
from hashbench.params import resolve_params
from hashbench.toolkit.backbones import VGG16_FILE
from hashbench.toolkit.layers import straight_through_sign
from hashbench.toolkit.training import CHECKPOINT_NAME, KILL_AFTER_EPOCH_ENV

# --------------------------------------------------------------------------------------------
# the loss


def test_nt_xent_on_a_hand_computable_batch():
    # Codes a = (1, 1), b = (1, −1), each view identical: cos(a, a') = 1, cos(a, b) = 0.
    # Every anchor sees logits {positive 1/τ, two negatives 0}: loss = log(1 + 2 e^{−1/τ}).
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    tau = 0.5
    assert nt_xent(codes, codes.clone(), tau).item() == pytest.approx(
        math.log(1 + 2 * math.exp(-2)), rel=1e-6
    )
    # Swapping the second view's codes makes the positive orthogonal and a negative identical.
    swapped = nt_xent(codes, codes.flip(0), tau).item()
    assert swapped == pytest.approx(-math.log(1 / (1 + math.exp(2) + 1)), rel=1e-6)


def direct_nt_xent(z_i: np.ndarray, z_j: np.ndarray, tau: float) -> float:
    """The definition, one anchor at a time."""
    codes = np.concatenate([z_i, z_j]).astype(np.float64)
    batch = len(z_i)
    total = 0.0
    for anchor in range(2 * batch):
        positive = (anchor + batch) % (2 * batch)

        def sim(a, b):
            return codes[a] @ codes[b] / (np.linalg.norm(codes[a]) * np.linalg.norm(codes[b])) / tau

        denominator = sum(
            math.exp(sim(anchor, other)) for other in range(2 * batch) if other != anchor
        )
        total += -math.log(math.exp(sim(anchor, positive)) / denominator)
    return total / (2 * batch)


@pytest.mark.parametrize("binary", [True, False])
def test_nt_xent_equals_the_direct_formula(binary):
    rng = np.random.default_rng(0)
    z_i, z_j = rng.standard_normal((2, 5, 8))
    if binary:
        z_i, z_j = np.where(z_i >= 0, 1.0, -1.0), np.where(z_j >= 0, 1.0, -1.0)
    ours = nt_xent(torch.tensor(z_i), torch.tensor(z_j), 0.3).item()
    assert ours == pytest.approx(direct_nt_xent(z_i, z_j, 0.3), rel=1e-5)


def test_straight_through_gradient_is_the_identity():
    values = torch.tensor([[-0.7, 0.0, 0.2], [1e-9, -1e-9, 3.0]], requires_grad=True)
    codes = straight_through_sign(values)
    assert codes.tolist() == [[-1.0, 1.0, 1.0], [1.0, -1.0, 1.0]]  # a zero maps to +1
    upstream = torch.randn(2, 3)
    codes.backward(upstream)
    assert torch.equal(values.grad, upstream)
    probabilities = torch.rand(4, 6, requires_grad=True)
    binary_layer(probabilities).backward(upstream.new_ones(4, 6) * 2)
    assert torch.equal(probabilities.grad, torch.full((4, 6), 2.0))


def test_stochastic_layer_samples_bernoulli_codes_with_identity_gradient():
    torch.manual_seed(0)
    probabilities = torch.tensor([[0.1, 0.5, 0.9]]).repeat(20000, 1).requires_grad_(True)
    codes = binary_layer(probabilities, "stochastic")
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    # P(code = +1) = P(u ≤ p) = p, so E[code] = 2p − 1.
    torch.testing.assert_close(codes.mean(dim=0), torch.tensor([-0.8, 0.0, 0.8]), atol=0.02, rtol=0)
    codes.sum().backward()
    assert torch.equal(probabilities.grad, torch.ones_like(probabilities))


def test_bernoulli_kl_value_is_the_kl_divergence():
    rng = np.random.default_rng(1)
    p, q = (torch.tensor(rng.uniform(0.05, 0.95, (4, 6))) for _ in range(2))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Bernoulli(p), torch.distributions.Bernoulli(q)
    )
    assert bernoulli_kl(p, q).item() == pytest.approx(expected.sum(dim=1).mean().item(), rel=1e-6)
    assert bernoulli_kl(p, p).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_gradient_reaches_only_the_non_detached_side():
    rng = np.random.default_rng(2)
    p = torch.tensor(rng.uniform(0.05, 0.95, (3, 5)), requires_grad=True)
    q = torch.tensor(rng.uniform(0.05, 0.95, (3, 5)), requires_grad=True)
    bernoulli_kl(p, q).backward()
    assert q.grad is None  # stop-gradient on the second argument
    eps = 1e-8
    pd, qd = p.detach(), q.detach()
    analytic = (
        torch.log(pd + eps)
        - torch.log(qd + eps)
        + pd / (pd + eps)
        - torch.log(1 - pd + eps)
        + torch.log(1 - qd + eps)
        - (1 - pd) / (1 - pd + eps)
    ) / 3  # averaged over the batch of 3
    torch.testing.assert_close(p.grad, analytic)


def test_symmetric_kl_term_sends_each_view_only_its_own_gradient():
    rng = np.random.default_rng(3)
    p_i = torch.tensor(rng.uniform(0.1, 0.9, (4, 6)), requires_grad=True)
    p_j = torch.tensor(rng.uniform(0.1, 0.9, (4, 6)), requires_grad=True)
    terms = cibhash_loss(p_i, p_j, tau=0.3, beta=1.0)
    terms["kl"].backward()
    reference_i = p_i.detach().clone().requires_grad_(True)
    (0.5 * bernoulli_kl(reference_i, p_j.detach())).backward()
    torch.testing.assert_close(p_i.grad, reference_i.grad)
    reference_j = p_j.detach().clone().requires_grad_(True)
    (0.5 * bernoulli_kl(reference_j, p_i.detach())).backward()
    torch.testing.assert_close(p_j.grad, reference_j.grad)


def test_beta_zero_removes_the_kl_term_exactly():
    rng = np.random.default_rng(4)
    p_i = torch.tensor(rng.uniform(0.1, 0.9, (6, 8)), dtype=torch.float32, requires_grad=True)
    p_j = torch.tensor(rng.uniform(0.1, 0.9, (6, 8)), dtype=torch.float32, requires_grad=True)
    terms = cibhash_loss(p_i, p_j, tau=0.3, beta=0.0)
    assert set(terms) == {"loss", "contrastive"}
    terms["loss"].backward()
    grad_i = p_i.grad.clone()
    a = p_i.detach().clone().requires_grad_(True)
    b = p_j.detach().clone().requires_grad_(True)
    contrastive = nt_xent(binary_layer(a), binary_layer(b), 0.3)
    contrastive.backward()
    assert torch.equal(terms["loss"].detach(), contrastive.detach())
    assert torch.equal(grad_i, a.grad)
    with_kl = cibhash_loss(p_i, p_j, tau=0.3, beta=0.001)
    assert with_kl["loss"].item() == pytest.approx(
        with_kl["contrastive"].item() + 0.001 * with_kl["kl"].item()
    )
    assert with_kl["kl"].item() > 0


def test_clhash_is_cibhash_without_beta():
    assert registry.get_method("clhash") is CLHash and registry.get_method("cibhash") is CIBHash
    assert not hasattr(CLHash.Params(), "beta")
    assert CLHash(16).beta == 0.0 and CIBHash(16).beta == 0.001
    with pytest.raises(UserError, match="unknown parameter clhash.beta"):
        resolve_params(CLHash.Params, {"beta": "0.1"}, owner="clhash")


# --------------------------------------------------------------------------------------------
# parameters and profiles


def resolve_profile(params, bits, image_shape, dataset, count=1, image_profile=None):
    """The settings CIBHash resolves for a split of ``count`` ``image_shape`` images from
    ``dataset``, which declares ``image_profile``."""
    arrays = DatasetArrays(
        labels=np.ones((count, 1), dtype=bool),
        images=np.zeros((count, *image_shape), np.uint8),
        dataset=dataset,
        image_profile=image_profile,
    )
    return CIBHash(bits, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


# The released run, from github.com/zexuanqiu/CIBHash: utils/data.py get_cifar takes 500
# training images per class (lines 125-144); model/base_model.py's argparser sets batch 64
# (line 324), 60 epochs (line 326) and validation every 20 epochs (line 335), and
# run_training_session raises 16-bit runs to 80 epochs (lines 88-90). The DataLoader keeps
# the last, smaller batch: ceil(5,000 / 64) = 79 steps per epoch.
RELEASED_STEPS = 60 * 79  # 4,740
RELEASED_STEPS_16 = 80 * 79  # 6,320
RELEASED_VALIDATION_STEPS = 20 * 79  # 1,580


def test_released_budget_in_optimiser_steps():
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps) == (RELEASED_STEPS, RELEASED_VALIDATION_STEPS)
    assert (RELEASED_BUDGET_16.steps, RELEASED_BUDGET_16.validate_steps) == (RELEASED_STEPS_16, RELEASED_VALIDATION_STEPS)


def test_paper_defaults():
    params = CIBHashParams()
    assert (params.tau, params.beta, params.lr, params.batch_size) == (0.3, 0.001, 1e-3, 64)
    assert params.variant == "deterministic" and params.pretrained and params.validation == "auto"
    # 5,000 training images, as released: its epochs; the step counts recorded.
    for bits, epochs, steps in ((16, 80, RELEASED_STEPS_16), (32, 60, RELEASED_STEPS), (64, 60, RELEASED_STEPS)):
        profile = resolve_profile(params, bits, (32, 32, 3), "", count=5_000)
        assert (profile.profile, profile.backbone, profile.epochs, profile.eval_every) == ("paper", "vgg16", epochs, 20)
        assert (profile.steps, profile.released_steps) == (steps, steps)
        assert profile.augment.size == 224
    # Ten times the images: a tenth of the epochs (79 → 782 steps per epoch), the same steps.
    larger = resolve_profile(params, 32, (32, 32, 3), "", count=50_000)
    assert (larger.epochs, larger.eval_every, larger.released_steps) == (7, 2, RELEASED_STEPS)
    assert larger.steps >= RELEASED_STEPS > larger.steps - 782
    assert resolve_profile(CIBHashParams(epochs=3), 32, (32, 32, 3), "", count=5_000).steps == 3 * 79  # asked wins
    tiny = resolve_profile(params, 32, (8, 8, 1), "", count=100)
    assert (tiny.epochs, tiny.steps, tiny.released_steps) == (100, 200, None)


def test_released_validation_cut_off_scales_with_the_sampled_database():
    assert released_topk(5_000) == 100  # the cibhash-code training split: 10 % of the database
    assert released_topk(50_000) == 1_000 and released_topk(10) == 1


def test_profiles_follow_the_images_and_what_the_dataset_declares():
    params = CIBHashParams()
    assert resolve_profile(params, 32, (8, 8, 1), "").backbone == "small"
    assert resolve_profile(params, 32, (28, 28, 1), "").profile == "tiny"
    assert resolve_profile(params, 32, (256, 256, 3), "").profile == "paper"
    assert resolve_profile(params, 32, (28, 28, 1), "grey-photos", image_profile="natural").profile == "paper"
    forced = resolve_profile(ContrastiveHashParams(profile="tiny", epochs=7), 16, (32, 32, 3), "x")
    assert (forced.backbone, forced.epochs, forced.augment.size, forced.augment.flip_p) == (
        "small",
        7,
        None,
        0.5,
    )
    with pytest.raises(UserError, match="trains its small backbone from scratch"):
        resolve_profile(CIBHashParams(backbone_weights="w.pth"), 32, (8, 8, 1), "")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tau": "0"}, "tau must be positive"),
        ({"beta": "-1"}, "beta must be >= 0"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"epochs": "0"}, "epochs must be at least 1"),
        ({"variant": "bernoulli"}, "is not one of 'deterministic', 'stochastic'"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
        ({"cpu_threads": "0"}, "cpu_threads must be at least 1"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_params(CIBHashParams, overrides, owner="cibhash")


# --------------------------------------------------------------------------------------------
# training for real


def toy_splits(shape=(8, 8, 1), count=48) -> tuple[DataSplit, DataSplit]:
    """Two classes of images: bright top half or bright bottom half, with noise."""
    rng = np.random.default_rng(0)
    classes = np.arange(count) % 2
    images = rng.integers(0, 60, size=(count, *shape), dtype=np.uint8)
    half = shape[0] // 2
    for index, label in enumerate(classes):
        rows = slice(0, half) if label == 0 else slice(half, None)
        images[index, rows] += 150
    labels = np.eye(2, dtype=bool)[classes]
    arrays = DatasetArrays(labels=labels, images=images)
    return DataSplit("train", np.arange(count - 12), arrays), DataSplit(
        "val", np.arange(count - 12, count), arrays
    )


def test_fit_and_encode_tiny_images_record_the_training():
    train, val = toy_splits()
    context = RunContext(seed=0)
    method = CIBHash(16, CIBHashParams(epochs=3, eval_every=2, batch_size=12), context)
    method.fit(train, val)
    codes = method.encode(val)
    assert codes.shape == (12, 16) and codes.dtype == bool
    assert np.array_equal(codes, method.encode(val))  # deterministic codes
    record = context.record
    assert record["profile"] == "tiny" and record["backbone"]["name"] == "small"
    assert record["backbone"]["trained"] and record["augment"]["size"] is None
    assert [entry["epoch"] for entry in record["curve"]] == [1, 2, 3]
    assert {"loss", "contrastive", "kl", "seconds"} <= set(record["curve"][0])
    assert [score["epoch"] for score in record["validation"]["scores"]] == [2, 3]
    assert record["validation"]["selected_epoch"] in (2, 3)


def test_validation_rule_auto_follows_the_protocol_and_is_recorded():
    train, val = toy_splits()
    assert len(train) == 36
    rules = {}
    for name, asked, split in (
        ("auto", {}, val),
        ("auto-cibhash-code", {}, DataSplit("val", val.indices, val._arrays, protocol="cibhash-code")),
        ("released", {"validation": "released"}, val),
        ("none", {"eval_every": 0}, val),
    ):
        context = RunContext(seed=0)
        CIBHash(8, CIBHashParams(**{"epochs": 1, "batch_size": 12, **asked}), context).fit(train, split)
        rules[name] = context
    assert rules["auto"].record["validation_rule"]["rule"] == "train-ranking"
    assert "over the full ranking" in rules["auto"].record["validation"]["metric"]
    for name in ("auto-cibhash-code", "released"):
        rule = rules[name].record["validation_rule"]
        assert (rule["rule"], rule["topk"]) == ("released", 1)  # 1000 · 36 / 50,000, at least 1
        assert rules[name].record["validation"]["metric"].startswith("mAP@1: validation images")
        assert any("mAP@1 against the training split" in text for text in rules[name].record["deviations"])
    assert rules["auto-cibhash-code"].record["validation_rule"]["protocol"] == "cibhash-code"
    assert rules["none"].record["validation_rule"]["rule"] == "none"


def test_a_nan_loss_keeps_the_best_validated_head_as_released(monkeypatch):
    train, val = toy_splits()
    epochs_seen = []
    real_loss = cibhash_model.cibhash_loss

    def loss_turning_nan(p_i, p_j, tau, beta, variant="deterministic"):
        terms = real_loss(p_i, p_j, tau, beta, variant)
        epochs_seen.append(1)
        if len(epochs_seen) > 3 * 3 + 1:  # 3 steps per epoch: epoch 4's second step
            terms = {key: value * float("nan") for key, value in terms.items()}
        return terms

    monkeypatch.setattr(cibhash_model, "cibhash_loss", loss_turning_nan)
    context = RunContext(seed=0)
    method = CIBHash(8, CIBHashParams(epochs=6, eval_every=2, batch_size=12), context)
    method.fit(train, val)
    record = context.record
    assert record["diverged"] == {"epoch": 4, "step": 2, "kept": "best validated epoch 2"}
    assert record["validation"]["selected_epoch"] == 2 and len(record["curve"]) == 3
    codes = method.encode(val)
    assert codes.shape == (12, 8)
    assert all(torch.isfinite(value).all() for value in method.model.state_dict().values() if value.is_floating_point())


def test_paper_profile_trains_only_the_head_over_a_frozen_vgg16(monkeypatch):
    import hashbench.toolkit.training as module  # the deep methods take their Trainer from here when they train

    train, val = toy_splits(shape=(16, 16, 3), count=16)  # 4 training images
    val = DataSplit("val", val.indices[:2], val._arrays)
    initial = {}

    class RecordingTrainer(module.Trainer):
        def fit(self, *args, **kwargs):
            initial.update({key: value.clone() for key, value in self.model.state_dict().items()})
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(module, "Trainer", RecordingTrainer)
    context = RunContext(seed=0)
    params = CIBHashParams(profile="paper", pretrained=False, epochs=1, batch_size=2, eval_every=0)
    method = CIBHash(8, params, context)
    method.fit(train, None)
    after = method.model.state_dict()
    changed = {key for key in after if not torch.equal(after[key], initial[key])}
    assert changed == {"head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    assert method.encode(val).shape == (2, 8)
    backbone = context.record["backbone"]
    assert (
        backbone["name"] == "vgg16" and backbone["pretrained"] is False and not backbone["trained"]
    )
    assert backbone["weights_id"] == "vgg16-random0" and backbone["feature_dim"] == 4096
    assert context.record["augment"]["size"] == 224
    assert context.record["validation"]["selection"] == "last epoch (no validation)"


# --------------------------------------------------------------------------------------------
# through the CLI


def _records(results: Path) -> dict[str, dict]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(results.glob("runs/*/run.json"))
    }


def test_cli_trains_cibhash_and_clhash_on_digits(invoke, results):
    result = invoke(
        "run", "--methods", "cibhash,clhash", "--bits", "16", "--results", results,
        "--set", "cibhash.epochs=3", "--set", "cibhash.eval_every=2", "--set", "clhash.epochs=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = {record["method"]: record for record in _records(results).values()}
    cib, cl = records["cibhash"], records["clhash"]
    assert cib["status"] == "ok" and cl["status"] == "ok"
    training = cib["training"]
    assert training["profile"] == "tiny" and training["backbone"]["name"] == "small"
    assert training["cpu_threads"] == 1  # the tiny profile's single-threaded CPU training
    assert training["beta"] == 0.001 and cl["training"]["beta"] == 0.0
    for record in (cib, cl):  # the resolved settings, as every deep method records them
        settings = record["training"]["settings"]
        assert (settings["profile"], settings["backbone"], settings["cpu_threads"]) == ("tiny", "small", 1)
        assert (settings["lr"], settings["batch_size"]) == (1e-3, 64)
    assert (training["settings"]["epochs"], cl["training"]["settings"]["epochs"]) == (3, 2)
    assert [entry["epoch"] for entry in training["curve"]] == [1, 2, 3]
    assert len(training["epoch_seconds"]) == 3 and all(s > 0 for s in training["epoch_seconds"])
    assert training["train_seconds"] >= sum(training["epoch_seconds"])
    assert [score["epoch"] for score in training["validation"]["scores"]] == [2, 3]
    assert "validation images against the training split" in training["validation"]["metric"]
    assert "kl" not in cl["training"]["curve"][0]  # beta = 0: the term is not even computed
    assert cib["timings"]["fit"] > 0 and 0 < cib["metrics"]["map"] <= 1
    assert not list(results.glob(f"runs/*/{CHECKPOINT_NAME}"))  # removed after success


def test_missing_vgg16_weights_fail_the_run_with_where_to_put_them(
    invoke, results, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    result = invoke(
        "run",
        "--methods",
        "cibhash",
        "--bits",
        "8",
        "--results",
        results,
        "--set",
        "cibhash.profile=paper",
    )
    assert result.exit_code == 1
    (record,) = _records(results).values()
    assert record["status"] == "failed"
    assert (
        VGG16_FILE in record["error"]
        and str(tmp_path / "empty-hub" / "checkpoints") in record["error"]
    )
    assert "pretrained=false" in record["error"]


def test_killed_run_resumes_from_its_checkpoint_with_the_same_codes(invoke, tmp_path):
    arguments = ["run", "--methods", "cibhash", "--bits", "8", "--device", "cpu", "--set", "cibhash.epochs=4",
                 "--set", "cibhash.eval_every=2"]  # fmt: skip
    clean = tmp_path / "clean"
    assert invoke(*arguments, "--results", clean).exit_code == 0

    killed = tmp_path / "killed"
    environment = dict(
        os.environ, **{KILL_AFTER_EPOCH_ENV: "3", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    )
    environment.pop("HASHBENCH_RESULTS", None)
    process = subprocess.run(
        [sys.executable, "-m", "hashbench", *arguments, "--results", str(killed)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -9, process.stderr  # SIGKILL, right after epoch 3's checkpoint
    (run_dir,) = (killed / "runs").iterdir()
    assert (run_dir / CHECKPOINT_NAME).is_file() and not (run_dir / "run.json").exists()
    assert torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)["epoch"] == 3

    assert invoke(*arguments, "--results", killed).exit_code == 0
    (resumed,) = _records(killed).values()
    (reference,) = _records(clean).values()
    assert resumed["training"]["resumed_from_epoch"] == 3
    assert reference["training"]["resumed_from_epoch"] is None
    losses = [entry["loss"] for entry in reference["training"]["curve"]]
    assert [entry["loss"] for entry in resumed["training"]["curve"]] == losses
    with (
        np.load(run_dir / "codes.npz") as got,
        np.load(clean / "runs" / run_dir.name / "codes.npz") as want,
    ):
        assert np.array_equal(got["query_codes"], want["query_codes"])
        assert np.array_equal(got["database_codes"], want["database_codes"])
    assert not (run_dir / CHECKPOINT_NAME).exists()
