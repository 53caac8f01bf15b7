"""GreedyHash and Bi-half: their hash layers' forward and backward passes, the loss, profiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods import bihalf as bihalf_module
from hashbench.methods import greedyhash as greedy_module
from hashbench.methods._similarity_model import (
    bihalf_layer,
    cosine_similarity_loss,
    cubic_penalty,
    half_split,
    live_network,
)
from hashbench.methods.bihalf import BiHalf, BiHalfParams
from hashbench.methods.greedyhash import GreedyHash, GreedyHashParams
from hashbench.params import resolve_params
from hashbench.toolkit.backbone_features import BackboneFeatures
from hashbench.toolkit.layers import straight_through_sign


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


def _split(count: int = 80, dim: int = 12, features=None) -> DataSplit:
    rng = np.random.default_rng(1)
    labels = np.zeros((count, 4), dtype=bool)
    labels[np.arange(count), np.arange(count) % 4] = True
    centres = rng.random((4, dim))
    if features is None:
        features = (centres[np.arange(count) % 4] + 0.5 * rng.random((count, dim))).astype(np.float32)
    return DataSplit("train", np.arange(count), DatasetArrays(labels=labels, features=features))


# The released budgets. Both train on 50,000 CIFAR-10 images in batches of 32, the last,
# smaller batch kept: ceil(50,000 / 32) = 1,563 steps per epoch.
# GreedyHash, unsupervised_vgg.py: num_epochs = 60 (line 15), 300 at 16 bits (lines 21-22),
# batch_size = 32 (line 16), the training set of 50,000 (lines 38-41), scored every 5 epochs
# (line 152).
GREEDY_STEPS = 60 * 1_563  # 93,780
GREEDY_STEPS_16 = 300 * 1_563  # 468,900
GREEDY_VALIDATION_STEPS = 5 * 1_563
# Bi-half, ImageHashing/Cifar10_I.py: num_epochs = 300 (line 14), batch_size = 32 (line 15),
# epoch_lr_decrease = 120 (line 16), 5,000 training images per class (lines 134-150), scored
# every 10 epochs (line 205).
BIHALF_STEPS = 300 * 1_563  # 468,900
BIHALF_LR_STEP = 120 * 1_563  # 187,560
BIHALF_VALIDATION_STEPS = 10 * 1_563


def test_released_budgets_in_optimiser_steps():
    assert (greedy_module.RELEASED_BUDGET.steps, greedy_module.RELEASED_BUDGET.validate_steps) == (
        GREEDY_STEPS, GREEDY_VALIDATION_STEPS,
    )  # fmt: skip
    assert greedy_module.RELEASED_BUDGET_16.steps == GREEDY_STEPS_16
    assert (bihalf_module.RELEASED_BUDGET.steps, bihalf_module.RELEASED_BUDGET.validate_steps) == (
        BIHALF_STEPS, BIHALF_VALIDATION_STEPS,
    )  # fmt: skip
    assert bihalf_module.RELEASED_LR_STEP == BIHALF_LR_STEP


def test_paper_profiles_hold_the_released_settings():
    split = _split(50_000)  # the released training-set size: the released epochs
    greedy = GreedyHash(32, GreedyHashParams(profile="paper")).resolve_settings(split)
    assert (greedy.optimizer, greedy.lr, greedy.momentum, greedy.weight_decay) == ("sgd", 1e-4, 0.9, 5e-4)
    assert (greedy.batch_size, greedy.epochs, greedy.eval_every, greedy.feature_dropout) == (32, 60, 5, 0.5)
    assert (greedy.steps, greedy.released_steps) == (GREEDY_STEPS, GREEDY_STEPS)
    assert GreedyHash(16, GreedyHashParams(profile="paper")).resolve_settings(split).epochs == 300
    bihalf = BiHalf(32, BiHalfParams(profile="paper")).resolve_settings(split)
    assert (bihalf.epochs, bihalf.lr_step, bihalf.eval_every, bihalf.centre) == (300, 120, 10, False)
    assert (bihalf.steps, bihalf.released_steps) == (BIHALF_STEPS, BIHALF_STEPS)
    tiny = BiHalf(32, BiHalfParams(lr=0.01)).resolve_settings(_split())  # own vectors → tiny
    assert tiny.profile == "tiny" and tiny.centre and tiny.lr == 0.01 and tiny.released_steps is None
    assert not tiny.live_fc7 and not greedy.live_fc7  # no VGG-16 features here


def test_a_tenth_of_the_images_gets_ten_times_the_epochs():
    split = _split(5_000)  # 157 steps per epoch instead of 1,563
    greedy = GreedyHash(32, GreedyHashParams(profile="paper")).resolve_settings(split)
    assert (greedy.epochs, greedy.eval_every) == (598, 50)  # ceil(93,780 / 157); 7,815 / 157
    assert GREEDY_STEPS <= greedy.steps < GREEDY_STEPS + 157
    bihalf = BiHalf(32, BiHalfParams(profile="paper")).resolve_settings(split)
    assert (bihalf.epochs, bihalf.lr_step, bihalf.eval_every) == (2_987, 1_195, 100)
    asked = GreedyHash(32, GreedyHashParams(profile="paper", epochs=7, batch_size=50)).resolve_settings(split)
    assert (asked.epochs, asked.steps, asked.released_steps) == (7, 700, GREEDY_STEPS)


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


def test_a_feature_method_follows_what_the_dataset_declares_before_the_feature_source():
    split = _split()
    assert BiHalf(32).resolve_settings(split).profile == "tiny"  # its own vectors
    split._arrays.image_profile = "natural"  # what loading sets from the dataset's class
    assert BiHalf(32).resolve_settings(split).profile == "paper"
    assert BiHalf(32, BiHalfParams(profile="tiny")).resolve_settings(split).profile == "tiny"  # asked wins


# --------------------------------------------------------------------------------------------
# fc7 run live on cached fc6 features (paper profile on VGG-16 features)


class FakeVGGFeatures(BackboneFeatures):
    """The VGG-16 feature cache's interface on small vectors: fc6 = ReLU(x A), fc7 = ReLU(fc7(fc6))."""

    def __init__(self, inputs: np.ndarray, layer: str = "fc7", parts=None) -> None:
        self.inputs, self.layer, self.backbone, self.weights_key = inputs, layer, "vgg16", "fake"
        if parts is None:
            generator = torch.Generator().manual_seed(5)
            fc7 = torch.nn.Linear(10, 10)
            with torch.no_grad():
                fc7.weight.copy_(torch.randn(10, 10, generator=generator) / 3)
                fc7.bias.copy_(torch.randn(10, generator=generator) / 3)
            parts = (torch.randn(inputs.shape[1], 10, generator=generator), fc7)
        self.parts = parts

    def __call__(self, indices):
        projection, fc7 = self.parts
        fc6 = torch.relu(torch.from_numpy(self.inputs[indices]) @ projection)
        with torch.no_grad():
            return (fc6 if self.layer == "fc6" else torch.relu(fc7(fc6))).numpy()

    def at_layer(self, layer):
        return FakeVGGFeatures(self.inputs, layer, self.parts)

    def fc7_layer(self):
        layer = torch.nn.Linear(10, 10)
        layer.load_state_dict(self.parts[1].state_dict())
        return layer.requires_grad_(False)

    @property
    def dimension(self):
        return 10


