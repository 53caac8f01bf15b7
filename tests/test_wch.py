"""WCH: its released pieces against transcriptions of the released code, its profiles and
budget, and real training (digits; the paper path on the CPU with a random ViT-B/16 file).

The transcriptions below follow github.com/RosieYuu/WCH (commit d93c756):
``TransformerModel/modeling.py`` (``VisionTransformer.cross_attention``, ``weighted``,
``hash_head``, ``train_forward``) and ``train.py`` (``CL``, ``get_config``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from digits_runs import run_map
from torch import nn

from hashbench.conformance import assert_conforms
from hashbench.data import DatasetArrays, DataSplit
from hashbench.errors import UserError
from hashbench.method import RunContext
from hashbench.methods._wch_model import (
    HEAD_HIDDEN,
    ViTPatchTokens,
    WCHHead,
    mutual_attention,
    pair_weights,
    train_forward,
    wch_loss,
)
from hashbench.methods.wch import RELEASED_BUDGET, WCH, WCHParams
from hashbench.params import resolve_params


def test_conforms():
    assert_conforms(WCH)


# --------------------------------------------------------------------------------------------
# transcriptions of the released code


def released_cross_attention(x1, x2, T=1):
    sim = torch.einsum("nid,njd->nij", F.normalize(x1, dim=-1), F.normalize(x2, dim=-1))
    sim1 = torch.softmax(sim.permute(0, 2, 1) / T, dim=-1)
    sim2 = torch.softmax(sim / T, dim=-1)
    x1 = torch.einsum("nid,ndj->nij", sim1, x1)
    x2 = torch.einsum("nid,ndj->nij", sim2, x2)
    return x1, x2


def released_weighted(x1, x2, T=0.2):
    sim = torch.einsum("nid,mjd->nmij", F.normalize(x1, dim=-1), F.normalize(x2, dim=-1))
    sim = sim.max(-1)[0].mean(-1)
    sim = torch.softmax(sim / T, dim=-1)
    scale = torch.eye(sim.size(0), dtype=sim.dtype)
    scale = torch.einsum("ni,ni->n", scale, sim)
    return sim / scale


def released_hash_head(fc, b, x):
    x = F.relu(fc(x))
    x = torch.tanh(b(x))
    h = x.sign()
    return x + torch.detach(h - x)


def released_cl(h1, h2, weighted, bit):
    logits = torch.einsum("ik,jk->ij", h1, h2) / bit / 0.3
    balance_logits = h1.sum(0) / h1.size(0)
    mse = nn.MSELoss()
    reg = mse(balance_logits, torch.zeros_like(balance_logits)) - mse(h1, torch.zeros_like(h1))
    return nn.CrossEntropyLoss()(logits, weighted) + reg


# A hand-made batch: 2 images, 3 tokens of 2 dimensions per view.
HAND_1 = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[2.0, -1.0], [0.5, 0.5], [-1.0, 0.0]]], dtype=torch.float64)
HAND_2 = torch.tensor([[[0.0, 2.0], [1.0, 0.2], [-0.5, 1.0]], [[1.0, -1.0], [3.0, 0.0], [0.0, -2.0]]], dtype=torch.float64)


def random_tokens(seed: int, count: int = 4, tokens: int = 5, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(count, tokens, dim, generator=generator, dtype=torch.float64) for _ in range(2))


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mutual_attention_is_the_released_cross_attention(temperature):
    for x1, x2 in ((HAND_1, HAND_2), random_tokens(0)):
        ours, released = mutual_attention(x1, x2, temperature), released_cross_attention(x1, x2, temperature)
        for got, want in zip(ours, released, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # By hand, image 0's first new view-1 token: view 1's tokens weighted by a softmax over
    # their cosines with view 2's first token (0, 2): cosines 0, 1, 1/√2.
    cosines = torch.tensor([0.0, 1.0, 2**-0.5], dtype=torch.float64)
    expected = torch.softmax(cosines / temperature, dim=0) @ HAND_1[0]
    torch.testing.assert_close(mutual_attention(HAND_1, HAND_2, temperature)[0][0, 0], expected)


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_pair_weights_are_the_released_weighted_similarities(temperature):
    for x1, x2 in ((HAND_1, HAND_2), random_tokens(1)):
        torch.testing.assert_close(pair_weights(x1, x2, temperature), released_weighted(x1, x2, temperature), rtol=1e-12, atol=1e-12)
    weights = pair_weights(*random_tokens(2), temperature)
    torch.testing.assert_close(weights.diagonal(), torch.ones(4, dtype=torch.float64))  # the positives weigh 1
    # The released broadcast: column m divided by p[m, m] (not row n by p[n, n]).
    x1, x2 = random_tokens(3)
    a, b = F.normalize(x1, dim=-1), F.normalize(x2, dim=-1)
    scores = torch.stack([torch.stack([(a[n] @ b[m].T).max(dim=1).values.mean() for m in range(4)]) for n in range(4)])
    p = torch.softmax(scores / temperature, dim=1)
    torch.testing.assert_close(pair_weights(x1, x2, temperature), p / p.diagonal()[None, :])


def test_the_loss_is_the_released_cl_with_the_same_gradients():
    generator = torch.Generator().manual_seed(4)
    bits = 8
    h1 = torch.randn(4, bits, generator=generator, dtype=torch.float64).sign().requires_grad_(True)
    h2 = torch.randn(4, bits, generator=generator, dtype=torch.float64).sign().requires_grad_(True)
    x1, x2 = (tokens.requires_grad_(True) for tokens in random_tokens(5))
    terms = wch_loss(h1, h2, pair_weights(x1, x2), bits, tau=0.3)
    terms["loss"].backward()
    ours = [tensor.grad.clone() for tensor in (h1, h2, x1, x2)]
    for tensor in (h1, h2, x1, x2):
        tensor.grad = None
    released = released_cl(h1, h2, released_weighted(x1, x2), bits)
    released.backward()
    assert terms["loss"].item() == pytest.approx(released.item(), rel=1e-12)
    for got, tensor in zip(ours, (h1, h2, x1, x2), strict=True):
        torch.testing.assert_close(got, tensor.grad, rtol=1e-10, atol=1e-12)
    assert ours[2].abs().sum() > 0  # the weights are not detached: the tokens get a gradient
    # ±1 codes: the quantisation term is exactly 1; the balance term is the squared bit means.
    assert terms["quantisation"].item() == 1.0
    assert terms["balance"].item() == pytest.approx((h1.detach().mean(0) ** 2).mean().item())


def test_head_layer_sizes_initialisation_and_straight_through_codes():
    head = WCHHead(768, 64)
    assert (head.fc.in_features, head.fc.out_features, head.b.in_features, head.b.out_features) == (768, HEAD_HIDDEN, 1024, 64)
    assert head.fc_norm.normalized_shape == (768,) and head.fc_norm.eps == 1e-6
    # Kaiming uniform with fan-out: |w| ≤ √2 · √(3 / fan_out); biases standard normal (not all tiny).
    assert head.fc.weight.abs().max() <= (2 * 3 / 1024) ** 0.5 and head.b.weight.abs().max() <= (2 * 3 / 64) ** 0.5
    assert head.b.weight.abs().max() > 0.9 * (2 * 3 / 64) ** 0.5 and head.b.bias.std() > 0.5
    pooled = torch.randn(5, 768, requires_grad=True)
    codes = head(pooled)
    reference = pooled.detach().clone().requires_grad_(True)
    released = released_hash_head(head.fc, head.b, head.fc_norm(reference))
    assert torch.equal(codes.detach(), released.detach()) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    upstream = torch.randn(5, 64)
    codes.backward(upstream)
    released.backward(upstream)
    torch.testing.assert_close(pooled.grad, reference.grad)


def test_train_forward_is_the_released_train_forward_after_the_backbone():
    """With the backbone's tokens given, the codes and weights of released ``train_forward``."""
    torch.manual_seed(0)
    x1, x2 = (tokens.float() for tokens in random_tokens(6, dim=16))
    model = nn.ModuleDict({"backbone": nn.Identity(), "head": WCHHead(16, 8)})
    h1, h2, weights = train_forward(model, x1, x2, torch.device("cpu"), attention_tau=1.0, weight_tau=0.2)
    a1, a2 = released_cross_attention(x1, x2)
    head = model["head"]
    torch.testing.assert_close(weights, released_weighted(a1, a2))
    assert torch.equal(h1, released_hash_head(head.fc, head.b, head.fc_norm(a1.mean(dim=1))))
    assert torch.equal(h2, released_hash_head(head.fc, head.b, head.fc_norm(a2.mean(dim=1))))


