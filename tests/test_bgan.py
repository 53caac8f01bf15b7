"""BGAN: the neighbour structure S against a brute-force transcription, the networks' shapes,
the losses, and the signs of the adversarial terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.method import RunContext
from hashbench.methods._bgan_model import (
    Discriminator,
    Encoder,
    Generator,
    bgan_losses,
    discriminator_loss,
    generator_adversarial_loss,
    pair_loss,
    upsampling_plan,
)
from hashbench.methods._bgan_neighbours import knn_lists, neighbour_structure, similarity_block
from hashbench.methods.bgan import BGAN, RELEASED_BUDGET, BGANParams


def _brute_force_s(features: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """The released create_S.py, with exact distances and ties going to the lower index."""
    n = len(features)
    distances = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    ranking = [sorted(range(n), key=lambda j, i=i: (j != i, distances[i, j], j)) for i in range(n)]
    s = -np.ones((n, n))
    for i in range(n):
        top = set(ranking[i][: k1 + 1])
        overlaps = [len(set(ranking[j][: k1 + 1]) & top) for j in range(n)]
        chosen = sorted(range(n), key=lambda j: (-overlaps[j], j))[:k2]
        union = set()
        for j in chosen:
            union |= set(ranking[j][: k1 + 1])
        for j in union:
            s[i][j] = 1.0
            s[j][i] = 1.0
    return s


def test_neighbour_structure_matches_the_brute_force_construction():
    rng = np.random.default_rng(7)
    # Three loose clusters, so overlaps vary and many overlap counts tie.
    features = np.concatenate([rng.normal(centre, 1.0, size=(14, 4)) for centre in (0.0, 3.0, 6.0)])
    distances = np.sort(((features[:, None] - features[None]) ** 2).sum(-1), axis=1)
    assert np.diff(distances[:, 1:], axis=1).min() > 1e-4  # no near-ties in the kNN ranking
    positive = neighbour_structure(features, k1=4, k2=6)
    expected = _brute_force_s(features, 4, 6)
    dense = np.where(positive.toarray(), 1.0, -1.0)
    assert np.array_equal(dense, expected)
    assert np.array_equal(dense, dense.T) and np.all(np.diag(dense) == 1)
    assert 0 < (dense == 1).mean() < 0.9


def test_knn_lists_put_the_point_first_and_break_ties_by_index():
    features = np.array([[0.0], [1.0], [-1.0], [2.0], [0.0]])  # item 4 duplicates item 0
    lists = knn_lists(features, 3)
    assert lists[0].tolist() == [0, 4, 1]  # itself, its duplicate, then 1 before 2 (same distance)
    assert lists[4].tolist() == [4, 0, 1]


def test_similarity_block_is_plus_minus_one():
    features = np.array([[0.0], [0.1], [5.0], [5.1]])
    positive = neighbour_structure(features, k1=1, k2=1)
    block = similarity_block(positive, np.array([2, 0, 1]))
    assert block.tolist() == [[1, -1, -1], [-1, 1, 1], [-1, 1, 1]]


def test_pair_loss_matches_its_formula():
    mean = torch.tensor([[0.5, -0.2], [0.9, 0.1], [-0.3, -0.8]])
    similarity = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    m = mean.numpy()
    expected = ((m @ m.T - similarity.numpy()) ** 2).mean() + ((m - np.sign(m)) ** 2).mean()
    assert float(pair_loss(mean, similarity)) == pytest.approx(expected, rel=1e-6)
    scaled = ((m @ m.T / 2 - similarity.numpy()) ** 2).mean() + ((m - np.sign(m)) ** 2).mean()
    assert float(pair_loss(mean, similarity, "bits")) == pytest.approx(scaled, rel=1e-6)


@pytest.mark.parametrize(
    ("chw", "steps", "start"),
    [((3, 64, 64), 3, (8, 8)), ((1, 8, 8), 2, (2, 2)), ((1, 28, 28), 2, (7, 7)), ((3, 32, 32), 3, (4, 4))],
)
def test_generator_and_discriminator_shapes(chw, steps, start):
    assert upsampling_plan(chw[1], chw[2]) == steps
    generator = Generator(12, chw, width=0.125)
    assert generator.start == start
    images = generator(torch.randn(4, 12))
    assert images.shape == (4, *chw) and images.min() >= 0 and images.max() <= 1
    probability, features = Discriminator(chw, width=0.125)(images)
    assert probability.shape == (4, 1) and features.shape == (4, 128)


# The released layers, each with or without batch norm (github.com/htconquer/BGAN). BGAN.py
# lines 101-105 open pt.defaults_scope(activation_fn=elu, batch_normalize=True, ...); the
# generator (lines 73-81) is fully_connected(8*8*256), three deconv2d(5, ...) and
# deconv2d(1, 3, activation_fn=sigmoid); the discriminator (lines 84-96) four conv2d(5, ...),
# fully_connected(1024, elu) (the feature-matching layer) and fully_connected(1, sigmoid).
# Which layers take the scope's batch_normalize: deconv.py lines 25-41 register deconv2d
# with batch_normalize among its defaults; prettytensor's conv2d
# (pretty_tensor_image_methods.py lines 132-148) too; its fully_connected
# (pretty_tensor_methods.py lines 293-307) has no batch_normalize argument at all.
RELEASED_GENERATOR = [
    ("Linear", False, "ELU"),
    ("ConvTranspose2d", True, "ELU"),
    ("ConvTranspose2d", True, "ELU"),
    ("ConvTranspose2d", True, "ELU"),
    ("ConvTranspose2d", True, "Sigmoid"),
]
RELEASED_DISCRIMINATOR = [
    ("Conv2d", True, "ELU"),
    ("Conv2d", True, "ELU"),
    ("Conv2d", True, "ELU"),
    ("Conv2d", True, "ELU"),
    ("Linear", False, "ELU"),
    ("Linear", False, None),  # its sigmoid is applied in forward, in float32
]


def _layers(network: torch.nn.Module) -> list[tuple[str, bool, str | None]]:
    """(layer, batch norm after it, activation after that) for each weight layer, in order."""
    modules = [module for module in network.modules() if not list(module.children())]
    found = []
    for index, module in enumerate(modules):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            following = modules[index + 1 : index + 3]
            normalised = bool(following) and isinstance(following[0], torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)
            rest = following[1:] if normalised else following[:1]
            activation = type(rest[0]).__name__ if rest and isinstance(rest[0], torch.nn.ELU | torch.nn.Sigmoid) else None
            found.append((type(module).__name__, normalised, activation))
    return found


def test_batch_norm_sits_where_the_released_layers_have_it():
    assert _layers(Generator(16, (3, 64, 64))) == RELEASED_GENERATOR
    assert _layers(Discriminator((3, 64, 64))) == RELEASED_DISCRIMINATOR
    assert _layers(Generator(8, (1, 8, 8), width=0.25)) == RELEASED_GENERATOR  # tiny too
    batch_norms = [m for m in Generator(16, (3, 64, 64)).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(norm.eps == pytest.approx(1e-3) for norm in batch_norms)  # variance_epsilon=0.001


# BGAN.py: 10,000 training images (line 244), batch_size = 40 (line 163), total_batch =
# floor(10,000 / 40) = 250 (line 254; data_iterator drops a short batch, lines 66-69),
# num_epochs = 51 (line 259). evaluate.py line 33 reads the codes of epoch 20.
RELEASED_STEPS = 250 * 51  # 12,750


def test_paper_budget_keeps_the_released_steps_on_any_training_set():
    assert RELEASED_BUDGET.steps == RELEASED_STEPS
    for count, epochs in ((10_000, 51), (5_000, 102)):
        split = _natural_split(count, side=8)
        settings = BGAN(32, BGANParams(profile="paper", backbone="small")).resolve_settings(split)
        assert (settings.epochs, settings.released_steps) == (epochs, RELEASED_STEPS)
        assert settings.steps == epochs * (count // 40)
    assert BGAN(32, BGANParams(profile="paper", backbone="small", epochs=3)).resolve_settings(_natural_split(400, side=8)).steps == 30
    tiny = BGAN(32).resolve_settings(_natural_split(400, side=8))
    assert (tiny.profile, tiny.epochs, tiny.released_steps) == ("tiny", 20, None)


def test_adam_epsilon_is_the_released_one_except_for_the_tiny_encoder():
    split = _natural_split(40, side=8)
    tiny = BGAN(8).resolve_settings(split)
    assert (tiny.adam_eps, tiny.adam_eps_gan) == (1e-8, 1.0)
    paper = BGAN(8, BGANParams(profile="paper", backbone="small")).resolve_settings(split)
    assert (paper.adam_eps, paper.adam_eps_gan) == (1.0, 1.0)  # BGAN.py lines 175-177
    asked = BGAN(8, BGANParams(adam_eps=0.5)).resolve_settings(split)
    assert (asked.adam_eps, asked.adam_eps_gan) == (0.5, 0.5)


def _tiny_networks(bits: int = 8, chw=(1, 8, 8)):
    from hashbench.toolkit.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("small", image_shape=(chw[1], chw[2], chw[0]))
    return Encoder(backbone, bits, True), Generator(bits, chw, 0.25), Discriminator(chw, 0.25)


def test_losses_compose_as_released():
    encoder, generator, discriminator = _tiny_networks()
    images = torch.rand(10, 1, 8, 8)
    similarity = torch.from_numpy(np.where(np.eye(10) > 0, 1.0, -1.0).astype(np.float32))
    torch.manual_seed(1)
    terms = bgan_losses(encoder, generator, discriminator, images * 2 - 1, images, similarity, pair_weight=10.0, kl_weight=0.5)
    assert torch.allclose(terms["encoder"], terms["feature_matching"] + 10 * terms["pair"] + 0.5 * terms["kl"])
    assert torch.allclose(terms["generator"], terms["feature_matching"] + terms["generator_adversarial"])
    assert terms["feature_matching"] > 0 and terms["discriminator"] > 0


def test_discriminator_loss_falls_when_it_trains_alone_on_fixed_fakes():
    _, generator, discriminator = _tiny_networks()
    real = torch.rand(20, 1, 8, 8)
    with torch.no_grad():
        fake = generator(torch.randn(20, 8))  # fixed fakes: the generator does not train

    def loss() -> torch.Tensor:
        return discriminator_loss(discriminator(real)[0], discriminator(fake)[0])

    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    before = float(loss().detach())
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert float(loss().detach()) < before - 0.1


def test_generator_adversarial_term_raises_a_fixed_discriminators_score_of_fakes():
    _, generator, discriminator = _tiny_networks()
    z = torch.randn(20, 8)
    for parameter in discriminator.parameters():
        parameter.requires_grad_(False)  # a fixed discriminator

    def score() -> torch.Tensor:
        return discriminator(generator(z))[0]

    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    before = float(score().mean().detach())
    for _ in range(15):
        optimizer.zero_grad()
        generator_adversarial_loss(score()).backward()
        optimizer.step()
    assert float(score().mean().detach()) > before + 0.05


def test_codes_are_the_sign_of_the_tanh_mean():
    encoder, _, _ = _tiny_networks(bits=6)
    mean, log_var = encoder(torch.rand(5, 1, 8, 8))
    assert mean.shape == log_var.shape == (5, 6)
    assert mean.abs().max() < 1  # tanh


def _natural_split(count: int = 24, side: int = 32) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 2), dtype=bool)
    labels[np.arange(count), np.arange(count) % 2] = True
    images = rng.integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    features = images.reshape(count, -1).astype(np.float32) / 255
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, images=images, features=features))


def test_paper_profile_reconstructs_resized_images_and_records_its_choices():
    split = _natural_split()
    context = RunContext(seed=0)
    # The paper's pipeline with the small backbone standing in for VGG-16 (no weights offline).
    params = BGANParams(profile="paper", backbone="small", epochs=1, batch_size=12, image_size=16, width=0.125, k1=3, k2=2)
    method = BGAN(8, params, context)
    method.fit(split)
    codes = method.encode(split)
    assert codes.shape == (24, 8) and codes.dtype == bool
    record = context.record
    assert record["reconstruction_shape"] == [3, 16, 16]
    assert record["settings"]["profile"] == "paper" and record["backbone"]["trained"]
    assert record["neighbour_structure"]["k1"] == 3 and "dataset's own" in record["neighbour_structure"]["features"]["source"]
    assert record["losses"] == {"pair_weight": 10.0, "pair_scale": "none", "kl_weight": 0.0}
    assert record["settings"]["released_steps"] == RELEASED_STEPS and "epoch 20" in record["released_budget"]
    deviations = record["deviations"]
    assert any("10,000 CIFAR-10" in text for text in deviations) and any("ResNet" in text for text in deviations)
