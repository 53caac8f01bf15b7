"""SGH: the released neuron, loss and gradient, initialisation and budget; it learns on digits.

The released code is ``sgh_notebook/stochastic_hashing.py`` of
github.com/doubling/Stochastic_Generative_Hashing (TensorFlow 0.10).
"""

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
from hashbench.methods._sgh_model import SGHNet, doubly_stochastic_neuron, sgh_losses
from hashbench.methods.lsh import LSH
from hashbench.methods.sgh import SGH, SGHParams
from hashbench.metrics import mean_average_precision
from hashbench.params import resolve_params


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values))


def test_neuron_codes_and_its_released_gradient():
    # DoublySN / DoublySNGrad: yout = (sign(prob - epsilon) + 1) / 2;
    # dlogits = prob * (1 - prob) * (dprev + dpout); depsilon = dprev.
    logits = torch.tensor([[-2.0, -0.1, 0.0, 0.3, 4.0]], dtype=torch.float64, requires_grad=True)
    epsilon = torch.tensor([[0.5, 0.5, 0.5, 0.9, 0.1]], dtype=torch.float64, requires_grad=True)
    codes, probability = doubly_stochastic_neuron(logits, epsilon)
    p = _sigmoid(logits.detach().numpy())
    assert codes.tolist() == [[0.0, 0.0, 0.5, 0.0, 1.0]]  # a tie gives 0.5, as released
    grad_codes = np.array([[1.0, -2.0, 0.5, 3.0, -1.0]])
    grad_p = np.array([[0.25, 0.0, 1.0, -1.0, 2.0]])
    (codes * torch.from_numpy(grad_codes) + probability * torch.from_numpy(grad_p)).sum().backward()
    assert np.allclose(logits.grad.numpy(), p * (1 - p) * (grad_codes + grad_p), atol=1e-12)
    assert np.allclose(epsilon.grad.numpy(), grad_codes)


def _released_loss_and_encoder_gradient(x, we, be, wd, scale, shift, alpha, beta):
    """stochastic_hashing.py's loss, and its gradient in wencode through DoublySNGrad (ε = 0.5)."""
    logits = x @ we + be
    prob = _sigmoid(logits)
    yout = (np.sign(prob - 0.5) + 1) / 2
    xout = yout @ wd * np.abs(scale) + shift
    monitor = 0.5 * np.sum((xout - x) ** 2)  # tf.nn.l2_loss
    cross_entropy = np.maximum(logits, 0) - logits * yout + np.log(1 + np.exp(-np.abs(logits)))
    loss = monitor + alpha * cross_entropy.sum() + beta * 0.5 * np.sum(wd**2) + beta * 0.5 * np.sum(we**2)
    # d loss / d yout: the reconstruction through the decoder, and the cross-entropy's -logits.
    dyout = ((xout - x) * np.abs(scale)) @ wd.T - alpha * logits
    dlogits = prob * (1 - prob) * dyout + alpha * (prob - yout)
    return loss, x.T @ dlogits + beta * we


def test_loss_and_encoder_gradient_match_a_transcription_of_the_released_graph():
    rng = np.random.default_rng(0)
    x = rng.random((6, 5))
    model = SGHNet(5, 3, torch.from_numpy(x.mean(0)), torch.from_numpy(x.var(0))).double()
    with torch.no_grad():
        model.scale.copy_(torch.tensor([0.3, -0.7, 1.1, 0.5, -0.2], dtype=torch.float64))  # |s| as released
    terms = sgh_losses(model, torch.from_numpy(x), alpha=0.3, beta=0.2, stochastic=False)
    terms["loss"].backward()
    we = model.encoder.weight.detach().numpy().T  # TF's wencode is (input, hidden)
    loss, grad = _released_loss_and_encoder_gradient(
        x, we, model.encoder.bias.detach().numpy(), model.decoder.detach().numpy(),
        model.scale.detach().numpy(), model.shift.detach().numpy(), 0.3, 0.2,
    )  # fmt: skip
    assert float(terms["loss"].detach()) == pytest.approx(loss, rel=1e-10)
    assert np.allclose(model.encoder.weight.grad.numpy().T, grad, atol=1e-10)