def test_vit_patch_tokens_are_the_encoder_output_without_the_class_token():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    network = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    network.heads = nn.Identity()
    network.requires_grad_(False)  # as the shared trunk builds it: frozen
    trunk = SimpleNamespace(network=network, weights_source="test", weights_id="vit-test")
    tokens = ViTPatchTokens(trunk, dropout=0.1)
    assert all(parameter.requires_grad for parameter in tokens.parameters())  # fine-tuned, as released
    # The released ViT-B_16 config: dropout_rate 0.1 after the embeddings and in the MLPs,
    # attention_dropout_rate 0 on the attention probabilities and its output projection.
    assert network.encoder.dropout.p == 0.1
    for block in network.encoder.layers:
        assert block.dropout.p == 0.0 and block.self_attention.dropout == 0.0
        assert [layer.p for layer in block.mlp if isinstance(layer, nn.Dropout)] == [0.1, 0.1]
    captured = {}
    network.encoder.register_forward_hook(lambda module, args, output: captured.update(out=output))
    tokens.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        class_token = network(images)
        full = captured["out"]
        patches = tokens(images)
    assert patches.shape == (3, 4, 16)
    torch.testing.assert_close(patches, full[:, 1:])
    torch.testing.assert_close(class_token, full[:, 0])


# --------------------------------------------------------------------------------------------
# budget, profiles, parameters


