"""Training throughput of CIBHash with the VGG-16 trunk (one GPU, random weights).

Random 224×224 uint8 images, batch 64 (two views each, so 128 images through VGG-16 per
step), the method's own pieces (frozen VGG-16 fc7 trunk, head, CIBHash loss, Adam). It
measures, after a warm-up, the training images per second of:

* ``gpu-aug``: the batch travels to the GPU as uint8 and is augmented there, batched
  (:mod:`hashbench.toolkit.augment`; what CIBHash does on CUDA);
* ``cpu-aug``: the released code's data path: each view made by torchvision's PIL transforms
  in DataLoader worker processes, float views copied to the GPU;

each with bf16 autocast and in float32 (cuDNN's TF32 default for convolutions kept); the
throughput of a pure VGG-16 forward pass (eval mode, no gradient, 128 images on the GPU) in
both precisions, and the fraction of it that a training step reaches (views/s of training
÷ images/s of the pure forward). ``--fit`` adds one epoch of the real ``CIBHash.fit`` loop
(prefetch thread, NaN guard, progress bar) to show the loop's own overhead.

    python benchmarks/bench_cibhash_gpu.py --out cibhash_gpu.json          # one GPU, ~2 min
    python benchmarks/bench_cibhash_gpu.py --smoke --out /tmp/smoke.json   # CPU, tiny, ~1 min

Random weights are used (``pretrained=False``): the speed is that of the ImageNet weights,
and no download is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hashbench.data import DatasetArrays, DataSplit
from hashbench.method import RunContext
from hashbench.methods._cibhash_model import HEAD_HIDDEN, cibhash_loss
from hashbench.methods.cibhash import CIBHash, CIBHashParams
from hashbench.toolkit.augment import augment, paper_policy
from hashbench.toolkit.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone, to_float_images
from hashbench.toolkit.training import autocast, batch_positions, prefetch, setup, trainable

TAU, BETA, BITS = 0.3, 0.001, 64


@dataclasses.dataclass(frozen=True)
class _Args:
    """The command-line settings, copyable with other step counts."""

    out: Path
    smoke: bool
    device: str | None
    batch: int
    steps: int
    cpu_steps: int
    warmup: int
    size: int
    source: int
    pool: int
    workers: int
    fit_steps: int
    fit: bool


class _ReleasedViews(torch.utils.data.Dataset):
    """Two views per image with the released code's per-image PIL pipeline."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        from torchvision import transforms

        self.images = images
        jitter = transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size=size, scale=(0.5, 1.0)),
                transforms.RandomHorizontalFlip(),
                transforms.RandomApply([jitter], p=0.7),
                transforms.RandomGrayscale(p=0.2),
                transforms.RandomApply([transforms.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index])
        return self.transform(image), self.transform(image)


def _model(device: torch.device) -> tuple[nn.ModuleDict, torch.optim.Optimizer]:
    backbone = build_backbone("vgg16", pretrained=False)
    head = nn.Sequential(
        nn.Linear(backbone.feature_dim, HEAD_HIDDEN), nn.ReLU(), nn.Linear(HEAD_HIDDEN, BITS)
    )
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
    if device.type == "cuda":
        model["backbone"].to(memory_format=torch.channels_last)
    model.train()  # the frozen trunk's dropout is active while training
    return model, torch.optim.Adam(trainable(model), lr=1e-3)


def _train_step(model, optimizer, views: torch.Tensor, device: torch.device, bf16: bool) -> float:
    """One CIBHash step on 2B normalised views (the method's step without the data path)."""
    if device.type == "cuda":
        views = views.contiguous(memory_format=torch.channels_last)
    precision = autocast(device) if bf16 else torch.autocast(device.type, enabled=False)
    with precision, torch.no_grad():
        features = model["backbone"](views)
    probabilities = torch.sigmoid(model["head"](features.float()))
    p_i, p_j = probabilities.chunk(2)
    terms = cibhash_loss(p_i, p_j, TAU, BETA)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return float(terms["loss"].detach())  # a sync per step, as the trainer's NaN guard


