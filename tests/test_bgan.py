"""BGAN: the neighbour structure S against a brute-force transcription, the networks' shapes,
the losses, and the signs of the adversarial terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.method import RunContext
from hashbench.methods.bgan import (
    BGAN,
    BGANParams,
    Discriminator,
    Encoder,
    Generator,
    bgan_losses,
    discriminator_loss,
    generator_adversarial_loss,
    knn_lists,
    neighbour_structure,
    pair_loss,
    similarity_block,
    upsampling_plan,
)


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


def _tiny_networks(bits: int = 8, chw=(1, 8, 8)):
    from hashbench.backbones import build_backbone

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


def _natural_split(count: int = 24) -> DataSplit:
    rng = np.random.default_rng(0)
    labels = np.zeros((count, 2), dtype=bool)
    labels[np.arange(count), np.arange(count) % 2] = True
    images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
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