def settings_for(params: WCHParams, count: int, shape=(32, 32, 3), bits: int = 64):
    arrays = DatasetArrays(labels=np.ones((count, 1), dtype=bool), images=np.zeros((count, *shape), np.uint8))
    return WCH(bits, params).resolve_settings(DataSplit("train", np.arange(count), arrays))


def test_released_budget_in_optimiser_steps():
    # train.py get_config: batch 32, 50 epochs, test_map every 10 epochs; utils/tools.py
    # cifar_dataset: 500 training images per class; the DataLoader keeps the last, smaller
    # batch: ⌈5,000 / 32⌉ = 157 steps an epoch.
    assert (RELEASED_BUDGET.steps, RELEASED_BUDGET.validate_steps) == (7_850, 1_570)


def test_paper_defaults_and_profiles():
    params = WCHParams()
    assert (params.tau, params.weight_tau, params.attention_tau, params.batch_size, params.dropout) == (0.3, 0.2, 1.0, 32, 0.1)
    assert params.lr_schedule == "cosine" and params.pretrained and params.backbone_weights is None
    paper = settings_for(params, 5_000)
    assert (paper.profile, paper.backbone, paper.lr, paper.epochs, paper.eval_every) == ("paper", "vit_b_16", 1e-5, 50, 10)
    assert (paper.steps, paper.released_steps) == (7_850, 7_850)
    augment = paper.augment  # utils/tools.py train_transform
    assert (augment.size, augment.crop_scale, augment.jitter_p, augment.grayscale_p, augment.blur_p, augment.flip_p) == (224, (0.2, 1.0), 0.8, 0.2, 0.5, 0.5)
    assert (augment.brightness, augment.contrast, augment.saturation, augment.hue, augment.blur_sigma) == (0.4, 0.4, 0.4, 0.1, (0.1, 2.0))
    larger = settings_for(params, 50_000)  # 1,563 steps an epoch: the released steps kept
    assert (larger.epochs, larger.eval_every, larger.released_steps) == (6, 1, 7_850)
    tiny = settings_for(params, 500, (8, 8, 1), bits=16)
    assert (tiny.profile, tiny.backbone, tiny.lr, tiny.epochs, tiny.eval_every, tiny.max_steps) == ("tiny", "small", 1e-3, 100, 20, 2_400)
    assert (tiny.augment.size, tiny.augment.crop_scale, tiny.augment.jitter_p, tiny.augment.flip_p, tiny.augment.blur_p) == (None, (0.5, 1.0), 0.8, 0.0, 0.0)
    with pytest.raises(UserError, match="trains the small backbone from scratch"):
        settings_for(WCHParams(backbone_weights="w.pth"), 10, (8, 8, 1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tau": "0"}, "tau must be positive"),
        ({"weight_tau": "-1"}, "weight_tau must be positive"),
        ({"batch_size": "1"}, "batch_size must be at least 2"),
        ({"dropout": "1"}, "dropout must lie in"),
        ({"lr_schedule": "step"}, "is not one of"),
        ({"epochs": "0"}, "epochs must be at least 1"),
        ({"backbone_weights": "w.pth", "pretrained": "false"}, "contradict each other"),
    ],
)
def test_bad_parameters_are_refused(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        resolve_params(WCHParams, overrides, owner="wch")
    assert "\n" not in str(error.value)


def test_a_tiny_run_records_its_settings_schedule_and_deviations():
    rng = np.random.default_rng(0)
    arrays = DatasetArrays(labels=np.eye(2, dtype=bool)[np.arange(40) % 2], images=rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8))
    train, val = DataSplit("train", np.arange(30), arrays), DataSplit("val", np.arange(30, 40), arrays)
    context = RunContext(seed=0)
    method = WCH(8, WCHParams(epochs=3, eval_every=2, batch_size=10), context)
    method.fit(train, val)
    assert method.encode(val).shape == (10, 8)
    record = context.record
    assert record["backbone"]["tokens"] == "feature-map positions" and record["augment"]["crop_scale"] == [0.5, 1.0]
    assert {"loss", "contrastive", "balance", "quantisation"} <= set(record["curve"][0])
    assert [score["epoch"] for score in record["validation"]["scores"]] == [2, 3]
    assert record["lr_schedule"] == "cosine annealing over 3 epochs, stepped per epoch"  # released: T_max = epochs
    assert any("tiny profile" in text for text in record["deviations"])
    assert any("model selection on the validation split" in text for text in record["deviations"])


