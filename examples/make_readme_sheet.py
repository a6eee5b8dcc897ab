"""Rebuild examples/chelsea_q10_sheet.png, the README's picture: a 2x crop of the bundled example
decoded by the default model, as input | posterior mean M | 3 projected samples | their mean |
per-pixel std map.
Also prints, for the whole image, the blockiness of the decode and of the samples, the samples'
per-pixel std and their coefficient agreement with the file.

    python examples/make_readme_sheet.py [--checkpoint CKPT] [--out examples/chelsea_q10_sheet.png]
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from posterior_jpeg import read_jpeg
from posterior_jpeg.metrics import blockiness, coefficient_agreement, per_pixel_std
from posterior_jpeg.pixels import round_to_8_bits
from posterior_jpeg.sampler import PosteriorSampler
from posterior_jpeg.visualize import contact_sheet, posterior_row

HERE = Path(__file__).parent
CROP = (50, 120, 160, 200)  # top, left, height, width: the cat's eyes
ZOOM = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="run, checkpoint or weights file (default: the bundled model)")
    parser.add_argument("--out", type=Path, default=HERE / "chelsea_q10_sheet.png")
    args = parser.parse_args()
    jpeg = read_jpeg(HERE / "chelsea_q10.jpg")
    sampler = PosteriorSampler.from_checkpoint(args.checkpoint)
    samples = sampler.sample(jpeg, n=3, seed=0)
    mean_decode = sampler.posterior_mean_decode(jpeg)
    y = round_to_8_bits(jpeg.decode())
    top, left, height, width = CROP

    def zoom(images: torch.Tensor) -> torch.Tensor:
        crop = images[..., top : top + height, left : left + width]
        return F.interpolate(crop, scale_factor=ZOOM, mode="nearest")

    row = posterior_row(zoom(y[None])[0], zoom(samples))
    row.insert(1, zoom(mean_decode[None])[0])
    Image.fromarray(contact_sheet([row])).save(args.out)
    print(f"wrote {args.out}")
    print(f"blockiness: libjpeg decode {blockiness(y[None]):.2f}, samples {blockiness(samples):.2f}; "
          f"per-pixel std {per_pixel_std(samples):.4f}; "
          f"coefficient agreement {coefficient_agreement(samples, jpeg).coefficients:.6f}")


if __name__ == "__main__":
    main()