def test_initialisation_as_released():
    torch.manual_seed(0)
    features = torch.rand(400, 2000)
    features[:, 0] = 0.25  # a constant pixel: its variance is clipped at 1e-7
    model = SGHNet(2000, 64, features.mean(0), features.var(0, unbiased=False))
    model.requires_grad_(False)
    assert model.decoder.shape == (64, 2000) and model.encoder.weight.shape == (64, 2000)
    assert torch.allclose(model.shift, features.mean(0))
    assert model.scale[0] == pytest.approx(1e-7) and torch.allclose(model.scale[1:], features.var(0, unbiased=False)[1:])
    # wencode ~ N(0, 1/sqrt(dim_input)), bencode ~ N(0, 1), wdecode ~ N(0, 1/sqrt(dim_hidden)).
    assert float(model.encoder.weight.std()) == pytest.approx(1 / math.sqrt(2000), rel=0.02)
    assert float(model.decoder.std()) == pytest.approx(1 / math.sqrt(64), rel=0.02)
    assert 0.6 < float(model.encoder.bias.std()) < 1.4


def _split(count: int, dim: int = 8) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 2), dtype=bool)
    labels[np.arange(count), np.arange(count) % 2] = True
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, features=rng.random((count, dim)).astype(np.float32)))


def test_profiles_resolve_to_the_released_budget_in_steps():
    # stochastic_hashing.py: batch_size = 500, learning_rate = 1e-2, max_iter = 5000, alpha = beta = 1e-3.
    paper = SGH(16, SGHParams(profile="paper")).resolve_settings(_split(60))
    assert (paper.lr, paper.batch_size, paper.alpha, paper.beta) == (1e-2, 500, 1e-3, 1e-3)
    assert (paper.epochs, paper.steps, paper.released_steps) == (5_000, 5_000, 5_000)  # one step per epoch
    larger = SGH(16, SGHParams(profile="paper")).resolve_settings(_split(5_000))
    assert (larger.epochs, larger.eval_every, larger.steps) == (500, 50, 5_000)  # 10 batches of 500
    assert (paper.neuron, paper.sampling) == ("deterministic", "replacement")
    tiny = SGH(16).resolve_settings(_split(500))
    assert (tiny.profile, tiny.batch_size, tiny.epochs, tiny.steps, tiny.max_steps) == ("tiny", 100, 200, 1_000, 2_000)


def test_bad_parameters_are_refused_in_one_line():
    for values in ({"lr": 0}, {"batch_size": 1}, {"neuron": "gumbel"}, {"alpha": -1}, {"sampling": "sorted"}):
        with pytest.raises(UserError) as error:
            resolve_params(SGHParams, values, owner="sgh")
        assert "\n" not in str(error.value)


def test_options_are_recorded_as_deviations():
    context = RunContext(seed=0)
    method = SGH(8, SGHParams(epochs=2, batch_size=20, neuron="stochastic", sampling="epoch"), context)
    method.fit(_split(60))
    assert method.encode(_split(60)).shape == (60, 8)
    deviations = " | ".join(context.record["deviations"])
    assert "ε ~ U(0, 1)" in deviations and "shuffled order" in deviations


def test_conforms():
    assert_conforms(SGH)


def _digits_splits() -> tuple[dict[str, DataSplit], int]:
    dataset = registry.get_dataset("digits")()
    loaded = dataset.load(None)
    arrays = DatasetArrays(labels=loaded.labels, features=loaded.features, dataset="digits", provenance={})
    manifest = draw_split("digits", dataset.protocol(None), arrays, 0)
    return {name: DataSplit(name, indices, arrays) for name, indices in manifest.splits.items()}, manifest.topk


def _map(method, splits, topk: int) -> float:
    method.fit(splits["train"], splits["val"])
    query, database = method.encode(splits["query"]), method.encode(splits["database"])
    return mean_average_precision(
        query, database, splits["query"].labels, splits["database"].labels, bits=method.bits, topk=topk
    )  # fmt: skip


def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh():
    splits, topk = _digits_splits()
    lsh = _map(LSH(16, context=RunContext(seed=0)), splits, topk)
    untrained = _map(SGH(16, SGHParams(epochs=1, lr=1e-12, eval_every=0), RunContext(seed=0)), splits, topk)
    context = RunContext(seed=0)
    trained = _map(SGH(16, SGHParams(epochs=40, eval_every=0), context), splits, topk)
    losses = [entry["loss"] for entry in context.record["curve"]]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