# --------------------------------------------------------------------------------------------
# learning on digits (as tests/test_learning.py), and the paper path on the CPU




@pytest.mark.slow
def test_a_short_run_on_digits_beats_its_untrained_start_and_lsh(tmp_path):
    params = {"epochs": 30, "eval_every": 0, "cpu_threads": 1}
    trained = run_map("wch", params, tmp_path / "trained")
    untrained = run_map("wch", {**params, "epochs": 1, "lr": 1e-12}, tmp_path / "untrained")
    lsh = run_map("lsh", {}, tmp_path / "lsh")
    # Measured: trained about 0.6, untrained about 0.16 (the released head's standard-normal
    # biases leave most bits constant at the start), LSH about 0.51 (mAP@100, 16 bits).
    assert trained > untrained + 0.05 and trained > lsh + 0.02, (trained, untrained, lsh)


@pytest.mark.slow
def test_the_paper_path_trains_the_whole_vit_on_the_cpu(tmp_path, monkeypatch):
    from torchvision.models import vit_b_16

    import hashbench.toolkit.training as training

    torch.manual_seed(1)
    weights = tmp_path / "random-vit.pth"
    torch.save(vit_b_16(weights=None).state_dict(), weights)
    rng = np.random.default_rng(0)
    arrays = DatasetArrays(labels=np.eye(2, dtype=bool)[np.arange(6) % 2], images=rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8))
    train, query = DataSplit("train", np.arange(4), arrays), DataSplit("query", np.arange(4, 6), arrays)
    initial = {}

    class RecordingTrainer(training.Trainer):
        def fit(self, *args, **kwargs):
            initial.update({key: value.clone() for key, value in self.model.state_dict().items()})
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(training, "Trainer", RecordingTrainer)
    context = RunContext(seed=0)
    method = WCH(8, WCHParams(profile="paper", backbone_weights=str(weights), epochs=1, batch_size=2, eval_every=0, cpu_threads=2), context)
    method.fit(train, None)  # 2 steps of 2 images, two 224-px views each
    after = method.model.state_dict()
    changed = {key for key in after if not torch.equal(after[key], initial[key])}
    assert "backbone.network.conv_proj.weight" in changed and "backbone.network.encoder.layers.encoder_layer_11.mlp.3.weight" in changed
    assert {"head.fc.weight", "head.b.weight", "head.fc_norm.weight"} <= changed
    # The weights file is read memory-mapped, copy on write: training never writes it.
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(saved["conv_proj.weight"], initial["backbone.network.conv_proj.weight"])
    codes = method.encode(query)
    assert codes.shape == (2, 8) and codes.dtype == bool
    record = context.record
    assert record["backbone"]["name"] == "vit_b_16" and record["backbone"]["tokens"] == "patch tokens"
    assert record["augment"]["size"] == 224 and record["settings"]["lr"] == 1e-5
    assert all(np.isfinite(entry["loss"]) for entry in record["curve"])
