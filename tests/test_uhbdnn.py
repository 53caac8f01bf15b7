"""UH-BDNN: the released preprocessing, layers, initialisation, cost and gradient, B update
and budget; it learns on digits.

The released code is the authors' MATLAB (github.com/dzungdoan6/uh-bdnn): ``runHash.m``,
``DeepNN_HASH/learn_all.m``, ``learnDeepNN.m``, ``deepNNCost.m``, ``learn_B.m``,
``initializeParameters.m``, ``utils/rescale_0_1.m``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._uhbdnn_model import BinaryDeepNet, uhbdnn_cost, unit_rescaling, update_codes
from hashbench.methods.lsh import LSH
from hashbench.methods.uhbdnn import UHBDNN, UHBDNNParams, released_hidden
from hashbench.params import resolve_params
from tests.test_sgh import _digits_splits, _map

LAMBDAS = (1e-5, 5e-2, 1e-2, 0.5e-6)  # runHash.m: lambda1..lambda4


def _sig(z):
    return 1 / (1 + np.exp(-z))


def _released_cost_and_gradient(stack, data, B, lambdas):
    """deepNNCost.m transcribed: columns are items; its J and hand-written gradient."""
    l1, l2, l3, l4 = lambdas
    m = data.shape[1]
    a, z = [data], [None]
    for d, layer in enumerate(stack):
        z.append(layer["w"] @ a[d] + layer["b"][:, None])
        a.append(_sig(z[-1]) if d + 1 <= 2 else z[-1])  # MATLAB's layers 2, 3 sigmoid; 4, 5 identity
    w4, b4, h = stack[3]["w"], stack[3]["b"][:, None], a[3]
    residual = data - w4 @ B - b4 @ np.ones((1, m))
    tmp = h @ h.T
    J = [
        np.sum(residual**2) / (2 * m),
        l1 / 2 * sum(np.sum(layer["w"] ** 2) for layer in stack),
        l2 / (2 * m) * np.sum((h - B) ** 2),
        l3 / 2 * np.sum((tmp / m - np.eye(len(tmp))) ** 2),
        l4 / (2 * m) * np.sum((h @ np.ones((m, 1))) ** 2),
    ]
    grads = [None] * 4
    grads[3] = {"w": -residual @ B.T / m + l1 * w4, "b": (-((data - w4 @ B) @ np.ones((m, 1)) - m * b4) / m)[:, 0]}
    delta = {3: l2 / m * (h - B) + 2 * l3 / m * (tmp / m - np.eye(len(tmp))) @ h + l4 / m * (h @ np.ones((m, 1)) @ np.ones((1, m)))}
    for layer in (2, 1):
        delta[layer] = (stack[layer]["w"].T @ delta[layer + 1]) * _sig(z[layer]) * (1 - _sig(z[layer]))
    for layer in (2, 1, 0):
        grads[layer] = {"w": delta[layer + 1] @ a[layer].T + l1 * stack[layer]["w"], "b": delta[layer + 1].sum(axis=1)}
    return J, grads


def test_cost_and_autograd_gradient_match_the_released_cost_and_hand_written_gradient():
    rng = np.random.default_rng(0)
    model = BinaryDeepNet(6, (5, 4), 3, items=7)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.7)
    x = rng.random((7, 6))
    codes = np.where(rng.random((7, 3)) > 0.5, 1.0, -1.0)
    lambdas = (0.1, 0.5, 0.3, 0.2)  # large, so that every term shows
    terms = uhbdnn_cost(model, torch.from_numpy(x), torch.from_numpy(codes), lambdas)
    terms["loss"].backward()
    modules = [*model.layers, model.decoder]
    stack = [{"w": module.weight.detach().numpy(), "b": module.bias.detach().numpy()} for module in modules]
    J, grads = _released_cost_and_gradient(stack, x.T, codes.T, lambdas)
    names = ["reconstruction", "weight_decay", "binary", "independence", "balance"]
    assert [float(terms[name].detach()) for name in names] == pytest.approx(J, rel=1e-10)
    assert float(terms["loss"].detach()) == pytest.approx(sum(J), rel=1e-10)
    for module, grad in zip(modules, grads, strict=True):
        assert np.allclose(module.weight.grad.numpy(), grad["w"], atol=1e-10)
        assert np.allclose(module.bias.grad.numpy(), grad["b"], atol=1e-10)


def _released_learn_b(Y, Wg, XF, nu, sweeps=10):
    """learn_B.m transcribed (Y: m×c, Wg: L×c, XF: m×L), with its column deletions."""
    B = np.zeros(XF.shape)
    Q = nu * XF + Y @ Wg.T
    for _ in range(sweeps):
        for k in range(B.shape[1]):
            Zk = np.delete(B, k, axis=1)
            Wk = np.delete(Wg, k, axis=0)
            B[:, k] = np.sign(Q[:, k] - Zk @ Wk @ Wg[k, :])
    return B


def test_code_update_matches_the_released_learn_b():
    rng = np.random.default_rng(1)
    residual, weight, hidden = rng.standard_normal((9, 6)), rng.standard_normal((6, 4)), rng.standard_normal((9, 4))
    expected = _released_learn_b(residual, weight.T, hidden, 5e-2)
    got = update_codes(torch.from_numpy(residual), torch.from_numpy(weight), torch.from_numpy(hidden), 5e-2)
    assert np.array_equal(got.numpy(), expected)
    assert set(np.unique(expected)) <= {-1.0, 1.0}


def test_rescaling_and_initialisation_as_released():
    rng = np.random.default_rng(2)
    x = rng.random((50, 8)) * np.arange(1, 9)
    minimum, spread = unit_rescaling(torch.from_numpy(x))
    # rescale_0_1.m: subtract the per-dimension min, divide by the largest range (+ eps).
    assert np.allclose(minimum.numpy(), x.min(0)) and spread == pytest.approx(np.max(x.max(0) - x.min(0)))
    data = (x - x.min(0)) / spread
    model = BinaryDeepNet(8, (6, 5), 4, items=50)
    codes = torch.from_numpy(np.where(rng.random((50, 4)) > 0.5, 1.0, -1.0))
    model.initialise(torch.from_numpy(data), codes)
    # initializeParameters.m: W1 = leading eigenvectors of (1/m) X Xᵀ (uncentred), b = 0.
    values, vectors = np.linalg.eigh(data.T @ data / 50)
    expected = vectors[:, ::-1][:, :6].T
    w1 = model.layers[0].weight.detach().numpy()
    assert np.allclose(np.abs(np.sum(w1 * expected, axis=1)), 1.0, atol=1e-8)  # the same directions, up to sign
    assert float(model.layers[0].bias.detach().abs().sum()) == 0.0
    hidden1 = _sig(data @ w1.T)
    _, vectors2 = np.linalg.eigh(hidden1.T @ hidden1 / 50)
    assert np.allclose(np.abs(np.sum(model.layers[1].weight.detach().numpy() * vectors2[:, ::-1][:, :5].T, axis=1)), 1.0, atol=1e-8)
    assert np.array_equal(model.decoder.weight.detach().numpy(), np.eye(8, 4))  # W4_1 = eye(outputSize, hiddenSize(3))
    assert torch.equal(model.codes, codes)


def test_layer_sizes_released_and_adapted():
    # runHash.m: hiddenSize by L.
    assert [released_hidden(bits) for bits in (8, 16, 24, 32)] == [(90, 20), (90, 30), (100, 40), (120, 50)]
    assert released_hidden(12) == (90, 30) and released_hidden(64) == (240, 100)
    assert UHBDNN(16).layer_sizes(4096) == (90, 30)
    assert UHBDNN(16).layer_sizes(64) == (64, 30)  # digits: h1 at most the input dimension
    assert UHBDNN(64).layer_sizes(64) == (64, 64)
    assert UHBDNN(16, UHBDNNParams(hidden=(40, 20))).layer_sizes(64) == (40, 20)
    with pytest.raises(UserError, match="bits \\(16\\) <= h2 <= h1"):
        UHBDNN(16, UHBDNNParams(hidden=(40, 10))).layer_sizes(64)


def _split(count: int, dim: int = 12) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 2), dtype=bool)
    labels[np.arange(count), np.arange(count) % 2] = True
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, features=rng.random((count, dim)).astype(np.float32)))


def test_profiles_resolve_to_the_released_budget_in_steps():
    # runHash.m: max_iter = 20, iter_lbfgs = 400; learn_all.m: 400 more before the loop.
    paper = UHBDNN(16, UHBDNNParams(profile="paper")).resolve_settings(_split(500))
    assert (paper.batch_size, paper.epochs, paper.steps, paper.released_steps) == (500, 8_400, 8_400, 8_400)
    assert (paper.inner_steps, paper.eval_every, paper.lambdas, paper.code_sweeps) == (400, 400, LAMBDAS, 10)
    tiny = UHBDNN(16).resolve_settings(_split(500))
    assert (tiny.profile, tiny.epochs, tiny.inner_steps, tiny.eval_every, tiny.max_steps) == ("tiny", 300, 50, 50, 300)


def test_bad_parameters_are_refused_in_one_line():
    for values in ({"lambda2": -1}, {"inner_steps": 0}, {"hidden": [10]}, {"hidden": [0, 4]}, {"code_sweeps": 0}):
        with pytest.raises(UserError) as error:
            resolve_params(UHBDNNParams, values, owner="uhbdnn")
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="cannot produce 20 bits from 12"):
        UHBDNN(20).fit(_split(30))


def test_codes_are_updated_every_inner_steps_and_the_lbfgs_state_survives_a_checkpoint():
    split = _split(40)
    method = UHBDNN(4, UHBDNNParams(epochs=3, inner_steps=2, eval_every=0), RunContext(seed=0))
    method.fit(split)
    assert int(method.model.steps_done) == 3
    # after step 2 an outer iteration: B is the released update of the trained network's H
    # (here checked to be ±1 codes of the right shape; the update itself is pinned above)
    assert method.model.codes.shape == (40, 4) and set(torch.unique(method.model.codes).tolist()) <= {-1.0, 1.0}
    optimizer = torch.optim.LBFGS(method.model.parameters(), max_iter=1, line_search_fn="strong_wolfe")
    x = method.inputs(split)

    def closure():
        optimizer.zero_grad()
        loss = uhbdnn_cost(method.model, x, method.model.codes, LAMBDAS)["loss"]
        loss.backward()
        return loss

    optimizer.step(closure)
    optimizer.step(closure)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    again = torch.optim.LBFGS(method.model.parameters(), max_iter=1, line_search_fn="strong_wolfe")
    again.load_state_dict(torch.load(buffer, weights_only=True))
    assert len(again.state_dict()["state"][0]["old_dirs"]) == len(optimizer.state_dict()["state"][0]["old_dirs"])
    codes = method.encode(split)
    assert codes.shape == (40, 4) and codes.dtype == bool


def test_conforms():
    assert_conforms(UHBDNN)


class _Untrained(UHBDNN):
    """The initialised network (eigenvectors, ITQ codes), before any L-BFGS step."""

    def run_trainer(self, *args, **kwargs):
        return None


def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh():
    splits, topk = _digits_splits()
    lsh = _map(LSH(16, context=RunContext(seed=0)), splits, topk)
    untrained = _map(_Untrained(16, UHBDNNParams(), RunContext(seed=0)), splits, topk)
    context = RunContext(seed=0)
    trained = _map(UHBDNN(16, UHBDNNParams(epochs=150, inner_steps=50, eval_every=0), context), splits, topk)
    losses = [entry["loss"] for entry in context.record["curve"]]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)
