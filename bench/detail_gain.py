"""What the amplitude of S's detail does to the yardsticks: samples M + a (G(z) - M) for several gains a,
on the validation photos at one quality, unprojected (projection moves them by a fraction of a gray
level), rounded to 8 bits.

    python bench/detail_gain.py [--gains 0.4 0.5 0.6 0.8 1.0] [--quality 10] [--checkpoint CKPT] [--limit N]

One JSON line per gain: psnr (dB, first sample), hf_in (texture ratio), std (per-pixel std of two
samples, gray levels), naturalness (Frechet distance of MSCN patch statistics to the originals'), and
var_over_err: per 8x8 tile, the samples' luma variance over M's squared luma error, for the tiles
where M's error is in the lowest quarter, the middle half and the highest quarter (an ideal sampler:
1, 1, 1). Gain 1 is the shipped sampler. Photos as `bench/val_yardsticks.py` prepares them.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import posterior_jpeg as pj
from posterior_jpeg.metrics import naturalness_distance, psnr, texture_ratio
from posterior_jpeg.metrics.psnr import luma
from posterior_jpeg.data import pillow_jpeg
from posterior_jpeg.pixels import round_to_8_bits, to_chw_float, to_hwc_uint8

from common import SHARED_DATA, emit
from val_yardsticks import centre_crop

TILE = 8


def tile_means(plane: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(plane, TILE).flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gains", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.8, 1.0])
    parser.add_argument("--quality", type=int, default=10)
    parser.add_argument("--checkpoint", default=None, help="model to measure (default: the bundled one)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "val", help="folder of original photos")
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos")
    args = parser.parse_args()

    sampler = pj.PosteriorSampler.from_checkpoint(args.checkpoint)
    if sampler.posterior_mean_network is None:
        sys.exit("detail_gain: the model has no posterior-mean network M")
    files = sorted(p for p in args.data.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[: args.limit]
    photos = []  # (original, M, two samples), unprojected
    for path in files:
        original = to_chw_float(centre_crop(path))
        jpeg = pj.read_jpeg(pillow_jpeg(to_hwc_uint8(original), args.quality, "4:2:0"))
        photos.append((original, sampler.posterior_mean_decode(jpeg, project=False), sampler.sample(jpeg, n=2, seed=0, project=False)))
        print(f"detail_gain: {path.name}", file=sys.stderr, flush=True)

    errors = torch.cat([tile_means((luma(o[None]) - luma(m[None])).mul(255).pow(2)) for o, m, _ in photos])
    low, high = torch.quantile(errors, torch.tensor([0.25, 0.75]))
    band = torch.bucketize(errors, torch.stack([low, high]))
    for gain in args.gains:
        outputs, variances, figures = [], [], []
        for original, mean, samples in photos:
            pair = round_to_8_bits((mean + gain * (samples - mean)).clamp(0, 1))
            outputs.append(pair[0])
            variance = (luma(pair[:1]) - luma(pair[1:])).mul(255).pow(2) / 2
            variances.append(tile_means(variance))
            figures.append((psnr(pair[:1], original[None]).item(), texture_ratio(pair[0], original).item(),
                            variance.mean().sqrt().item()))
        variances = torch.cat(variances)
        ratios = [(variances[band == b].mean() / errors[band == b].mean()).item() for b in range(3)]
        psnrs, textures, stds = np.mean(figures, axis=0)
        emit(quality=args.quality, gain=gain, n=len(photos), psnr=psnrs, hf_in=textures, std=stds,
             naturalness=naturalness_distance(outputs, [o for o, _, _ in photos]), var_over_err=ratios)


if __name__ == "__main__":
    main()