def _vgg_split(count: int = 80) -> DataSplit:
    inputs = _split(count).features
    return _split(count, features=FakeVGGFeatures(inputs))


def test_the_live_part_is_vgg16s_classifier_after_fc6():
    from torchvision.models import vgg16

    with torch.device("meta"):  # the layer list only, no weights
        classifier = vgg16(weights=None).classifier
    kinds = [type(layer).__name__ for layer in classifier]
    # torchvision's classifier: fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8. The cache keeps
    # the first two (fc6 after its ReLU); the rest up to fc7's Dropout runs live.
    assert kinds[:2] == ["Linear", "ReLU"]
    network = live_network(torch.nn.Linear(4096, 4096), 16, 0.5)
    assert [type(layer).__name__ for layer in network["tail"]] == kinds[2:6] == ["Dropout", "Linear", "ReLU", "Dropout"]
    assert [layer.p for layer in network["tail"] if isinstance(layer, torch.nn.Dropout)] == [0.5, 0.5]
    assert not any(parameter.requires_grad for parameter in network["tail"].parameters())  # fc7 frozen
    assert (network["head"].in_features, network["head"].out_features) == (4096, 16)


@pytest.mark.parametrize(("cls", "params"), [(GreedyHash, GreedyHashParams), (BiHalf, BiHalfParams)])
def test_paper_profile_runs_fc7_live_with_both_dropouts_on_input_and_target(cls, params, monkeypatch):
    import hashbench.methods._similarity_model as similarity

    split = _vgg_split()
    seen = []
    real_loss = similarity.cosine_similarity_loss

    def recording_loss(codes, features):
        seen.append(features.detach().clone())
        return real_loss(codes, features)

    monkeypatch.setattr(similarity, "cosine_similarity_loss", recording_loss)
    head_inputs = []
    real_network = similarity.live_network

    def hooked_network(*args):
        network = real_network(*args)
        network["head"].register_forward_hook(lambda module, inputs, output: head_inputs.append(inputs[0].detach().clone()))
        return network

    monkeypatch.setattr(similarity, "live_network", hooked_network)
    context = RunContext(seed=0)
    method = cls(8, params(profile="paper", epochs=2, batch_size=20, optimizer="adam", lr=1e-2), context)
    fc7_before = split.feature_source.fc7_layer().weight.clone()
    method.fit(split)
    assert method.settings.live_fc7 and method.settings.feature_dropout == 0.5
    # The similarity target is exactly what the hash layer read: x after both dropouts.
    assert len(seen) == len(head_inputs) == 8 and all(map(torch.equal, seen, head_inputs))
    clean = torch.from_numpy(split.feature_source(np.arange(80)))
    targets = torch.cat(seen)
    assert (targets == 0).float().mean() > (clean == 0).float().mean() + 0.15  # the last dropout zeroes more

    def fc7_rescaled(row):  # what the last dropout alone would leave: 2·fc7 of some item, or 0
        kept = row != 0
        return any(torch.allclose(row[kept], 2 * other[kept]) for other in clean)

    assert sum(fc7_rescaled(row) for row in targets) < 0.2 * len(targets)  # the first dropout acted too
    assert torch.equal(method.model["tail"][1].weight, fc7_before)  # fc7 frozen
    # At test time, no dropout: the codes are the hash layer on fc7.
    codes = method.encode(split)
    with torch.no_grad():
        expected = (method.model["head"](clean) >= 0).numpy()
    assert np.array_equal(codes, expected)
    described = context.record["features"]
    assert "fc6" in described["source"] and described["dimension"] == 10 and "fc7" in described["then"]
    assert context.record["settings"]["live_fc7"] is True
    assert any("80 training items" in text for text in context.record["deviations"])


