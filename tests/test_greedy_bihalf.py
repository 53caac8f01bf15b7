"""GreedyHash and Bi-half: their hash layers' forward and backward passes, the loss, profiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._deep import straight_through_sign
from hashbench.methods._similarity import cosine_similarity_loss
from hashbench.methods.bihalf import BiHalf, BiHalfParams, bihalf_layer, half_split
from hashbench.methods.greedyhash import GreedyHash, GreedyHashParams, cubic_penalty
from hashbench.params import resolve_params


def test_greedy_sign_forward_and_straight_through_backward():
    hidden = torch.tensor([[-1.5, -0.0, 0.0, 0.2, 3.0]], requires_grad=True)
    codes = straight_through_sign(hidden)
    assert codes.tolist() == [[-1.0, 1.0, 1.0, 1.0, 1.0]]  # never 0
    upstream = torch.tensor([[0.3, -2.0, 1.0, 4.0, -0.5]])
    (codes * upstream).sum().backward()
    assert torch.equal(hidden.grad, upstream)  # identity backward


def test_cubic_penalty_matches_its_formula():
    hidden = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    expected = np.mean(np.abs((np.abs(hidden.numpy()) - 1) ** 3))
    assert float(cubic_penalty(hidden)) == pytest.approx(expected)


@pytest.mark.parametrize("count", [6, 7, 2, 3])
def test_bihalf_gives_each_bit_half_of_the_batch(count):
    values = torch.randn(count, 5, generator=torch.Generator().manual_seed(count))
    codes = half_split(values)
    assert torch.equal((codes == 1).sum(dim=0), torch.full((5,), count // 2))
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    for bit in range(5):  # the +1s go to the largest values of that bit
        column = values[:, bit]
        assert column[codes[:, bit] == 1].min() > column[codes[:, bit] == -1].max()


def test_bihalf_ties_go_to_the_lower_row():
    values = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    assert half_split(values)[:, 0].tolist() == [1.0, 1.0, -1.0, -1.0]


def test_bihalf_backward_adds_gamma_times_the_quantisation_error():
    values = torch.tensor([[0.3, -0.2], [0.9, 0.4], [-0.5, 0.1]], requires_grad=True)
    codes = bihalf_layer(values, 6.0)
    upstream = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]])
    (codes * upstream).sum().backward()
    expected = upstream + 6.0 * (values.detach() - codes.detach()) / codes.numel()
    assert torch.allclose(values.grad, expected)


def test_cosine_similarity_loss_pairs_the_two_halves_and_drops_the_odd_item():
    rng = np.random.default_rng(0)
    codes = torch.tensor(np.sign(rng.standard_normal((7, 4))))
    features = torch.tensor(rng.random((7, 6)))

    def cosine(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    c, f = codes.numpy(), features.numpy()
    expected = np.mean([(cosine(c[i], c[i + 3]) - cosine(f[i], f[i + 3])) ** 2 for i in range(3)])
    assert float(cosine_similarity_loss(codes, features)) == pytest.approx(expected)


def _split(count: int = 80, dim: int = 12) -> DataSplit:
    rng = np.random.default_rng(1)
    labels = np.zeros((count, 4), dtype=bool)
    labels[np.arange(count), np.arange(count) % 4] = True
    centres = rng.random((4, dim))
    features = (centres[np.arange(count) % 4] + 0.5 * rng.random((count, dim))).astype(np.float32)
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, features=features))


def test_paper_profiles_hold_the_released_settings():
    split = _split()
    greedy = GreedyHash(32, GreedyHashParams(profile="paper")).resolve_settings(split)
    assert (greedy.optimizer, greedy.lr, greedy.momentum, greedy.weight_decay) == ("sgd", 1e-4, 0.9, 5e-4)
    assert (greedy.batch_size, greedy.epochs, greedy.eval_every, greedy.feature_dropout) == (32, 60, 5, 0.5)
    assert GreedyHash(16, GreedyHashParams(profile="paper")).resolve_settings(split).epochs == 300
    bihalf = BiHalf(32, BiHalfParams(profile="paper")).resolve_settings(split)
    assert (bihalf.epochs, bihalf.lr_step, bihalf.eval_every, bihalf.centre) == (300, 120, 10, False)
    tiny = BiHalf(32, BiHalfParams(lr=0.01)).resolve_settings(split)  # own vectors → tiny
    assert tiny.profile == "tiny" and tiny.centre and tiny.lr == 0.01


@pytest.mark.parametrize(("cls", "params"), [(GreedyHash, GreedyHashParams), (BiHalf, BiHalfParams)])
def test_fit_improves_on_the_random_layer_and_records(cls, params):
    from hashbench.metrics import mean_average_precision

    split = _split()
    context = RunContext(seed=0)
    method = cls(16, params(epochs=30, batch_size=20), context)
    method.fit(split)
    codes = method.encode(split)
    assert codes.shape == (80, 16) and codes.dtype == bool
    trained = mean_average_precision(codes, codes, split.labels, split.labels, bits=16)
    torch.manual_seed(0)
    features = torch.from_numpy(split.features - split.features.mean(axis=0))
    untrained = (torch.nn.Linear(12, 16)(features) >= 0).numpy()
    before = mean_average_precision(untrained, untrained, split.labels, split.labels, bits=16)
    assert before < 0.7 and trained > 0.8
    assert context.record["settings"]["epochs"] == 30 and len(context.record["curve"]) == 30


def test_bad_options_are_refused_with_the_parameter_named():
    with pytest.raises(UserError, match="feature_dropout"):
        resolve_params(GreedyHashParams, {"feature_dropout": "1.5"}, owner="greedyhash")
    with pytest.raises(UserError, match="gamma"):
        resolve_params(BiHalfParams, {"gamma": "-1"}, owner="bihalf")


def test_a_feature_method_follows_what_the_dataset_declares_before_the_feature_source(monkeypatch):
    from hashbench import registry

    class Declares:
        image_profile = "natural"

    split = _split()
    assert BiHalf(32).resolve_settings(split).profile == "tiny"  # its own vectors
    split._arrays.dataset = "photos"
    monkeypatch.setattr(registry, "get_dataset", lambda name: Declares)
    assert BiHalf(32).resolve_settings(split).profile == "paper"
    assert BiHalf(32, BiHalfParams(profile="tiny")).resolve_settings(split).profile == "tiny"  # asked wins
