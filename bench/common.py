"""Shared helpers for the benchmarks: JSON-line output, timing, test images."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from posterior_jpeg.pixels import to_chw_float, to_hwc_uint8

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# ../shared/realfiles beside the repo (as in CI); POSTERIOR_JPEG_REALFILES points elsewhere (a worktree)
REAL_FILES = Path(os.environ.get("POSTERIOR_JPEG_REALFILES") or SHARED_DATA.parent / "realfiles")


def emit(**record) -> None:
    """One JSON line per figure on stdout."""
    print(json.dumps(record), flush=True)


def loader_seconds(loader, warmup: int, batches: int) -> float:
    """Seconds a data loader takes for `batches` batches after `warmup` untimed ones, each batch's
    8-bit images turned into floats on the training side, as the trainer does."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        for value in next(iterator).values():
            if isinstance(value, torch.Tensor) and value.dtype == torch.uint8:
                value.float().div_(255)
    return time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), to print beside every timing."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown"


def best_time(function, repeats: int = 3, synchronize: bool = False) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other work on the machine)."""
    times = []
    for _ in range(repeats):
        if synchronize:
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def photo(height: int, width: int) -> np.ndarray:
    """A natural photo of the requested size: a real image from ../shared/data tiled (mirrored) to
    size, or a synthetic one when the data is absent."""
    files = sorted((SHARED_DATA / "val").glob("*.png")) if SHARED_DATA.exists() else []
    if files:
        tile = np.array(Image.open(files[0]).convert("RGB"))
        tile = np.concatenate([tile, tile[::-1]], axis=0)
        tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
        reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
        return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])
    print("bench: ../shared/data not found, using a synthetic image", file=sys.stderr)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([128 + 100 * np.sin(9 * x + 3 * y), 128 + 90 * np.cos(7 * y), 100 + 80 * x], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def perturbed(y: torch.Tensor, kind: str, seed: int = 0, sigma: float = 0.04) -> torch.Tensor:
    """A candidate made from a decode y [3, H, W] in [0, 1]: "noise" (Gaussian, `sigma`), "blur"
    (Gaussian, radius 1.5) or "sharpen" (unsharp mask, radius 2, 150%), in [0, 1]."""
    if kind == "noise":
        return (y + sigma * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
    from PIL import ImageFilter

    image = Image.fromarray(to_hwc_uint8(y))
    filtered = image.filter({"blur": ImageFilter.GaussianBlur(1.5), "sharpen": ImageFilter.UnsharpMask(2, 150)}[kind])
    return to_chw_float(np.array(filtered))
