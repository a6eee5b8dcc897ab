"""Every yardstick on the validation photos, per quality and decoder: the figures of
../shared/peers/README.md and the weight-free yardsticks of issue 13.

    python bench/val_yardsticks.py [--qualities 10 30 90] [--checkpoint CKPT] [--samples 4] [--no-model]
                                   [--mean-flips 4] [--dtype auto] [--data DIR] [--peers FILE] [--limit N]
                                   [--max-side 512]

Each photo of --data (default ../shared/data/val) is centre-cropped to at most 512x512, converted
to RGB (a grayscale photo becomes a 3-component file with flat chroma) and saved by Pillow
(libjpeg) with 4:2:0 sampling at each quality. Decoders: "libjpeg" (Pillow's decode), "mmse" (the
model's posterior-mean decode M, projected, when the model has one), "sample"
(the model's first projected sample, seed 0) and "meanK" (the mean of its K projected samples,
seeds 0..K-1, projected again, as `sample.py --mean` writes it), the model being --checkpoint or, without it, the bundled default; "ground truth"
is the original itself (only the figures that need no reference). Every output is rounded to 8
bits (what a user saves) before it is measured.

One JSON line per (quality, decoder), means over the photos of per-photo figures. Every metric
declared in posterior_jpeg/metrics/registry.py that a single output, its file and its original suffice
for is measured, under its registered name except psnr_rgb (here "psnr") and coefficient_agreement
("agreement", here the mean of each photo's share):
  psnr, psnr_y        dB against the original (RGB; luma)
  agreement           share of the file's coefficients a libjpeg re-encode of the output reproduces
  consistency_rmse    gray levels between the decodes of that re-encode and of the file
  blockiness          1 = no block grid
  hf, hf_in           texture ratio: luma Laplacian energy over the original's, everywhere / inside 8x8 blocks
  chroma_cb, chroma_cr  PSNR of Cb and Cr, over the colour photos only
  rgb_luma_gap        PSNR-Y - PSNR, over the grayscale photos only (0 = no colour added)
  peak2, peak4, peak8 spectral peak over the local median at that period (largest orientation);
                      *_max: the largest over the photos
and beside them, from the model's samples:
  naturalness         Frechet distance of MSCN patch statistics to the originals' (one figure per set)
  std                 per-pixel std of the K samples, gray levels (model rows)
  rms_to_mmse         RMS difference from the model's M, gray levels (sample and mean rows; "do no harm")
  calibration*, rank_corr, psnr_gap   the samples' spread around M against M's true error (sample row;
                      see posterior_jpeg/metrics/calibration.py): residual energy ratio overall, by
                      quartile of M's error over 8x8 tiles (_q1.._q4), by frequency band (_low, _mid,
                      _high), the tile rank correlation, PSNR(mean of K) - PSNR(one) and its ideal;
                      *_exchangeable: the quartiles and rank correlation the original would score
                      if it were one more sample (a perfect sampler scores these, not 1)
With --peers (default ../shared/peers/val.json, when present) a second line per decoder that the peers
measured too (libjpeg, ground truth; the model's rows only for the bundled model) sets their figures
beside ours.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.data import libjpeg_decode, pillow_jpeg
from posterior_jpeg.pixels import round_to_8_bits, to_chw_float, to_hwc_uint8
from posterior_jpeg.metrics import is_gray, naturalness_distance, per_pixel_std
from posterior_jpeg.metrics.calibration import calibration
from posterior_jpeg.metrics.registry import METRICS, Subject

from common import SHARED_DATA, emit

MAX_SIDE = 512
PEERS = SHARED_DATA.parent / "peers" / "val.json"
# our decoder names -> the peers' (val.json "method"); the model's only for the bundled model
PEER_METHODS = {"libjpeg": "libjpeg", "ground truth": "ground truth"}
PEER_MODEL_METHODS = {"sample": "ours sample", "mean4": "ours mean4"}
PEER_FIGURES = ("psnr", "psnr_y", "agreement", "blockiness", "hf", "hf_in", "std")
KEYS = {"psnr_rgb": "psnr", "coefficient_agreement": "agreement"}  # the names the peers' val.json uses


def centre_crop(path: Path, side: int = MAX_SIDE) -> np.ndarray:
    """uint8 [H, W, 3]: the photo as RGB, centre-cropped to at most side x side."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    crop_w, crop_h = min(width, side), min(height, side)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return np.array(image.crop((left, top, left + crop_w, top + crop_h)))


def measure(output: torch.Tensor, jpeg: pj.JpegFile | None = None, original: torch.Tensor | None = None) -> dict:
    """Every registered metric that one 8-bit output [3, H, W] has what it needs for (its file and
    original, where given; no samples, no M, no LPIPS), each summed up over this one photo."""
    subject = Subject(output[None], file=jpeg, original=None if original is None else original[None])
    return {KEYS.get(metric.name, metric.name): metric.summary([metric.measure(subject)])
            for metric in METRICS.values() if metric.applies(subject)}


