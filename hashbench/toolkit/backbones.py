"""Image backbones: networks that map a batch of images to feature vectors.

Two backbones, shared by every image method:

``vgg16``
    torchvision's VGG-16 truncated after fc7 (the classifier's second ReLU + Dropout), 4096-d,
    as in CIBHash, TBH and GreedyHash; with ``layer="fc6"``, truncated after fc6's ReLU,
    before the first Dropout (what the feature cache keeps for GreedyHash and Bi-half, which
    run the rest live: :func:`vgg16_after_fc6`). Every parameter is frozen. The classifier's
    Dropout layers follow the module's mode: active in ``train()``, off in ``eval()`` (the
    released CIBHash code trains with them active). ImageNet weights are resolved in this order:

    1. an explicit weights file (``weights=PATH``; a torchvision VGG-16 state dict),
    2. torch hub's cache (``<torch hub dir>/checkpoints/vgg16-397923af.pth``),
    3. a download from download.pytorch.org into that cache, when online,

    and otherwise a :class:`~hashbench.errors.UserError` names the expected file and where to
    put it. Random weights only when asked for with ``pretrained=False``.

``vit_b_16``
    torchvision's ViT-B/16 (``vit_b_16(weights=None)``) without its classification head: the
    768-d class token after the final layer norm, at 224×224, ImageNet normalisation. Frozen.
    Weights come only from the user: an explicit file (``weights=PATH``; a torchvision
    ``vit_b_16`` state dict), else torch hub's cache (``<torch hub dir>/checkpoints/
    vit_b_16-c867db91.pth``); nothing is downloaded, and otherwise a one-line
    :class:`~hashbench.errors.UserError` says where to put the file. Random weights only with
    ``pretrained=False`` (see :class:`ViTB16Trunk`).

``small``
    a small convnet for tiny images (8×8 digits, 28×28 MNIST-like, 32×32 CIFAR at native
    size), randomly initialised and trained end to end by the method; images wider than
    16 pixels first pass a stride-2 stem convolution (see :class:`SmallConvNet`).

Public API (also used by the frozen-feature cache)::

    net = build_backbone("vgg16", weights=None, pretrained=True)   # (n,3,224,224) -> (n,4096)
    net = build_backbone("vgg16", layer="fc6")                     # up to fc6's ReLU
    net.feature_dim, net.weights_source, net.weights_id, net.trainable
    prepare = preprocess_for("vgg16")          # uint8 (n,H,W,C) -> normalised network input
    x = prepare(split.images(positions), device)

``weights_id`` is a short stable string naming the weights (``vgg16-397923af`` for
torchvision's ImageNet file wherever it was found), usable as a cache key.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hashbench.errors import UserError
from hashbench.storage.atomic import file_sha256

BACKBONES = ("vgg16", "vit_b_16", "small")
# Where VGG-16 can be cut: how many modules of torchvision's classifier are kept
# (fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8): fc6 after its ReLU, fc7 after its ReLU + Dropout.
VGG16_LAYERS = {"fc6": 2, "fc7": 6}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 weights
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_INPUT_SIZE = 224
# Seed of the random initialisation used with pretrained=False: fixed, so that "random VGG-16"
# names one set of weights (reproducible, and a valid cache key).
RANDOM_INIT_SEED = 0
DOWNLOAD_TIMEOUT_S = 60.0
VIT_B16_FILE = "vit_b_16-c867db91.pth"  # torchvision's ViT_B_16 IMAGENET1K_V1 weights
VIT_B16_INPUT_SIZE = 224


# --------------------------------------------------------------------------------------------
# input handling


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects: size (None = the images' own), channels and normalisation."""

    size: int | None
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(name: str, image_shape: tuple[int, ...] | None = None) -> InputSpec:
    """The input a backbone expects; ``image_shape`` (H, W, C) is needed for ``small``."""
    if name == "vgg16":
        return InputSpec(VGG16_INPUT_SIZE, 3, IMAGENET_MEAN, IMAGENET_STD)
    if name == "vit_b_16":
        return InputSpec(VIT_B16_INPUT_SIZE, 3, IMAGENET_MEAN, IMAGENET_STD)
    if name == "small":
        channels = _channels_of(image_shape, name)
        # Images in [0, 1] centred on 0.5: batch norm after the first convolution does the rest.
        return InputSpec(None, channels, (0.5,) * channels, (0.5,) * channels)
    raise UserError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")


def _channels_of(image_shape: tuple[int, ...] | None, name: str) -> int:
    if image_shape is None or len(image_shape) != 3:
        raise UserError(f"backbone {name!r} needs the image shape (H, W, C); got {image_shape!r}")
    return int(image_shape[2])


