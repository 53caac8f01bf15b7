"""TBH: the binary activation, the code graph against loops, the signs of the adversarial terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.method import RunContext
from hashbench.methods._tbh_model import (
    TwinBottleneckNet,
    binary_activation,
    hamming_adjacency,
    normalized_adjacency,
    tbh_losses,
)
from hashbench.methods.tbh import GRAPH_EXPONENT, TBH, TBHParams
from hashbench.toolkit.layers import simultaneous_step


def test_binary_activation_codes_and_gradient():
    logits = torch.tensor([[-2.0, -0.1, 0.0, 0.3, 4.0]], requires_grad=True)
    codes, probability = binary_activation(logits)
    expected_p = torch.sigmoid(logits.detach())
    assert codes.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]  # 1[p > 0.5]
    assert torch.allclose(probability, expected_p)
    grad_code = torch.tensor([[1.0, -2.0, 0.5, 3.0, -1.0]])
    grad_p = torch.tensor([[0.25, 0.0, 1.0, -1.0, 2.0]])
    (codes * grad_code + probability * grad_p).sum().backward()
    # The released gradient: d logits = p(1 − p)(g_code + g_p).
    assert torch.allclose(logits.grad, expected_p * (1 - expected_p) * (grad_code + grad_p))


def _loop_normalized_adjacency(codes: np.ndarray, exponent: float) -> np.ndarray:
    count, bits = codes.shape
    adjacency = np.zeros((count, count))
    for i in range(count):
        for j in range(count):
            distance = sum(int(codes[i, k] != codes[j, k]) for k in range(bits))
            adjacency[i, j] = (1 - distance / bits) ** exponent
    degree = [sum(adjacency[i]) + 1e-8 for i in range(count)]
    normalized = np.zeros_like(adjacency)
    for i in range(count):
        for j in range(count):
            normalized[i, j] = adjacency[i, j] / np.sqrt(degree[i] * degree[j])
    return adjacency, normalized


def test_adjacency_and_normalisation_match_loops():
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2, size=(7, 9)).astype(np.float64)
    codes[4] = 1 - codes[2]  # a complementary pair: distance = bits, weight 0
    expected_a, expected_n = _loop_normalized_adjacency(codes, 1.4)
    adjacency = hamming_adjacency(torch.tensor(codes), 1.4)
    assert np.allclose(adjacency.numpy(), expected_a, atol=1e-12)
    assert np.allclose(np.diag(adjacency.numpy()), 1.0)  # self loops
    assert adjacency[2, 4] == 0 and adjacency[4, 2] == 0
    assert np.allclose(normalized_adjacency(adjacency).numpy(), expected_n, atol=1e-12)


def test_twin_layer_is_sigmoid_of_graph_smoothed_latents():
    torch.manual_seed(0)
    model = TwinBottleneckNet(6, 5, hidden=8, continuous=4, decoder_output="relu", exponent=GRAPH_EXPONENT).double()
    codes = torch.tensor(np.random.default_rng(1).integers(0, 2, size=(5, 5)), dtype=torch.float64)
    continuous = torch.rand(5, 4, dtype=torch.float64)
    _, normalized = _loop_normalized_adjacency(codes.numpy(), 1.4)
    projected = model.graph(continuous).detach().numpy()
    expected = 1 / (1 + np.exp(-(normalized @ projected)))
    assert np.allclose(model.twin(codes, continuous).detach().numpy(), expected, atol=1e-10)


def test_reconstruction_reaches_the_binary_head_through_the_graph():
    torch.manual_seed(0)
    model = TwinBottleneckNet(6, 8, hidden=16, continuous=4, decoder_output="linear", exponent=GRAPH_EXPONENT)
    features = torch.rand(12, 6)
    out = model(features)
    (out["reconstruction"] ** 2).sum().backward()
    # The codes enter only through the adjacency: a gradient on the binary head proves it.
    assert model.binary_head.weight.grad.abs().sum() > 0


def _critic_loss(model: TwinBottleneckNet, features: torch.Tensor, seed: int = 5) -> float:
    torch.manual_seed(seed)  # the same prior samples every time
    return float(tbh_losses(model, features)["critic"].detach())


def test_critic_loss_falls_when_the_critics_train_alone_on_fixed_fakes():
    torch.manual_seed(0)
    model = TwinBottleneckNet(10, 16, hidden=32, continuous=8, decoder_output="relu", exponent=GRAPH_EXPONENT)
    features = torch.rand(64, 10)
    optimizer = torch.optim.Adam(model.critic_parameters(), lr=1e-2)
    encoder_before = [parameter.detach().clone() for parameter in model.actor_parameters()]
    before = _critic_loss(model, features)
    for step in range(60):
        torch.manual_seed(100 + step)
        terms = tbh_losses(model, features)
        optimizer.zero_grad()
        terms["critic"].backward()
        optimizer.step()
    assert _critic_loss(model, features) < before - 0.05
    # The fakes were fixed: the encoder did not move.
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.actor_parameters(), strict=True))


def test_actor_loss_subtracts_the_adversarial_terms_and_fools_a_fixed_critic():
    torch.manual_seed(0)
    model = TwinBottleneckNet(10, 16, hidden=32, continuous=8, decoder_output="relu", exponent=GRAPH_EXPONENT)
    features = torch.rand(64, 10)
    terms = tbh_losses(model, features)
    assert torch.allclose(terms["actor"], terms["reconstruction"] - terms["code_adversarial"] - terms["latent_adversarial"])
    assert torch.allclose(terms["critic"], terms["code_adversarial"] + terms["latent_adversarial"])
    # The actor's adversarial part, trained alone against fixed critics, raises their loss.
    optimizer = torch.optim.Adam(model.actor_parameters(), lr=1e-2)
    before = _critic_loss(model, features)
    for step in range(30):
        torch.manual_seed(200 + step)
        terms = tbh_losses(model, features)
        optimizer.zero_grad()
        (terms["actor"] - terms["reconstruction"]).backward()
        optimizer.step()
    assert _critic_loss(model, features) > before + 0.05


def test_simultaneous_step_uses_the_gradients_at_the_shared_weights():
    torch.manual_seed(0)
    model = TwinBottleneckNet(6, 8, hidden=16, continuous=4, decoder_output="relu", exponent=GRAPH_EXPONENT)
    features = torch.rand(20, 6)
    groups = {"actor": model.actor_parameters(), "critic": model.critic_parameters()}
    torch.manual_seed(1)
    terms = tbh_losses(model, features)
    expected = {
        name: torch.autograd.grad(terms[name], groups[name], retain_graph=True) for name in groups
    }
    before = {name: [p.detach().clone() for p in groups[name]] for name in groups}
    sgd = {name: torch.optim.SGD(groups[name], lr=0.1) for name in groups}
    torch.manual_seed(1)
    terms = tbh_losses(model, features)
    simultaneous_step({name: terms[name] for name in groups}, groups, sgd)
    for name in groups:
        for old, new, grad in zip(before[name], groups[name], expected[name], strict=True):
            assert torch.allclose(new.detach(), old - 0.1 * grad, atol=1e-6)


def _digits_like_split(count: int = 60, dim: int = 16) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 3), dtype=bool)
    labels[np.arange(count), np.arange(count) % 3] = True
    centres = rng.random((3, dim))
    features = (centres[np.arange(count) % 3] + 0.05 * rng.standard_normal((count, dim))).clip(0, 1).astype(np.float32)
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, features=features))


# train/tbh_train.py: train(..., max_iter=100000) (line 62), the test batch scored every
# 2,000 steps (line 107); run_tbh.py: batch 400.
RELEASED_STEPS = 100_000


def resolve_settings(params: TBHParams, split: DataSplit):
    return TBH(32, params).resolve_settings(split)


def test_profiles_resolve_to_the_released_settings_and_the_tiny_default():
    split = _digits_like_split()
    paper = resolve_settings(TBHParams(profile="paper"), split)
    assert (paper.lr, paper.batch_size, paper.hidden, paper.continuous, paper.decoder_output) == (1e-4, 400, 1024, 512, "relu")
    assert paper.epochs == 100_000  # 60 items: one step per epoch, the released 100,000 steps
    assert (paper.steps, paper.released_steps) == (RELEASED_STEPS, RELEASED_STEPS)
    assert paper.exponent == pytest.approx(1.4)
    # 5,000 items: 13 batches of 400 (the last of 200) per epoch.
    larger = resolve_settings(TBHParams(profile="paper"), _digits_like_split(5_000))
    assert (larger.epochs, larger.eval_every) == (7_693, 154) and RELEASED_STEPS <= larger.steps < RELEASED_STEPS + 13
    tiny = resolve_settings(TBHParams(), split)  # the dataset's own vectors: tiny
    assert tiny.profile == "tiny" and tiny.decoder_output == "linear" and tiny.standardize
    assert resolve_settings(TBHParams(profile="tiny", lr=0.5, decoder_output="relu", exponent=GRAPH_EXPONENT), split).lr == 0.5


def test_fit_and_encode_on_a_small_split_records_its_settings():
    split = _digits_like_split()
    context = RunContext(seed=0)
    method = TBH(8, TBHParams(epochs=3, batch_size=20), context)
    method.fit(split)
    codes = method.encode(split)
    assert codes.shape == (60, 8) and codes.dtype == bool
    assert context.record["settings"]["epochs"] == 3
    assert "dataset's own feature vectors" in context.record["features"]["source"]
    assert len(context.record["curve"]) == 3
    assert context.record["settings"]["released_steps"] is None and context.record["settings"]["steps"] == 9
    assert context.record["deviations"][0].startswith("tiny profile")


def test_the_shared_setup_records_threads_and_guards_encode():
    from hashbench.errors import UserError
    from hashbench.method import NotFittedError

    split = _digits_like_split()
    with pytest.raises(NotFittedError, match="tbh: encode\\(\\) called before fit\\(\\)"):
        TBH(8).encode(split)
    context = RunContext(seed=0)
    method = TBH(8, TBHParams(epochs=1, batch_size=20, cpu_threads=2), context)
    method.fit(split)
    settings = context.record["settings"]
    assert settings["cpu_threads"] == 2 and settings["profile"] == "tiny"  # as asked, not the tiny rule's 1
    assert (settings["lr"], settings["batch_size"], settings["epochs"]) == (2e-3, 20, 1)
    assert context.record["precision"] == "float32"
    narrower = DataSplit("query", np.arange(5), DatasetArrays(labels=split.labels[:5], features=split.features[:5, :8]))
    with pytest.raises(UserError, match="tbh: features of query have 8 dimensions, the model was trained on 16"):
        method.encode(narrower)
