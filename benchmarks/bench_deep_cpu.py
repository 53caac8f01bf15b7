"""The deep methods' tiny profiles on a CPU, on data of MNIST's shape.

Timing (the default): synthetic 28×28 grey images of 10 classes, 70,000 in all (each class a
random stroke prototype, each image that prototype shifted, thickened and noised); every
method's tiny profile (its defaults) fitted on 5,000 of them (500 per class, the ``standard``
protocol's training split, no validation split as under ``standard``) and encoding all
70,000. Per method: fit wall time, optimiser steps, seconds per step (training time only),
the encoding time, and the ratio of the fit time to a reference measured in the same run,
so that figures from a busy and a quiet machine can be compared: a plain two-view
contrastive CNN loop (two 3×3 convolutions with 32 and 64 channels, 2×2 pooling, a 128-unit
layer, 32 outputs; random-shift views; NT-Xent; Adam; batch 64, so 128 images a step),
timed for ``--reference-steps`` steps and projected to 30 epochs of the 5,000 images
(2,370 steps), the budget of such a loop that does well on MNIST-like data.

    python benchmarks/bench_deep_cpu.py                                  # every deep method, seed 0
    python benchmarks/bench_deep_cpu.py --methods cibhash --seeds 0,1,2 --out deep_cpu.json
    python benchmarks/bench_deep_cpu.py --profile cibhash                # where a step's time goes
    python benchmarks/bench_deep_cpu.py --quality                        # CIBHash tiny vs ITQ, 3 seeds

``--profile METHOD`` runs ``--profile-steps`` training steps and one encoding of 10,240 images
under torch.profiler and prints the operators by self CPU time (with their share), and the
fit under cProfile grouped by where in hashbench the time is spent.

``--quality`` runs ``hashbench run`` (the real harness: protocol, codes, mAP) for ``cibhash``
(tiny profile) and ``itq`` at 32 bits over seeds 0, 1, 2 on two datasets and prints the mean
mAP of each: ``digits`` (scikit-learn's real 8×8 handwritten digits, mAP@100) and ``mnist``
read from MNIST-format files that this script writes first: ``digits28``, 70,000 28×28
images made from the same real handwriting (each a digit of scikit-learn's set upscaled to
20×20, placed in a 28×28 frame, randomly rotated by up to 15 degrees, scaled, sheared,
shifted and thickened), under mnist's ``standard`` protocol (1,000 queries, 69,000 database
images, 5,000 training images, mAP@1000). No real MNIST is downloaded.

The machine's load average is printed before and after each measurement: the figures are
wall times and a busy machine slows them (two-thread runs most, their threads waiting for
each other).
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import json
import math
import os
import platform
import pstats
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEEP_METHODS = ("cibhash", "clhash", "tbh", "bgan", "greedyhash", "bihalf")
IMAGES, TRAIN_PER_CLASS, CLASSES, SIDE = 70_000, 500, 10, 28
REFERENCE_EPOCHS, REFERENCE_BATCH = 30, 64


def load_average() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --------------------------------------------------------------------------------------------
# data


def synthetic_images(count: int = IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 images (n, 28, 28, 1) and their class ids: per class a random stroke
    prototype (a smoothed random field, thresholded), each image shifted by up to 3 pixels,
    randomly thickened and noised."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    field = F.avg_pool2d(torch.rand(CLASSES, 1, SIDE + 8, SIDE + 8, generator=generator), 5, 1)[..., 2:-2, 2:-2]
    prototypes = (field > field.flatten(1).quantile(0.8, dim=1).view(-1, 1, 1, 1)).float()
    labels = torch.arange(count) % CLASSES
    labels = labels[torch.randperm(count, generator=generator)]
    images = np.empty((count, SIDE, SIDE, 1), dtype=np.uint8)
    for start in range(0, count, 8192):
        chosen = labels[start : start + 8192]
        batch = prototypes[chosen]
        shift = torch.randint(-3, 4, (2,), generator=generator)
        batch = torch.roll(batch, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
        thick = torch.rand(len(chosen), 1, 1, 1, generator=generator) < 0.5
        batch = torch.where(thick, F.max_pool2d(batch, 3, 1, 1), batch)
        batch = (batch * 0.8 + 0.2 * torch.rand(batch.shape, generator=generator)).clamp(0, 1)
        images[start : start + len(chosen), ..., 0] = (batch[:, 0] * 255).round().to(torch.uint8).numpy()
    return images, labels.numpy()


def digits28(count: int = IMAGES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 28×28 uint8 images (n, 28, 28) made from scikit-learn's real 8×8 digits, and
    their labels (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    generator = torch.Generator().manual_seed(seed)
    sources = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    picked = torch.randint(0, len(sources), (count,), generator=generator)
    images = np.empty((count, SIDE, SIDE), dtype=np.uint8)
    for start in range(0, count, 4096):
        chosen = picked[start : start + 4096]
        size = len(chosen)
        glyphs = F.interpolate(sources[chosen], size=(20, 20), mode="bicubic", align_corners=False).clamp(0, 1)
        canvas = F.pad(glyphs, (4, 4, 4, 4))
        angle = (torch.rand(size, generator=generator) - 0.5) * math.radians(30)
        scale = 0.85 + 0.3 * torch.rand(size, generator=generator)
        shear = (torch.rand(size, generator=generator) - 0.5) * 0.4
        shift = (torch.rand(size, 2, generator=generator) - 0.5) * (6 / 14)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, [size, 1, SIDE, SIDE], align_corners=False)
        warped = F.grid_sample(canvas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        thickness = torch.randint(0, 3, (size, 1, 1, 1), generator=generator)
        thicker = F.max_pool2d(warped, 3, 1, 1)
        thinner = 0.5 * (warped - F.max_pool2d(-warped, 3, 1, 1))
        warped = torch.where(thickness == 1, thicker, torch.where(thickness == 2, thinner, warped)).clamp(0, 1)
        warped = warped ** (0.7 + 0.6 * torch.rand(size, 1, 1, 1, generator=generator))
        images[start : start + size] = (warped[:, 0] * 255).round().to(torch.uint8).numpy()
    return images, bunch.target[picked.numpy()].astype(np.uint8)


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, train: int = 60_000) -> None:
    """MNIST's four gzipped IDX files: the first ``train`` items as its training part."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": slice(0, train), "t10k": slice(train, None)}
    for part, chosen in parts.items():
        block = images[chosen]
        with gzip.open(folder / f"{part}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">BBBBIII", 0, 0, 8, 3, *block.shape) + block.tobytes())
        with gzip.open(folder / f"{part}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels[chosen])) + labels[chosen].tobytes())


def splits(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    """The training split (500 per class) and the whole set, as a method sees them."""
    from hashbench.data import DatasetArrays, DataSplit

    arrays = DatasetArrays(
        labels=np.eye(CLASSES, dtype=bool)[labels],
        images=images,
        features=images.reshape(len(images), -1).astype(np.float32) / 255.0,
    )
    train = np.sort(np.concatenate([np.flatnonzero(labels == c)[:TRAIN_PER_CLASS] for c in range(CLASSES)]))
    return DataSplit("train", train, arrays), DataSplit("database", np.arange(len(images)), arrays)


# --------------------------------------------------------------------------------------------
# the reference: a plain two-view contrastive CNN loop


def reference_loop(images: np.ndarray, steps: int, seed: int = 0) -> dict[str, float]:
    """Seconds per step of the plain loop (torch's default threads), projected to 30 epochs."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    network = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 32),
    )  # fmt: skip
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    pixels = torch.from_numpy(images[:5_000, ..., 0]).float().div_(255).unsqueeze(1)

    def view(batch: torch.Tensor) -> torch.Tensor:
        padded = F.pad(batch, (3, 3, 3, 3))
        top, left = (int(value) for value in torch.randint(0, 7, (2,)))
        return padded[..., top : top + SIDE, left : left + SIDE]

    def step() -> None:
        batch = pixels[torch.randint(0, len(pixels), (REFERENCE_BATCH,))]
        codes = F.normalize(network(torch.cat([view(batch), view(batch)])), dim=1)
        similarity = (codes @ codes.T / 0.3).fill_diagonal_(float("-inf"))
        targets = torch.cat([torch.arange(REFERENCE_BATCH, 2 * REFERENCE_BATCH), torch.arange(REFERENCE_BATCH)])
        loss = F.cross_entropy(similarity, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - started) / steps
    epoch_steps = math.ceil(5_000 / REFERENCE_BATCH)
    return {"s_per_step": per_step, "threads": torch.get_num_threads(), "epochs_30_s": per_step * epoch_steps * REFERENCE_EPOCHS}


# --------------------------------------------------------------------------------------------
# timing the methods


def make_method(name: str, seed: int, bits: int, overrides: dict[str, str]) -> Any:
    from hashbench import registry
    from hashbench.method import RunContext
    from hashbench.params import resolve_params

    cls = registry.get_method(name)
    params = resolve_params(cls.Params, overrides, owner=name)
    return cls(bits, params, RunContext(seed=seed))


def time_method(name: str, seed: int, bits: int, train: Any, everything: Any, overrides: dict[str, str]) -> dict[str, Any]:
    method = make_method(name, seed, bits, overrides)
    load_before = load_average()
    started, cpu_started = time.perf_counter(), time.process_time()
    method.fit(train)
    fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    started = time.perf_counter()
    codes = np.asarray(method.encode(everything))
    encode_s = time.perf_counter() - started
    record = method.context.record
    settings = record.get("settings", {})
    steps = int(settings.get("steps") or 0)
    train_s = sum(entry["seconds"] for entry in record.get("curve", []))
    return {
        "method": name,
        "seed": seed,
        "bits": bits,
        "profile": settings.get("profile"),
        "epochs": settings.get("epochs"),
        "steps": steps,
        "max_steps": settings.get("max_steps"),
        "threads": settings.get("cpu_threads"),
        "memory_format": settings.get("memory_format"),
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu,
        "s_per_step": train_s / steps if steps else float("nan"),
        "encode_s": encode_s,
        "encoded": int(codes.shape[0]),
        "load_before": load_before,
        "load_after": load_average(),
    }


def print_table(rows: list[dict[str, Any]], reference: dict[str, float]) -> None:
    print(
        f"\nreference (plain two-view contrastive CNN, {reference['threads']} threads): "
        f"{reference['s_per_step'] * 1000:.1f} ms/step, 30 epochs of 5,000 images ≈ {reference['epochs_30_s']:.0f} s\n"
    )
    print("| method | seed | epochs | steps | threads | fit (s) | s/step | encode 70k (s) | fit / reference | load before → after |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['method']} | {row['seed']} | {row['epochs']} | {row['steps']:,} | {row['threads']} | {row['fit_s']:.1f} | "
            f"{row['s_per_step']:.4f} | {row['encode_s']:.1f} | {row['fit_s'] / reference['epochs_30_s']:.2f} | "
            f"{row['load_before']} → {row['load_after']} |"
        )


# --------------------------------------------------------------------------------------------
# profiling one method


def profile_method(name: str, steps: int, bits: int, train: Any, everything: Any, overrides: dict[str, str]) -> None:
    from torch.profiler import ProfilerActivity, profile

    from hashbench.data import DataSplit

    method = make_method(name, 0, bits, {**overrides})
    batch = method.resolve_settings(train).batch_size
    # Enough training items for ``steps`` steps in one epoch.
    count = min(len(train), steps * batch)
    subset = DataSplit("train", train.indices[:count], train._arrays)
    method = make_method(name, 0, bits, {"epochs": "1", "eval_every": "0", **overrides})
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        method.fit(subset)
    print(f"\n{name}: {count:,} training images, one epoch, threads {method.context.record['settings']['cpu_threads']}")
    _print_ops(profiler)
    encode = DataSplit("database", everything.indices[:10_240], everything._arrays)
    method.encode(encode)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        method.encode(encode)
    print(f"\n{name}: encoding 10,240 images")
    _print_ops(profiler)
    method = make_method(name, 0, bits, {"epochs": "1", "eval_every": "0", **overrides})
    profiler_py = cProfile.Profile()
    profiler_py.enable()
    method.fit(subset)
    profiler_py.disable()
    print(f"\n{name}: the same fit under cProfile (cumulative time, top 25)")
    pstats.Stats(profiler_py).sort_stats("cumulative").print_stats(25)


def _print_ops(profiler: Any, rows: int = 15) -> None:
    events = [event for event in profiler.key_averages() if not event.key.startswith(("ProfilerStep", "autograd::engine"))]
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    events.sort(key=lambda event: event.self_cpu_time_total, reverse=True)
    print(f"  total self CPU {total / 1e6:.2f} s")
    for event in events[:rows]:
        print(f"  {100 * event.self_cpu_time_total / total:5.1f} %  {event.self_cpu_time_total / 1e6:7.3f} s  {event.count:6d}×  {event.key}")


# --------------------------------------------------------------------------------------------
# quality: CIBHash tiny against ITQ through the harness


def quality(seeds: str, bits: int, jobs: int, keep: Path | None) -> None:
    from hashbench.report.results import load_runs

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(keep) if keep is not None else Path(scratch)
        images, labels = digits28()
        write_idx(root / "data" / "mnist", images, labels)
        hashbench = str(Path(sys.executable).with_name("hashbench"))
        results = root / "results"
        for dataset in ("digits", "mnist"):
            command = [
                hashbench, "run", "--methods", "cibhash,itq", "--datasets", dataset, "--bits", str(bits),
                "--seeds", seeds, "--results", str(results), "--data-root", str(root / "data"),
                "--jobs", str(jobs), "--quiet",
            ]  # fmt: skip
            print(f"\n$ {' '.join(command[1:])}   (load {load_average()})", flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True)
            print(f"  {time.perf_counter() - started:.0f} s (load {load_average()})")
        frame, _ = load_runs(results)
        frame = frame[frame["status"] == "ok"]
        print("\n| dataset | method | bits | seeds | mAP per seed | mean mAP | fit (s) per seed | encode (s) per seed |")
        print("| --- | --- | ---: | --- | --- | ---: | --- | --- |")
        for (dataset, method), group in frame.groupby(["dataset", "method"]):
            group = group.sort_values("seed")
            values = ", ".join(f"{value:.3f}" for value in group["map"])
            fits = ", ".join(f"{value:.1f}" for value in group["timings.fit"])
            encodes = ", ".join(f"{value:.1f}" for value in group["timings.encode"]) if "timings.encode" in group else "-"
            print(
                f"| {dataset} (mAP@{int(group['map_k'].iloc[0])}) | {method} | {bits} | "
                f"{', '.join(str(seed) for seed in group['seed'])} | {values} | {group['map'].mean():.3f} | {fits} | {encodes} |"
            )


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(DEEP_METHODS), help="comma-separated deep methods")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help="a parameter for every method")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--profile", metavar="METHOD", help="profile one method instead of timing")
    parser.add_argument("--profile-steps", type=int, default=40)
    parser.add_argument("--quality", action="store_true", help="CIBHash tiny vs ITQ through `hashbench run`")
    parser.add_argument("--jobs", type=int, default=1, help="--quality: hashbench's worker processes")
    parser.add_argument("--keep", type=Path, help="--quality: keep the data and results in this folder")
    parser.add_argument("--out", type=Path, help="write the timings as JSON")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}; load average {load_average()}")
    if args.quality:
        quality(args.seeds if args.seeds != "0" else "0,1,2", args.bits, args.jobs, args.keep)
        return

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default")
    started = time.perf_counter()
    images, labels = synthetic_images()
    train, everything = splits(images, labels)
    print(f"data: {len(images):,} synthetic 28×28 images in {time.perf_counter() - started:.1f} s; training split {len(train):,}")
    if args.profile:
        profile_method(args.profile, args.profile_steps, args.bits, train, everything, overrides)
        return
    reference = reference_loop(images, args.reference_steps)
    rows = []
    for name in args.methods.split(","):
        for seed in (int(value) for value in args.seeds.split(",")):
            row = time_method(name, seed, args.bits, train, everything, overrides)
            rows.append(row)
            print(
                f"{name} seed {seed}: fit {row['fit_s']:.1f} s ({row['steps']:,} steps, {row['s_per_step']:.4f} s/step, "
                f"{row['threads']} threads), encode {row['encoded']:,} in {row['encode_s']:.1f} s; load {row['load_after']}",
                flush=True,
            )
    print_table(rows, reference)
    if args.out is not None:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "reference": reference, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