def test_feature_dropout_zero_reads_the_cached_fc7_features():
    split = _vgg_split()
    method = GreedyHash(8, GreedyHashParams(profile="paper", epochs=1, feature_dropout=0.0), RunContext(seed=0))
    method.fit(split)
    assert not method.settings.live_fc7 and "tail" not in method.model
    assert "fc7" in method.context.record["features"]["source"]


# Bi-half, ImageHashing/Mscoco.py: num_epochs = 150, batch_size = 32, epoch_lr_decrease = 60,
# learning_rate = 0.001 (lines 16-19), the 10,000 images of data/Mscoco/train_coco.txt,
# mAP@5000 printed every 10 epochs (lines 239-244): ceil(10,000 / 32) = 313 steps per epoch.
COCO_STEPS = 150 * 313  # 46,950
COCO_LR_STEP = 60 * 313  # 18,780


def test_bihalf_on_coco_follows_its_released_mscoco_script():
    coco = _split(10_000)
    coco._arrays.dataset = "coco"
    method = BiHalf(32, BiHalfParams(profile="paper"))
    settings = method.resolve_settings(coco)
    assert (settings.lr, settings.epochs, settings.lr_step, settings.eval_every) == (1e-3, 150, 60, 10)
    assert (settings.steps, settings.released_steps) == (COCO_STEPS, COCO_STEPS)
    assert bihalf_module.COCO_SCRIPT.lr_step == COCO_LR_STEP
    method.settings = settings
    deviations = method.deviations(coco)
    assert any("random 224 crop of the live image" in text for text in deviations)
    assert not any("trains on the protocol's" in text for text in deviations)  # the released 10,000 images
    # asked settings still win; other datasets keep the CIFAR-10 script
    assert BiHalf(32, BiHalfParams(profile="paper", lr=0.05)).resolve_settings(coco).lr == 0.05
    cifar = _split(10_000)
    cifar._arrays.dataset = "cifar10"
    other = BiHalf(32, BiHalfParams(profile="paper")).resolve_settings(cifar)
    assert (other.lr, other.released_steps) == (1e-4, BIHALF_STEPS)
    # GreedyHash has no MS-COCO script: the CIFAR-10 one everywhere
    assert GreedyHash(32, GreedyHashParams(profile="paper")).resolve_settings(coco).released_steps == GREEDY_STEPS