def to_float_images(images: Any, device: torch.device | str) -> torch.Tensor:
    """uint8 ``(n, H, W, C)`` (numpy or torch) → float ``(n, C, H, W)`` in [0, 1] on ``device``.

    The uint8 batch travels to the device first (4× fewer bytes than floats); on CUDA the
    copy is asynchronous from pinned memory.
    """
    device = torch.device(device)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise UserError(f"images must be uint8 (n, H, W, C); got dtype {images.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    else:
        tensor = images
    if tensor.ndim != 4:
        raise UserError(f"images must be a 4-D batch (n, H, W, C); got shape {tuple(tensor.shape)}")
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Per-channel ``(x − mean) / std`` of a float batch ``(n, C, H, W)``."""
    mean = torch.tensor(spec.mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean) / std


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Replicate a grey batch to 3 channels (or refuse an impossible conversion)."""
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1)
    raise UserError(
        f"cannot feed {images.shape[1]}-channel images to a {channels}-channel backbone"
    )


class Preprocess:
    """Evaluation preprocessing of a backbone: uint8 ``(n, H, W, C)`` → normalised input.

    For ``vgg16``: grey replicated to RGB, resized to 224×224 (bilinear, antialiased like
    torchvision's ``Resize``), ImageNet normalisation. For ``small``: scaling only.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, images: Any, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.from_float(to_float_images(images, device))

    def from_float(self, images: torch.Tensor) -> torch.Tensor:
        """The same steps for a float batch ``(n, C, H, W)`` in [0, 1]."""
        images = match_channels(images, self.spec.channels)
        size = self.spec.size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return normalize(images, self.spec)


def preprocess_for(name: str, image_shape: tuple[int, ...] | None = None) -> Preprocess:
    """The evaluation preprocessing of backbone ``name`` (see :class:`Preprocess`)."""
    return Preprocess(input_spec(name, image_shape))


# --------------------------------------------------------------------------------------------
# VGG-16 fc7


class VGG16Trunk(nn.Module):
    """VGG-16 up to fc7 (after the second ReLU + Dropout): ``(n, 3, 224, 224)`` → ``(n, 4096)``;
    with ``layer="fc6"`` up to fc6's ReLU (before its Dropout).

    Frozen: no parameter requires a gradient. Dropout follows ``train()`` / ``eval()``.
    """

    feature_dim = 4096
    trainable = False

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor] | None,
        weights_source: str,
        weights_id: str,
        layer: str = "fc7",
    ) -> None:
        super().__init__()
        if layer not in VGG16_LAYERS:
            raise UserError(f"unknown VGG-16 layer {layer!r}; known: {', '.join(VGG16_LAYERS)}")
        from torchvision.models import vgg16

        if state_dict is None:
            # A fixed seed: "random VGG-16" is then one reproducible set of weights.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                network = vgg16(weights=None)
        else:
            # Built without memory or random initialisation, then given the loaded tensors.
            with torch.device("meta"):
                network = vgg16(weights=None)
            _load_vgg16_state(network, state_dict, weights_source)
        self.features = network.features
        self.avgpool = network.avgpool  # the identity at 224×224, kept for other sizes
        # classifier[:6] = fc6, ReLU, Dropout, fc7, ReLU, Dropout (the 1000-way fc8 dropped).
        self.classifier = nn.Sequential(*list(network.classifier.children())[: VGG16_LAYERS[layer]])
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.layer = layer
        self.weights_source = weights_source
        self.weights_id = weights_id

    def cut(self, layer: str) -> VGG16Trunk:
        """This trunk ending at ``layer`` instead (``fc6`` from ``fc7``): the classifier shortened."""
        if layer not in VGG16_LAYERS or VGG16_LAYERS[layer] > len(self.classifier):
            raise UserError(f"cannot cut a VGG-16 trunk ending at {self.layer} at {layer!r}")
        self.classifier = self.classifier[: VGG16_LAYERS[layer]]
        self.layer = layer
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.avgpool(self.features(images))
        return self.classifier(torch.flatten(features, 1))


def _load_vgg16_state(network: nn.Module, state_dict: Any, source: str) -> None:
    if (
        isinstance(state_dict, dict)
        and "state_dict" in state_dict
        and isinstance(state_dict["state_dict"], dict)
    ):
        state_dict = state_dict["state_dict"]  # a checkpoint wrapping the state dict
    if not isinstance(state_dict, dict):
        raise UserError(
            f"{source}: not a VGG-16 state dict (a torch.save'd dict of tensors was expected)"
        )
    expected = network.state_dict()
    needed = [key for key in expected if not key.startswith("classifier.6.")]  # fc8 is unused
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise UserError(
            f"{source}: not a torchvision VGG-16 state dict (missing {len(missing)} entries such as "
            f"{missing[0]!r}); use torchvision's {VGG16_FILE}"
        )
    for key in needed:
        if tuple(state_dict[key].shape) != tuple(expected[key].shape):
            raise UserError(
                f"{source}: entry {key!r} has shape {tuple(state_dict[key].shape)}, VGG-16 needs "
                f"{tuple(expected[key].shape)}; is this VGG-16 (without batch norm)?"
            )
    network.load_state_dict(
        {key: state_dict[key].float() for key in needed}, strict=False, assign=True
    )


def hub_checkpoint_path() -> Path:
    """Where torch hub keeps (and torchvision downloads) the ImageNet VGG-16 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def _read_state(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        try:
            # Memory-mapped: the 528 MB file is paged in as the weights are used, not copied.
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in torch's legacy (pre-zip) format cannot be mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download, a pickle of something else
        raise UserError(
            f"{source}: cannot read it as a torch state dict ({type(error).__name__}: {error}); "
            f"replace it with torchvision's {VGG16_FILE}"
        ) from error


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch hub opens URLs without a timeout; bound it so an offline machine fails fast.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_vgg16_weights() -> Path:
    """Download torchvision's VGG-16 ImageNet weights into the torch hub cache (checked hash)."""
    target = hub_checkpoint_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        torch.hub.download_url_to_file(
            VGG16_URL, str(target), hash_prefix=VGG16_FILE.split("-")[1][:8], progress=False
        )
    return target


def _missing_weights_error(reason: str) -> UserError:
    return UserError(
        f"VGG-16 ImageNet weights not found and not downloadable ({reason}). Put torchvision's "
        f"{VGG16_FILE} (from {VGG16_URL}) in {hub_checkpoint_path().parent} (the torch hub cache; "
        "$TORCH_HOME moves it), or pass its path with --set METHOD.backbone_weights=PATH; "
        "for random weights (not the paper's setting) pass --set METHOD.pretrained=false"
    )


def resolve_vgg16_weights(
    weights: str | None, pretrained: bool
) -> tuple[dict[str, torch.Tensor] | None, str, str]:
    """(state dict or None for random, weights_source, weights_id) in the documented order."""
    if weights is not None and not pretrained:
        raise UserError(
            f"a weights file ({weights}) and pretrained=false were both given; drop one of them"
        )
    if not pretrained:
        return (
            None,
            f"random initialisation (torch seed {RANDOM_INIT_SEED}; pretrained=false)",
            f"vgg16-random{RANDOM_INIT_SEED}",
        )
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(
                f"backbone weights file {path} does not exist; check the backbone_weights path"
            )
        source = f"file {path.resolve()}"
        state = _read_state(path, source)
        return state, source, f"vgg16-{file_sha256(path)[:8]}"
    cached = hub_checkpoint_path()
    if cached.is_file():
        source = f"torch hub cache {cached}"
        return _read_state(cached, source), source, f"vgg16-{VGG16_FILE.split('-')[1][:8]}"
    try:
        path = download_vgg16_weights()
    except Exception as error:  # offline, DNS failure, timeout, hash mismatch
        raise _missing_weights_error(f"{type(error).__name__}: {error}") from error
    return (
        _read_state(path, f"download {VGG16_URL}"),
        f"download {VGG16_URL} -> {path}",
        f"vgg16-{VGG16_FILE.split('-')[1][:8]}",
    )


# --------------------------------------------------------------------------------------------
# ViT-B/16 class token


class ViTB16Trunk(nn.Module):
    """torchvision's ViT-B/16 without its head: ``(n, 3, 224, 224)`` → ``(n, 768)``, the class
    token after the encoder's final layer norm (the feature the ``heads`` layer would read).

    Frozen: no parameter requires a gradient (its dropout rates are torchvision's 0).
    """

    feature_dim = 768
    trainable = False

    def __init__(self, state_dict: dict[str, torch.Tensor] | None, weights_source: str, weights_id: str) -> None:
        super().__init__()
        from torchvision.models import vit_b_16

        if state_dict is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                network = vit_b_16(weights=None)
        else:
            with torch.device("meta"):
                network = vit_b_16(weights=None)
            _load_vit_b16_state(network, state_dict, weights_source)
        network.heads = nn.Identity()
        self.network = network
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.weights_source = weights_source
        self.weights_id = weights_id

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def _load_vit_b16_state(network: nn.Module, state_dict: Any, source: str) -> None:
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise UserError(f"{source}: not a ViT-B/16 state dict (a torch.save'd dict of tensors was expected)")
    expected = network.state_dict()
    needed = [key for key in expected if not key.startswith("heads.")]  # the head is unused
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise UserError(
            f"{source}: not a torchvision vit_b_16 state dict (missing {len(missing)} entries such as "
            f"{missing[0]!r}); use torchvision's {VIT_B16_FILE}"
        )
    for key in needed:
        if tuple(state_dict[key].shape) != tuple(expected[key].shape):
            raise UserError(
                f"{source}: entry {key!r} has shape {tuple(state_dict[key].shape)}, ViT-B/16 needs "
                f"{tuple(expected[key].shape)}; is this torchvision's vit_b_16?"
            )
    network.load_state_dict({key: state_dict[key].float() for key in needed}, strict=False, assign=True)


def vit_b16_hub_path() -> Path:
    """Where torch hub keeps torchvision's ViT-B/16 ImageNet weights (never downloaded here)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VIT_B16_FILE


def resolve_vit_b16_weights(weights: str | None, pretrained: bool) -> tuple[dict[str, torch.Tensor] | None, str, str]:
    """(state dict or None for random, weights_source, weights_id): the file asked for, else
    torch hub's cache, else a UserError (no download)."""
    if weights is not None and not pretrained:
        raise UserError(f"a weights file ({weights}) and pretrained=false were both given; drop one of them")
    if not pretrained:
        return None, f"random initialisation (torch seed {RANDOM_INIT_SEED}; pretrained=false)", f"vit_b_16-random{RANDOM_INIT_SEED}"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"backbone weights file {path} does not exist; check the backbone_weights path")
        source = f"file {path.resolve()}"
        return _read_state(path, source), source, f"vit_b_16-{file_sha256(path)[:8]}"
    cached = vit_b16_hub_path()
    if cached.is_file():
        source = f"torch hub cache {cached}"
        return _read_state(cached, source), source, f"vit_b_16-{VIT_B16_FILE.split('-')[1][:8]}"
    raise UserError(
        f"ViT-B/16 weights not found: put torchvision's {VIT_B16_FILE} in {cached.parent} or pass its path "
        "with --set METHOD.backbone_weights=PATH (nothing is downloaded); --set METHOD.pretrained=false for random weights"
    )


