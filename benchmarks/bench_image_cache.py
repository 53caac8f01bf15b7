"""Speed of the decoded-image cache on synthetic JPEGs.

Measures (1) building the cache: decoding N JPEGs of 256×256 and resizing them to 224×224
into the memory-mapped uint8 file, with a DataLoader of W worker processes (images/s), and
(2) the data time of one CIBHash-style training epoch: every image once, in shuffled batches
of 64 at 224×224, read from the image store without the cache (JPEG decoding in a thread
pool) and with it (gathering rows of the memory map; page cache warm, as after the build).

With ``--features DEVICE`` it also times the frozen-feature cache: VGG-16 fc7 features of
every image, read from the image cache by a DataLoader (pinned memory on CUDA) and computed on
DEVICE (random VGG-16 weights: the speed is that of the ImageNet ones), and checks that the
features computed on DEVICE match a CPU computation.

Run ``python benchmarks/bench_image_cache.py`` (10,000 images, 2 workers, best of 2), or
``pytest benchmarks/bench_image_cache.py --benchmark-enable`` for a small pytest-benchmark case.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hashbench.data.images import ImageStore


def _write_one(folder: Path, path: str, index: int, size: int, seed: int) -> None:
    target = folder / path
    if target.exists():
        return
    rng = np.random.default_rng([seed, index])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, size=(3, 3))
    field = base[0] + base[1] * np.sin(6 * xs[..., None] + base[2]) * 0.3 + 60 * np.cos(9 * ys[..., None] * base[2, 0] / 255)
    pixels = np.clip(field + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target, quality=90)


def write_photo_like_jpegs(folder: Path, count: int, size: int = 256, seed: int = 0) -> list[str]:
    """Smooth colour fields plus grain: JPEGs of about the size and decoding cost of photos."""
    from concurrent.futures import ProcessPoolExecutor

    from hashbench.data.images import available_cpus

    paths = [f"images/{index // 1000:02d}/{index:06d}.jpg" for index in range(count)]
    with ProcessPoolExecutor(max_workers=available_cpus()) as pool:
        list(pool.map(_write_one, [folder] * count, paths, range(count), [size] * count, [seed] * count, chunksize=64))
    return paths


def epoch_data_time(store: ImageStore, batch_size: int, seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(store))
    start = time.perf_counter()
    for begin in range(0, order.size, batch_size):
        batch = store[np.sort(order[begin : begin + batch_size])]
        assert batch.shape[1:] == (224, 224, 3)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs (shared machines vary)")
    parser.add_argument("--work", type=Path, help="folder for the JPEGs and caches (kept); default: a temporary one")
    parser.add_argument("--features", metavar="DEVICE", help="also time the VGG-16 feature cache on DEVICE (cpu, cuda)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hashbench-bench-"))
    start = time.perf_counter()
    paths = write_photo_like_jpegs(work / "data", args.images)
    sizes = [(work / "data" / path).stat().st_size for path in paths[:200]]
    print(f"{args.images} JPEGs of 256x256 (mean {np.mean(sizes) / 1024:.0f} KiB) ready in {time.perf_counter() - start:.0f} s")

    builds, uncached, cached = [], [], []
    for repeat in range(args.repeats):
        cache = work / f"cache-{repeat}"
        shutil.rmtree(cache, ignore_errors=True)
        store = ImageStore(work / "data", paths, size=224, cache_dir=cache, workers=args.workers)
        start = time.perf_counter()
        store.cached()
        builds.append(time.perf_counter() - start)
        cached.append(epoch_data_time(store, args.batch, seed=repeat))
        plain = ImageStore(work / "data", paths, size=224, workers=args.workers)
        uncached.append(epoch_data_time(plain, args.batch, seed=repeat))
        if args.features and repeat == args.repeats - 1:
            feature_report(store, work / "features", args.features, args.workers)
        shutil.rmtree(cache, ignore_errors=True)
        print(f"run {repeat + 1}: build {builds[-1]:.1f} s, epoch without cache {uncached[-1]:.1f} s, with cache {cached[-1]:.2f} s")

    build, without, with_cache = min(builds), min(uncached), min(cached)
    print()
    print(f"| measure (best of {args.repeats}) | value |")
    print("| --- | --- |")
    print(f"| cache build, {args.images} JPEGs 256x256 -> 224x224, {args.workers} workers | {build:.1f} s = {args.images / build:.0f} images/s |")
    print(f"| epoch data time without cache (decode, {args.workers} threads), batches of {args.batch} | {without:.1f} s = {args.images / without:.0f} images/s |")
    print(f"| epoch data time with cache (memory map, page cache warm) | {with_cache:.2f} s = {args.images / with_cache:.0f} images/s |")
    print(f"| speed-up of the epoch's data time | {without / with_cache:.0f}x |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def feature_report(store: ImageStore, cache: Path, device: str, workers: int) -> None:
    import torch

    from hashbench.toolkit.backbone_features import BackboneFeatures
    from hashbench.toolkit.backbones import build_backbone, preprocess_for

    shutil.rmtree(cache, ignore_errors=True)

    def factory():
        return build_backbone("vgg16", pretrained=False), preprocess_for("vgg16")

    features = BackboneFeatures(
        store, np.arange(len(store)), dataset="synthetic", manifest_hash="0" * 64, cache_dir=cache,
        device=device, factory=factory, weights_key="vgg16-random0", workers=workers,
    )  # fmt: skip
    start = time.perf_counter()
    computed = features(np.arange(len(store)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"VGG-16 fc7 feature cache of {len(store)} images on {name}: {seconds:.1f} s = {len(store) / seconds:.0f} images/s")
    sample = np.arange(0, len(store), max(1, len(store) // 8))[:8]
    network, prepare = factory()
    with torch.inference_mode():
        reference = network.eval()(prepare(store[sample], "cpu")).numpy()
    scale = np.abs(reference).max()
    print(f"features on {device} vs CPU for {sample.size} images: max |difference| / max |feature| = {np.abs(computed[sample] - reference).max() / scale:.2e}")


def test_cached_epoch(benchmark, tmp_path):
    paths = write_photo_like_jpegs(tmp_path, 256)
    store = ImageStore(tmp_path, paths, size=224, cache_dir=tmp_path / "cache", workers=2)
    store.cached()
    benchmark(epoch_data_time, store, 64)


if __name__ == "__main__":
    main()
