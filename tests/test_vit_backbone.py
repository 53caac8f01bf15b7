"""The ViT-B/16 backbone: torchvision's architecture, the user's weights only, checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hashbench.errors import UserError
from hashbench.storage.atomic import file_sha256
from hashbench.toolkit import backbones
from hashbench.toolkit.backbones import VIT_B16_FILE, build_backbone, input_spec, weights_id


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    """A torchvision vit_b_16 state dict (random values), saved as torchvision ships one."""
    from torchvision.models import vit_b_16

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "my-vit.pth"
    torch.save(vit_b_16(weights=None).state_dict(), path)
    return path


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_download(*args, **kwargs):  # pragma: no cover - must never be called
        raise AssertionError("the ViT backbone must not download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return hub


def test_vit_from_a_weights_file_gives_the_768_wide_class_token_and_is_frozen(vit_file):
    trunk = build_backbone("vit_b_16", weights=str(vit_file))
    assert trunk.feature_dim == 768 and not trunk.trainable
    assert not any(parameter.requires_grad for parameter in trunk.parameters())
    assert trunk.weights_id == f"vit_b_16-{file_sha256(vit_file)[:8]}" == weights_id("vit_b_16", weights=str(vit_file))
    saved = torch.load(vit_file, weights_only=True)
    assert torch.equal(trunk.network.conv_proj.weight, saved["conv_proj.weight"])  # the file's values
    trunk.eval()
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 768) and torch.isfinite(features).all()
    spec = input_spec("vit_b_16")
    assert (spec.size, spec.channels, spec.mean) == (224, 3, backbones.IMAGENET_MEAN)


def test_vit_weights_come_from_the_hub_cache_and_are_never_downloaded(vit_file, empty_hub):
    with pytest.raises(UserError, match=VIT_B16_FILE) as error:
        build_backbone("vit_b_16")
    assert "\n" not in str(error.value) and "nothing is downloaded" in str(error.value)
    (empty_hub / "checkpoints").mkdir(parents=True)
    (empty_hub / "checkpoints" / VIT_B16_FILE).symlink_to(vit_file)
    trunk = build_backbone("vit_b_16")
    assert trunk.weights_id == "vit_b_16-c867db91" == weights_id("vit_b_16")
    assert trunk.weights_source.startswith("torch hub cache")


def test_a_missing_or_mismatched_weights_file_is_a_one_line_user_error(vit_file, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("vit_b_16", weights=str(tmp_path / "absent.pth"))
    partial = torch.load(vit_file, weights_only=True)
    del partial["encoder.ln.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(UserError, match="not a torchvision vit_b_16 state dict") as error:
        build_backbone("vit_b_16", weights=str(tmp_path / "partial.pth"))
    assert "\n" not in str(error.value)
    wrong = {key: value for key, value in torch.load(vit_file, weights_only=True).items()}
    wrong["conv_proj.weight"] = torch.zeros(768, 3, 32, 32)  # ViT-B/32's patches
    torch.save(wrong, tmp_path / "b32.pth")
    with pytest.raises(UserError, match="has shape"):
        build_backbone("vit_b_16", weights=str(tmp_path / "b32.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match="cannot read it"):
        build_backbone("vit_b_16", weights=str(tmp_path / "garbage.pth"))
    with pytest.raises(UserError, match="drop one"):
        build_backbone("vit_b_16", weights=str(vit_file), pretrained=False)


@pytest.mark.slow
def test_random_vit_is_one_reproducible_set_of_weights():
    first = build_backbone("vit_b_16", pretrained=False)
    assert first.weights_id == "vit_b_16-random0" == weights_id("vit_b_16", pretrained=False)
    second = build_backbone("vit_b_16", pretrained=False)
    assert torch.equal(first.network.conv_proj.weight, second.network.conv_proj.weight)
