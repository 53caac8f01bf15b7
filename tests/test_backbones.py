"""Backbones: the frozen VGG-16 fc7 trunk, its weights resolution, preprocessing, small convnet."""

from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hashbench.errors import UserError
from hashbench.toolkit import backbones
from hashbench.toolkit.backbones import VGG16_FILE, build_backbone, preprocess_for, weights_id


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory) -> Path:
    """A torchvision VGG-16 state dict saved as torchvision ships it (random values)."""
    from torchvision.models import vgg16

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "my-vgg16.pth"
    torch.save(vgg16(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_trunk() -> torch.nn.Module:
    return build_backbone("vgg16", pretrained=False)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and no network: the situation of an offline machine."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return hub


def test_vgg16_trunk_gives_4096_features_at_224_and_is_frozen(random_trunk):
    random_trunk.eval()
    with torch.no_grad():
        features = random_trunk(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 4096) and random_trunk.feature_dim == 4096
    assert (features >= 0).all()  # fc7 is taken after its ReLU
    assert not any(parameter.requires_grad for parameter in random_trunk.parameters())
    assert sum(parameter.numel() for parameter in random_trunk.parameters()) > 100_000_000
    # classifier[:6]: fc6, ReLU, Dropout, fc7, ReLU, Dropout — no fc8.
    kinds = [type(layer).__name__ for layer in random_trunk.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout"]


def test_vgg16_dropout_is_active_only_in_train_mode(random_trunk):
    pooled = torch.rand(2, 25088)  # the classifier's input: conv features after pooling
    random_trunk.train()
    with torch.no_grad():
        first, second = random_trunk.classifier(pooled), random_trunk.classifier(pooled)
    assert not torch.equal(first, second)
    assert (first == 0).float().mean() > 0.4  # the last Dropout zeroes about half
    random_trunk.eval()
    with torch.no_grad():
        assert torch.equal(random_trunk.classifier(pooled), random_trunk.classifier(pooled))


def test_random_weights_are_reproducible_and_named(random_trunk):
    again = build_backbone("vgg16", pretrained=False)
    assert torch.equal(again.features[0].weight, random_trunk.features[0].weight)
    assert random_trunk.weights_id == "vgg16-random0" == weights_id("vgg16", pretrained=False)
    assert "pretrained=false" in random_trunk.weights_source


def test_weights_load_from_an_explicit_file(vgg_file, offline_hub):
    trunk = build_backbone("vgg16", weights=str(vgg_file))
    saved = torch.load(vgg_file, weights_only=True)
    assert torch.equal(trunk.features[0].weight, saved["features.0.weight"])
    assert torch.equal(trunk.classifier[3].weight, saved["classifier.3.weight"])
    assert trunk.weights_source == f"file {vgg_file.resolve()}"
    digest = hashlib.sha256(vgg_file.read_bytes()).hexdigest()[:8]
    assert trunk.weights_id == f"vgg16-{digest}" == weights_id("vgg16", weights=str(vgg_file))


def test_weights_are_found_in_the_torch_hub_cache(vgg_file, offline_hub):
    cached = offline_hub / "checkpoints" / VGG16_FILE
    cached.parent.mkdir(parents=True)
    cached.symlink_to(vgg_file)
    trunk = build_backbone("vgg16")
    assert trunk.weights_source == f"torch hub cache {cached}"
    assert trunk.weights_id == "vgg16-397923af" == weights_id("vgg16")
    saved = torch.load(vgg_file, weights_only=True)
    assert torch.equal(trunk.classifier[0].bias, saved["classifier.0.bias"])


def test_missing_weights_offline_fail_with_the_file_name_and_place(offline_hub):
    with pytest.raises(UserError) as caught:
        build_backbone("vgg16")
    message = str(caught.value)
    assert VGG16_FILE in message
    assert str(offline_hub / "checkpoints") in message
    assert "backbone_weights=PATH" in message and "pretrained=false" in message
    assert "name resolution" in message  # the download's own reason


def test_a_download_lands_in_the_hub_cache(vgg_file, offline_hub, monkeypatch):
    def fake_download(url, destination, hash_prefix=None, progress=True):
        assert url == backbones.VGG16_URL and hash_prefix == "397923af"
        Path(destination).symlink_to(vgg_file)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    trunk = build_backbone("vgg16")
    assert trunk.weights_source.startswith(f"download {backbones.VGG16_URL}")
    assert (offline_hub / "checkpoints" / VGG16_FILE).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage", "cannot read it as a torch state dict"),
        ({"features.0.weight": torch.zeros(3)}, "not a torchvision VGG-16 state dict"),
    ],
)
def test_bad_weights_files_are_refused(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UserError, match=message):
        build_backbone("vgg16", weights=str(path))


def test_weights_options_are_checked(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("vgg16", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="drop one of them"):
        build_backbone("vgg16", weights=str(tmp_path / "x.pth"), pretrained=False)
    with pytest.raises(UserError, match="unknown backbone 'resnet'"):
        build_backbone("resnet")


def test_vgg16_preprocessing_resizes_replicates_and_normalises():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    prepared = preprocess_for("vgg16")(images)
    assert prepared.shape == (2, 3, 224, 224) and prepared.dtype == torch.float32
    grey = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    resized = F.interpolate(
        grey, size=(224, 224), mode="bilinear", align_corners=False, antialias=True
    )
    for channel, (mean, std) in enumerate(
        zip(backbones.IMAGENET_MEAN, backbones.IMAGENET_STD, strict=True)
    ):
        torch.testing.assert_close(prepared[:, channel], (resized[:, 0] - mean) / std)
    native = np.full((1, 224, 224, 3), 255, dtype=np.uint8)
    expected = [
        (1 - m) / s for m, s in zip(backbones.IMAGENET_MEAN, backbones.IMAGENET_STD, strict=True)
    ]
    torch.testing.assert_close(
        preprocess_for("vgg16")(native)[0, :, 100, 100], torch.tensor(expected)
    )


def test_preprocessing_refuses_non_uint8_images():
    with pytest.raises(UserError, match="must be uint8"):
        preprocess_for("vgg16")(np.zeros((1, 8, 8, 3), dtype=np.float32))


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_small_backbone_for_tiny_images_is_trainable(shape):
    network = build_backbone("small", image_shape=shape)
    assert network.trainable and all(p.requires_grad for p in network.parameters())
    prepared = preprocess_for("small", shape)(np.zeros((4, *shape), dtype=np.uint8))
    assert prepared.shape == (4, shape[2], shape[0], shape[1])
    assert torch.all(prepared == -1.0)  # (0 − 0.5) / 0.5
    features = network(prepared)
    assert features.shape == (4, network.feature_dim)
    assert network.weights_id == "small-trained" == weights_id("small")


def test_small_backbone_needs_the_image_shape():
    with pytest.raises(UserError, match="needs images"):
        build_backbone("small")
    with pytest.raises(UserError, match="takes no weights file"):
        build_backbone("small", weights="x.pth", image_shape=(8, 8, 1))


def test_vgg16_cut_at_fc6_keeps_fc6_and_its_relu():
    trunk = build_backbone("vgg16", pretrained=False, layer="fc6")
    assert [type(layer).__name__ for layer in trunk.classifier] == ["Linear", "ReLU"]
    assert trunk.layer == "fc6" and trunk.feature_dim == 4096
    with pytest.raises(UserError, match="unknown VGG-16 layer"):
        build_backbone("vgg16", pretrained=False, layer="fc8")
    with pytest.raises(UserError, match="only VGG-16 can be cut at fc6"):
        build_backbone("small", image_shape=(8, 8, 1), layer="fc6")
    with pytest.raises(UserError, match="cannot cut a VGG-16 trunk ending at fc6"):
        trunk.cut("fc7")


def test_fc7_run_live_on_cached_fc6_equals_cached_fc7_in_eval_mode(tmp_path):
    """The real feature cache at fc6 and fc7 (random VGG-16, three images): in eval mode the
    live part (Dropout, fc7, ReLU, Dropout) turns the fc6 features into the fc7 ones."""
    from hashbench.toolkit.backbone_features import BackboneFeatures

    images = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    fc7 = BackboneFeatures(images, np.arange(3), dataset="toy", manifest_hash="a" * 64, cache_dir=tmp_path, pretrained=False, batch_size=3)
    fc6 = fc7.at_layer("fc6")
    assert (fc6.layer, fc6.key()["layer"], fc7.key()["layer"]) == ("fc6", "fc6", "fc7")
    assert fc6.entry().path != fc7.entry().path and fc7.at_layer("fc7") is fc7
    live = backbones.vgg16_after_fc6(fc6.fc7_layer()).eval()
    with torch.no_grad():
        from_fc6 = live(torch.from_numpy(fc6(np.arange(3)))).numpy()
    np.testing.assert_allclose(from_fc6, fc7(np.arange(3)), rtol=1e-4, atol=1e-5)
    names = sorted(path.name for path in (tmp_path / "features").glob("*.npy"))
    assert names == [f"toy-{'a' * 16}-vgg16-fc6-vgg16-random0.npy", f"toy-{'a' * 16}-vgg16-vgg16-random0.npy"]