# --------------------------------------------------------------------------------------------
# small convnet for tiny images

# Images wider than this on both sides get the small backbone's stride-2 stem.
STEM_ABOVE = 16


class SmallConvNet(nn.Module):
    """A small convnet for tiny images, trained end to end.

    Stages of two 3×3 conv + batch norm + ReLU then 2×2 max-pooling halve the image until it
    is at most 4 pixels wide; the last map is flattened (keeping where strokes are, which
    matters at this size) into a ``feature_dim`` fully connected layer with ReLU.

    Images wider than ``STEM_ABOVE`` (16) pixels on both sides first pass a stem, one 3×3
    convolution of stride 2 with ``width / 2`` channels (+ batch norm + ReLU), and the stages
    after it have one convolution each. 8×8 digits: one stage of two convolutions (32
    channels), no stem. 28×28: the stem to 14×14 (16 channels), then stages of 32 and 64
    channels (14 → 7 → 3). 32×32: the stem to 16×16, then 32 and 64 channels (16 → 8 → 4).

    Why: without the stem, 28×28 images went through three two-convolution
    stages (32, 64 and 128 channels) from the full resolution, 29 M multiply-adds per image,
    and a 28×28×32 map moved through memory three times per layer; on two CPU cores a
    5,000-image training set took about half a second a step and encoding 70,000 images a
    minute or more. With the stem and one convolution per stage it is 1.9 M multiply-adds.
    On 28×28 images made from real handwriting (``benchmarks/bench_deep_cpu.py``), CIBHash's
    tiny profile at 32 bits (790 steps) reached the same mAP@1000 with one or two
    convolutions per stage after the stem (0.530 and 0.523, mean of 3 seeds), the second
    taking 1.8 times as long.
    """

    trainable = True

    def __init__(
        self, image_shape: tuple[int, ...], feature_dim: int = 256, width: int = 32
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise UserError(f"the small backbone needs images (H, W, C); got shape {image_shape}")
        height, width_px, channels = (int(value) for value in image_shape)
        if min(height, width_px) < 4:
            raise UserError(
                f"the small backbone needs images of at least 4x4 pixels; got {height}x{width_px}"
            )
        layers: list[nn.Module] = []
        in_channels, out_channels = channels, width
        self.stem = min(height, width_px) > STEM_ABOVE
        if self.stem:
            stem_channels = max(1, width // 2)
            layers += [
                nn.Conv2d(channels, stem_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
            ]
            height, width_px = (height + 1) // 2, (width_px + 1) // 2
            in_channels = stem_channels
        while min(height, width_px) > 4:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            if not self.stem:  # after a stem, one convolution per stage
                layers += [
                    nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
            layers.append(nn.MaxPool2d(2))
            height, width_px = height // 2, width_px // 2
            in_channels, out_channels = out_channels, min(out_channels * 2, 256)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width_px, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = feature_dim
        self.weights_source = "random initialisation, trained end to end"
        self.weights_id = "small-trained"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


# --------------------------------------------------------------------------------------------


def vgg16_after_fc6(fc7: nn.Linear, dropout: float = 0.5) -> nn.Sequential:
    """What follows fc6's ReLU in VGG-16's classifier up to fc7's output, run live on cached
    fc6 features: Dropout, fc7 (frozen), ReLU, Dropout — torchvision's ``classifier[2:6]``,
    with the Dropout rate ``dropout`` (torchvision's and the released code's 0.5)."""
    fc7.requires_grad_(False)
    return nn.Sequential(nn.Dropout(dropout), fc7, nn.ReLU(), nn.Dropout(dropout))


def vgg16_fc7_layer(*, weights: str | None = None, pretrained: bool = True) -> nn.Linear:
    """VGG-16's fc7 (4096 → 4096) with the weights resolved as for :func:`build_backbone`, frozen."""
    trunk = build_backbone("vgg16", weights=weights, pretrained=pretrained)
    source = trunk.classifier[3]
    # No random initialisation (it would draw from the run's generator), then a copy: the rest
    # of VGG-16 (and a memory-mapped weights file) can go.
    layer = torch.nn.utils.skip_init(nn.Linear, source.in_features, source.out_features)
    with torch.no_grad():
        layer.weight.copy_(source.weight)
        layer.bias.copy_(source.bias)
    return layer.requires_grad_(False)


def build_backbone(
    name: str,
    *,
    weights: str | None = None,
    pretrained: bool = True,
    image_shape: tuple[int, ...] | None = None,
    layer: str = "fc7",
) -> nn.Module:
    """Build backbone ``name`` (see the module docstring); the module is on the CPU.

    The result has ``feature_dim``, ``weights_source`` (where its weights came from),
    ``weights_id`` (a cache key for them) and ``trainable`` (False for the frozen VGG-16).
    ``image_shape`` (H, W, C) is needed by ``small``; ``weights``/``pretrained``/``layer``
    (``fc7`` or ``fc6``) only concern ``vgg16``.
    """
    if name == "vgg16":
        state, source, identity = resolve_vgg16_weights(weights, pretrained)
        return VGG16Trunk(state, source, identity, layer)
    if name == "vit_b_16":
        if layer != "fc7":
            raise UserError(f"ViT-B/16 has no layer {layer!r}; only VGG-16 can be cut at fc6")
        state, source, identity = resolve_vit_b16_weights(weights, pretrained)
        return ViTB16Trunk(state, source, identity)
    if name == "small":
        if weights is not None:
            raise UserError("the small backbone is trained from scratch; it takes no weights file")
        if layer != "fc7":
            raise UserError(f"the small backbone has no layer {layer!r}; only VGG-16 can be cut at fc6")
        return SmallConvNet(tuple(image_shape) if image_shape is not None else ())
    raise UserError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")


def weights_id(name: str, *, weights: str | None = None, pretrained: bool = True) -> str:
    """The cache key of a backbone's weights without building it (hashes an explicit file)."""
    if name == "small":
        return "small-trained"
    if name == "vit_b_16":
        if not pretrained:
            return f"vit_b_16-random{RANDOM_INIT_SEED}"
        if weights is not None:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise UserError(f"backbone weights file {path} does not exist; check the backbone_weights path")
            return f"vit_b_16-{file_sha256(path)[:8]}"
        return f"vit_b_16-{VIT_B16_FILE.split('-')[1][:8]}"
    if name != "vgg16":
        raise UserError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    if not pretrained:
        return f"vgg16-random{RANDOM_INIT_SEED}"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(
                f"backbone weights file {path} does not exist; check the backbone_weights path"
            )
        return f"vgg16-{file_sha256(path)[:8]}"
    return f"vgg16-{VGG16_FILE.split('-')[1][:8]}"