def _timed(steps: int, warmup: int, run_step: Callable[[], float], device: torch.device) -> float:
    for _ in range(warmup):
        run_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_gpu_augmentation(model, optimizer, pool, args, device, bf16: bool) -> float:
    policy = dataclasses.replace(paper_policy(), size=args.size)
    pin = device.type == "cuda"
    order = np.random.default_rng(0).permutation(len(pool))
    batches = iter([])

    def load(positions: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(pool[np.sort(positions)])
        return tensor.pin_memory() if pin else tensor

    def next_batch() -> torch.Tensor:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(prefetch(batch_positions(len(pool), args.batch, order), load))
            return next(batches)

    def step() -> float:
        pixels = to_float_images(next_batch(), device)
        views = torch.cat([augment(pixels, policy), augment(pixels, policy)])
        return _train_step(model, optimizer, views, device, bf16)

    return _timed(args.steps, args.warmup, step, device)


def bench_cpu_augmentation(model, optimizer, pool, args, device, bf16: bool) -> float:
    loader = torch.utils.data.DataLoader(
        _ReleasedViews(pool, args.size),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    batches = iter([])

    def step() -> float:
        nonlocal batches
        try:
            view_i, view_j = next(batches)
        except StopIteration:
            batches = iter(loader)
            view_i, view_j = next(batches)
        views = torch.cat([view_i, view_j]).to(device, non_blocking=True)
        return _train_step(model, optimizer, views, device, bf16)

    return _timed(args.steps, args.warmup, step, device)


def bench_forward(model, args, device, bf16: bool) -> float:
    backbone = model["backbone"].eval()
    views = torch.randn(2 * args.batch, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        views = views.contiguous(memory_format=torch.channels_last)
    precision = autocast(device) if bf16 else torch.autocast(device.type, enabled=False)

    def step() -> float:
        with precision, torch.no_grad():
            backbone(views)
        return 0.0

    seconds = _timed(args.steps, args.warmup, step, device)
    backbone.train()
    return seconds


def bench_fit(args, device) -> dict[str, Any]:
    """One epoch of the real CIBHash.fit loop on random images (gpu-aug, the run's precision)."""
    count = args.batch * args.fit_steps
    images = np.random.default_rng(1).integers(
        0, 256, size=(count, args.source, args.source, 3), dtype=np.uint8
    )
    arrays = DatasetArrays(labels=np.ones((count, 1), dtype=bool), images=images)
    params = CIBHashParams(
        profile="paper", pretrained=False, epochs=1, eval_every=0, batch_size=args.batch
    )
    context = RunContext(seed=0, device=str(device))
    method = CIBHash(BITS, params, context)
    if args.size != 224:  # smoke runs: a smaller network input (the method reads the policy when it fits)
        import hashbench.toolkit.augment as module

        policy = dataclasses.replace(paper_policy(), size=args.size)
        original = module.paper_policy
        module.paper_policy = lambda: policy
    try:
        method.fit(DataSplit("train", np.arange(count), arrays), None)
    finally:
        if args.size != 224:
            module.paper_policy = original
    seconds = context.record["curve"][0]["seconds"]
    return {
        "images": count,
        "epoch_seconds": seconds,
        "images_per_s": count / seconds,
        "precision": context.record["precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("cibhash_gpu.json"), help="where to write the JSON results"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny CPU run that exercises every path"
    )
    parser.add_argument(
        "--device", default=None, help="default: cuda when present (cpu with --smoke)"
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    parser.add_argument(
        "--cpu-steps", type=int, default=60, help="timed steps of the cpu-aug runs (CPU-bound)"
    )
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--size", type=int, default=224, help="network input side")
    parser.add_argument("--source", type=int, default=224, help="side of the random source images")
    parser.add_argument(
        "--pool", type=int, default=1024, help="distinct random images cycled through"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="cpu-aug DataLoader workers",
    )
    parser.add_argument(
        "--fit-steps", type=int, default=100, help="steps of the one-epoch CIBHash.fit run"
    )
    parser.add_argument(
        "--no-fit", dest="fit", action="store_false", help="skip the one-epoch CIBHash.fit run"
    )
    args = parser.parse_args()
    if args.smoke:
        args.device = args.device or "cpu"
        args.batch, args.steps, args.warmup, args.size, args.source, args.pool = 2, 2, 1, 64, 64, 8
        args.fit_steps = 2
        args.workers = min(args.workers, 2)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup(RunContext(seed=0, device=str(device)))  # the method's seeding and cuDNN settings

    pool = np.random.default_rng(0).integers(
        0, 256, size=(args.pool, args.source, args.source, 3), dtype=np.uint8
    )
    model, optimizer = _model(device)
    rows = []
    forward: dict[str, float] = {}

    def measure(bf16: bool, modes: tuple[str, ...], cudnn: str) -> None:
        label = "bf16" if bf16 and device.type == "cuda" else "fp32"
        cudnn = cudnn if device.type == "cuda" else "-"
        key = f"{label} ({cudnn})" if device.type == "cuda" else label
        seconds = bench_forward(model, args, device, bf16)
        forward[key] = args.steps * 2 * args.batch / seconds
        for mode in modes:
            steps = args.steps if mode == "gpu-aug" else min(args.steps, args.cpu_steps)
            timed = dataclasses.replace(args_view, steps=steps)
            bench = bench_gpu_augmentation if mode == "gpu-aug" else bench_cpu_augmentation
            seconds = bench(model, optimizer, pool, timed, device, bf16)
            images_per_s = steps * args.batch / seconds
            rows.append(
                {
                    "augmentation": mode,
                    "precision": label,
                    "cudnn": cudnn,
                    "steps": steps,
                    "step_ms": 1000 * seconds / steps,
                    "images_per_s": images_per_s,
                    "views_per_s": 2 * images_per_s,
                    "fraction_of_forward": 2 * images_per_s / forward[key],
                }
            )

    args_view = _Args(**vars(args))
    both = ("gpu-aug", "cpu-aug")
    # The method's settings first (deterministic cuDNN), then cuDNN's autotuner for comparison.
    measure(True, both, "deterministic")
    if device.type == "cuda":
        measure(False, both, "deterministic")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        measure(True, ("gpu-aug",), "benchmark")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    fit = bench_fit(args, device) if args.fit else None

    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": {
            "deterministic": torch.backends.cudnn.deterministic,
            "benchmark": torch.backends.cudnn.benchmark,
            "allow_tf32": torch.backends.cudnn.allow_tf32,
        },
        "cpu_count": os.cpu_count(),
        "batch": args.batch,
        "views_per_step": 2 * args.batch,
        "input_size": args.size,
        "source_size": args.source,
        "steps": args.steps,
        "cpu_steps": args.cpu_steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "smoke": args.smoke,
        "forward_images_per_s": forward,
        "training": rows,
        "fit_one_epoch": fit,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{result['device']}  torch {result['torch']}  batch {args.batch} (x2 views), input {args.size}px, {args.steps} steps"
    )
    print(
        f"{'augmentation':<12} {'precision':<9} {'cudnn':<13} {'step ms':>8} {'images/s':>9} {'views/s':>9} {'of fwd':>7}"
    )
    for row in rows:
        print(
            f"{row['augmentation']:<12} {row['precision']:<9} {row['cudnn']:<13} {row['step_ms']:>8.1f} "
            f"{row['images_per_s']:>9.1f} {row['views_per_s']:>9.1f} {row['fraction_of_forward']:>7.1%}"
        )
    for label, value in forward.items():
        print(f"pure VGG-16 forward ({label}): {value:.1f} images/s")
    if fit is not None:
        print(
            f"CIBHash.fit, one epoch of {fit['images']} images ({fit['precision']}): {fit['images_per_s']:.1f} images/s"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
