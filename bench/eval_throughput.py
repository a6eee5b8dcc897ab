"""Evaluation throughput: FID feature extraction and a whole evaluation job, in images per second.

    python bench/eval_throughput.py [--device cpu|cuda] [--images 32] [--size 256] [--generator demo]
        [--val] [--repeats 8] [--samples 8] [--reference CHECKOUT] [--rounds 1]

1. Feature extraction: our `InceptionFeatures` on in-memory images against pytorch-fid's own path
   (`get_activations`: PNG files -> ImagePathDataset -> DataLoader -> the same InceptionV3) on the same
   images and the same weights, in the same run; the ratio is the figure to read (these machines are
   noisy). The largest feature difference between the two paths is printed as a check.
2. A whole evaluation (methods jpeg, ours, ours_p, ours_a; reference statistics computed, not cached)
   with an untrained generator of the chosen preset: test images per second and per FID repeat, and
   the share of its time that the Inception forwards alone would take at the measured rate. With
   --reference, the same job (same images, model, seeds and config) also runs on the package of
   another checkout (e.g. a copy of main: `git archive main | tar -x -C /tmp/main`), each side in a
   fresh process, alternated --rounds times; ratio = reference seconds / ours (best of each), and
   the largest relative difference between the two jobs' figures (every metric of every row and each
   FID repeat) says whether they still measure the same thing.
Test images: --size x --size crops of a natural photo, or with --val the first --images files of
../shared/data/val (data.crop=--size; 0 for mod16, the images as they are).
Weights: pytorch-fid's FID Inception and the LPIPS backbone from $POSTERIOR_JPEG_WEIGHTS or torch's hub
cache when present, else random ones (timing does not depend on the values; such FIDs are never reported here).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_fid.fid_score import get_activations

from posterior_jpeg.checkpoints import save_inference_files
from posterior_jpeg.config import load_config
from posterior_jpeg.evaluate import load_image
from posterior_jpeg.errors import MissingWeightsError
from posterior_jpeg.metrics.fid import RANDOM, InceptionFeatures
from posterior_jpeg.pretrained import locate
from posterior_jpeg.models.generator import PRESETS, build_generator
from posterior_jpeg.pixels import to_chw_float
from posterior_jpeg.metrics.registry import table_metrics

from common import SHARED_DATA, best_time, emit, photo


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


# Runs one evaluation job on the posterior_jpeg package of sys.argv[1] (a checkout) with the overrides
# in sys.argv[2:]; prints {"seconds", "rows"} as its last line.
JOB = """
import contextlib, json, sys, time
sys.path.insert(0, sys.argv[1])
from posterior_jpeg.evaluate import evaluate, load_eval_config
cfg = load_eval_config(None, sys.argv[2:])
started = time.perf_counter()
with contextlib.redirect_stdout(sys.stderr):
    results = evaluate(cfg, print_table=False)
print(json.dumps({"seconds": time.perf_counter() - started, "rows": results["rows"]}))
"""


def timed_job(checkout: Path, overrides: list[str]) -> dict:
    """One evaluation job in a fresh process on `checkout`'s package: its seconds (the job alone,
    not the imports) and its table rows."""
    result = subprocess.run([sys.executable, "-c", JOB, str(checkout), *overrides], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench: the evaluation on {checkout} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def largest_difference(ours: list[dict], reference: list[dict]) -> float:
    """Largest relative difference between two jobs' figures, row by row (same rows expected)."""
    if [(r["checkpoint"], r["method"]) for r in ours] != [(r["checkpoint"], r["method"]) for r in reference]:
        raise SystemExit("bench: the two jobs give different rows")
    pairs = []
    for a, b in zip(ours, reference):
        names = (*(metric.name for metric in table_metrics()), "fid", "images")
        pairs += [(a[name], b[name]) for name in names if a[name] is not None or b[name] is not None]
        pairs += list(zip(a["fid_repeats"], b["fid_repeats"], strict=True))
    if any(x is None or y is None for x, y in pairs):
        raise SystemExit("bench: a figure measured by one job only")
    return max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in pairs)