def summarize(per_photo: list[dict]) -> dict:
    """Means over the photos that have each figure (with the counts of the partial ones), and the
    largest periodic peaks."""
    keys = {key for figures in per_photo for key in figures}
    summary = {"n": len(per_photo)}
    for key in sorted(keys):
        values = [figures[key] for figures in per_photo if key in figures]
        summary[key] = float(np.mean(values))
        if key.startswith("peak") or key == "rms_to_mmse":
            summary[f"{key}_max"] = float(np.max(values))
        if len(values) != len(per_photo):
            summary[f"n_{key}"] = len(values)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qualities", type=int, nargs="+", default=[10, 30, 90])
    parser.add_argument("--checkpoint", default=None, help="model to measure (default: the bundled one)")
    parser.add_argument("--samples", type=int, default=4, help="samples per photo (the mean row needs 2 or more)")
    parser.add_argument("--no-model", action="store_true", help="libjpeg and ground truth only")
    parser.add_argument("--mean-flips", type=int, choices=(1, 2, 4), default=4, help="as sample.py --mean-flips")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto", help="as sample.py --dtype")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "val", help="folder of original photos")
    parser.add_argument("--peers", type=Path, default=PEERS, help="the peers' val.json, to set beside ours")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE, help="centre crops of at most this side")
    args = parser.parse_args()

    files = sorted(p for p in args.data.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[: args.limit]
    if not files:
        sys.exit(f"val_yardsticks: no photos in {args.data} (pass --data DIR)")
    sampler = None if args.no_model else pj.PosteriorSampler.from_checkpoint(args.checkpoint, dtype=args.dtype,
                                                                            posterior_mean_flips=args.mean_flips)
    peers = json.loads(args.peers.read_text())["summary"] if args.peers.is_file() else []
    peer_methods = dict(PEER_METHODS, **(PEER_MODEL_METHODS if args.checkpoint is None else {}))
    originals = [to_chw_float(centre_crop(path, args.max_side)) for path in files]
    grays = [is_gray(original).item() for original in originals]
    print(f"val_yardsticks: {len(files)} photos from {args.data} ({sum(grays)} grayscale), "
          f"model {'none' if sampler is None else sampler.source}, mean_flips {args.mean_flips}", file=sys.stderr)

    for quality in args.qualities:
        figures: dict[str, list[dict]] = {"ground truth": [measure(original) for original in originals]}
        outputs: dict[str, list[torch.Tensor]] = {}
        for original in originals:
            data = pillow_jpeg(to_hwc_uint8(original), quality, "4:2:0")
            jpeg = pj.read_jpeg(data)
            decoded = {"libjpeg": to_chw_float(libjpeg_decode(data))}
            spread, mean, calibrated = None, None, {}
            if sampler is not None and sampler.posterior_mean_network is not None:
                mean = sampler.posterior_mean_of(jpeg)
                decoded["mmse"] = round_to_8_bits(sampler.posterior_mean_decode(jpeg, posterior_mean=mean))  # the posterior mean M, projected
            if sampler is not None:
                samples = round_to_8_bits(torch.stack([s.image for s in sampler.samples(jpeg, range(args.samples),
                                                                                         posterior_mean=mean)]))
                decoded["sample"] = samples[0]
                if mean is not None:
                    calibrated = calibration(samples, mean.cpu(), original).as_dict()
                if args.samples > 1:
                    decoded[f"mean{args.samples}"] = pj.project(samples.mean(dim=0), jpeg)  # as sample.py --mean
                    spread = per_pixel_std(samples) * 255
            for method, output in decoded.items():
                row = measure(output, jpeg, original)
                if spread is not None and method not in ("libjpeg", "mmse"):
                    row["std"] = spread
                if method == "sample":
                    row.update(calibrated)
                if "mmse" in decoded and method not in ("libjpeg", "mmse"):
                    row["rms_to_mmse"] = ((output - decoded["mmse"]) * 255).pow(2).mean().sqrt().item()
                figures.setdefault(method, []).append(row)
                outputs.setdefault(method, []).append(output)

        for method, per_photo in figures.items():
            summary = summarize(per_photo)
            if method in outputs:
                summary["naturalness"] = naturalness_distance(outputs[method], originals)
            dtype = {} if sampler is None else {"dtype": str(sampler.dtype).removeprefix("torch.")}
            emit(quality=quality, method=method, **dtype, **summary)
            peer = next((s for s in peers if s["quality"] == quality and s["method"] == peer_methods.get(method)), None)
            if peer is not None and peer["n"] == summary["n"]:  # the same photos, not a --limit subset
                emit(quality=quality, method=method, compare="peers/val.json",
                     **{key: [summary[key], peer[key]] for key in PEER_FIGURES if key in summary and peer.get(key) is not None})


if __name__ == "__main__":
    main()
