"""Evaluation throughput: FID feature extraction and a whole evaluation job, in images per second.

    python bench/eval_throughput.py [--device cpu|cuda] [--images 32] [--size 256] [--generator demo]

1. Feature extraction: our `InceptionFeatures` on in-memory images against pytorch-fid's own path
   (`get_activations`: PNG files -> ImagePathDataset -> DataLoader -> the same InceptionV3) on the same
   images and the same weights, in the same run; the ratio is the figure to read (these machines are
   noisy). The largest feature difference between the two paths is printed as a check.
2. A whole evaluation (methods jpeg, ours, ours_p, ours_a; reference statistics computed, not cached)
   with an untrained generator of the chosen preset: test images per second and per FID repeat, and
   the share of its time that the Inception forwards alone would take at the measured rate.
Weights: pytorch-fid's FID Inception and the LPIPS backbone from torch's hub cache when present, else
random ones (timing does not depend on the values; such FIDs are never reported here).
"""

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_fid.fid_score import get_activations

from posterior_jpeg.checkpoints import save_inference_files
from posterior_jpeg.config import load_config
from posterior_jpeg.evaluate import evaluate, load_eval_config
from posterior_jpeg.metrics.fid import RANDOM, InceptionFeatures, inception_cache_path
from posterior_jpeg.metrics.perceptual import backbone_cache_path
from posterior_jpeg.models.generator import PRESETS, build_generator
from posterior_jpeg.pixels import to_chw_float

from common import best_time, emit, photo


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """`count` different size x size crops of a natural photo, as PNG files."""
    big = photo(size * 4, size * 4)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        top, left = rng.integers(0, 3 * size, 2)
        path = folder / f"image_{i:04d}.png"
        Image.fromarray(big[top : top + size, left : left + size]).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=32, help="test images")
    parser.add_argument("--size", type=int, default=256, help="test image side (pixels)")
    parser.add_argument("--batch", type=int, default=32, help="Inception batch size")
    parser.add_argument("--generator", default="demo", choices=sorted(PRESETS), help="generator preset (untrained)")
    parser.add_argument("--repeats", type=int, default=2, help="FID repeats in the whole evaluation")
    args = parser.parse_args()
    args.batch = min(args.batch, args.images)  # pytorch-fid warns about a batch larger than the data
    device = torch.device(args.device)
    synchronize = device.type == "cuda"
    inception_weights = None if inception_cache_path().is_file() else RANDOM
    lpips_weights = None if backbone_cache_path("alex").is_file() else RANDOM
    if RANDOM in (inception_weights, lpips_weights):
        print("bench: pretrained feature weights not in the hub cache, timing with random ones", file=sys.stderr)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        files = write_images(scratch / "images", args.images, args.size)
        images = torch.stack([to_chw_float(np.array(Image.open(p))) for p in files])
        features = InceptionFeatures(inception_weights).to(device)

        def ours():
            return torch.cat([features(images[i : i + args.batch]) for i in range(0, len(images), args.batch)])

        def reference():
            return get_activations([str(p) for p in files], features.net, batch_size=args.batch, device=device,
                                   num_workers=0)

        difference = float(np.abs(ours().numpy() - reference()).max())  # also the warm-up
        ours_s = reference_s = float("inf")
        for _ in range(3):  # alternated, so that both see the same load on a shared machine
            ours_s = min(ours_s, best_time(ours, repeats=1, synchronize=synchronize))
            reference_s = min(reference_s, best_time(reference, repeats=1, synchronize=synchronize))
        emit(figure="fid_features", device=str(device), images=args.images, size=args.size, batch=args.batch,
             weights="pretrained" if inception_weights is None else "random",
             ours_images_per_s=args.images / ours_s, pytorch_fid_images_per_s=args.images / reference_s,
             ratio=reference_s / ours_s, max_feature_difference=difference)

        tiny = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
        tiny.generator = PRESETS[args.generator]
        (scratch / "model").mkdir()
        generator = build_generator(tiny.generator)
        save_inference_files(scratch / "model", generator, tiny)
        samples = 2
        cfg = load_eval_config(None, [
            f"checkpoints=[{scratch / 'model'}]", "methods=[jpeg,ours,ours_p,ours_a]",
            f"data.ground_truth={scratch / 'images'}", "data.crop=full", f"repeats={args.repeats}",
            f"samples={samples}", f"features.inception={inception_weights or 'null'}",
            f"features.lpips={lpips_weights or 'null'}", f"features.batch_size={args.batch}",
            f"fid_cache={scratch / 'cache'}", f"out_dir={scratch / 'out'}", f"device={device.type}", "progress=false"])
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the job prints its table; stdout is for JSON lines
            evaluate(cfg)
        if synchronize:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        # Inception forwards: reference + jpeg + Ours-A once, ours and ours_p every repeat
        forwards = args.images * (3 + 2 * args.repeats)
        emit(figure="full_evaluation", device=str(device), images=args.images, size=args.size,
             generator=args.generator, parameters=sum(p.numel() for p in generator.parameters()),
             repeats=args.repeats, samples=samples, seconds=seconds,
             test_images_per_s_per_repeat=args.images * args.repeats / seconds,
             inception_share=forwards / (args.images / ours_s) / seconds)


if __name__ == "__main__":
    main()