def available(name: str) -> bool:
    """Whether the real weights file is where the evaluation job looks for it."""
    try:
        locate(name)
    except MissingWeightsError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=32, help="test images")
    parser.add_argument("--size", type=int, default=256, help="test image side (pixels)")
    parser.add_argument("--batch", type=int, default=32, help="Inception batch size")
    parser.add_argument("--generator", default="demo", choices=sorted(PRESETS), help="generator preset (untrained)")
    parser.add_argument("--repeats", type=int, default=8, help="FID repeats in the whole evaluation")
    parser.add_argument("--samples", type=int, default=8, help="samples per image for Ours-A and diversity")
    parser.add_argument("--val", action="store_true", help="test images: the first --images of ../shared/data/val")
    parser.add_argument("--reference", type=Path, help="another checkout to run the same evaluation on")
    parser.add_argument("--rounds", type=int, default=1, help="alternated runs of each side with --reference")
    args = parser.parse_args()
    args.batch = min(args.batch, args.images)  # pytorch-fid warns about a batch larger than the data
    device = torch.device(args.device)
    synchronize = device.type == "cuda"
    inception_weights = None if available("inception") else RANDOM
    lpips_weights = None if available("alexnet") else RANDOM
    if RANDOM in (inception_weights, lpips_weights):
        print("bench: pretrained feature weights not found, timing with random ones", file=sys.stderr)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "images").mkdir()
        if args.val:
            files = sorted((SHARED_DATA / "val").glob("*.png"))[: args.images]
            if len(files) < args.images:
                raise SystemExit(f"bench: --val needs {args.images} images in {SHARED_DATA / 'val'}")
            crop = str(args.size) if args.size else "mod16"
            for path in files:
                (scratch / "images" / path.name).symlink_to(path)
            files = sorted((scratch / "images").iterdir())
        else:
            files = write_images(scratch / "images", args.images, args.size)
            crop = "full"
        images = [to_chw_float(load_image(p, crop)) for p in files]
        features = InceptionFeatures(inception_weights).to(device)

        def ours():
            return torch.cat([features(images[i : i + args.batch]) for i in range(0, len(images), args.batch)])

        def pytorch_fid():
            return get_activations([str(p) for p in files], features.net, batch_size=args.batch, device=device,
                                   num_workers=0)

        if args.val:  # pytorch-fid reads the files as they are, uncropped: no like-for-like comparison
            ours()  # the warm-up
            ours_s = min(best_time(ours, repeats=1, synchronize=synchronize) for _ in range(3))
        else:
            difference = float(np.abs(ours().numpy() - pytorch_fid()).max())  # also the warm-up
            ours_s = reference_s = float("inf")
            for _ in range(3):  # alternated, so that both see the same load on a shared machine
                ours_s = min(ours_s, best_time(ours, repeats=1, synchronize=synchronize))
                reference_s = min(reference_s, best_time(pytorch_fid, repeats=1, synchronize=synchronize))
            emit(figure="fid_features", device=str(device), images=args.images, size=args.size, batch=args.batch,
                 weights="pretrained" if inception_weights is None else "random",
                 ours_images_per_s=args.images / ours_s, pytorch_fid_images_per_s=args.images / reference_s,
                 ratio=reference_s / ours_s, max_feature_difference=difference)

        tiny = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
        tiny.generator = PRESETS[args.generator]
        (scratch / "model").mkdir()
        generator = build_generator(tiny.generator)
        save_inference_files(scratch / "model", generator, tiny)
        overrides = [
            f"checkpoints=[{scratch / 'model'}]", "methods=[jpeg,ours,ours_p,ours_a]",
            f"data.ground_truth={scratch / 'images'}", f"data.crop={crop}", f"repeats={args.repeats}",
            f"samples={args.samples}", f"features.inception={inception_weights or 'null'}",
            f"features.lpips={lpips_weights or 'null'}", f"features.batch_size={args.batch}",
            f"fid_cache={scratch / 'cache'}", f"out_dir={scratch / 'out'}", f"device={device.type}", "progress=false"]
        checkout = Path(__file__).resolve().parents[1]
        ours_runs, reference_runs = [], []
        for _ in range(args.rounds if args.reference else 1):  # alternated: both see the same load
            ours_runs.append(timed_job(checkout, overrides))
            if args.reference:
                reference_runs.append(timed_job(args.reference.resolve(), overrides))
        seconds = min(run["seconds"] for run in ours_runs)
        # Inception forwards: reference + jpeg + Ours-A once, ours and ours_p every repeat
        forwards = args.images * (3 + 2 * args.repeats)
        emit(figure="full_evaluation", device=str(device), images=args.images, size=args.size, val=args.val,
             generator=args.generator, parameters=sum(p.numel() for p in generator.parameters()),
             repeats=args.repeats, samples=args.samples, seconds=seconds,
             test_images_per_s_per_repeat=args.images * args.repeats / seconds,
             inception_share=forwards / (args.images / ours_s) / seconds)
        if args.reference:
            reference_seconds = min(run["seconds"] for run in reference_runs)
            emit(figure="full_evaluation_against_reference", reference=str(args.reference), rounds=args.rounds,
                 seconds=seconds, reference_seconds=reference_seconds, ratio=reference_seconds / seconds,
                 all_seconds=[run["seconds"] for run in ours_runs],
                 all_reference_seconds=[run["seconds"] for run in reference_runs],
                 max_relative_figure_difference=largest_difference(ours_runs[0]["rows"], reference_runs[0]["rows"]))


if __name__ == "__main__":
    main()
