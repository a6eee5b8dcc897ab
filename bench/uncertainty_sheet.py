"""Does the std map say where M is wrong? One picture per run: for val photos at one quality, a row
of decode | posterior mean M | one sample | |x - M| | std map of the samples, both maps on the same heat scale
(black 0, red, yellow, white at 0.1), and one JSON line per photo with its calibration figures.

    python bench/uncertainty_sheet.py [--checkpoint CKPT] [--quality 10] [--samples 8] [--photos NAME ...]
                                      [--max-side 256] [--out uncertainty.png]
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.data import libjpeg_decode, pillow_jpeg
from posterior_jpeg.metrics.calibration import calibration
from posterior_jpeg.pixels import round_to_8_bits, to_chw_float, to_hwc_uint8
from posterior_jpeg.visualize import contact_sheet, heat_map, std_map

from common import SHARED_DATA, emit
from val_yardsticks import centre_crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model (default: the bundled one)")
    parser.add_argument("--quality", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--photos", nargs="+", default=None, help="file names in --data (default: the first 3)")
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "val")
    parser.add_argument("--out", type=Path, default=Path("uncertainty.png"))
    args = parser.parse_args()
    sampler = pj.PosteriorSampler.from_checkpoint(args.checkpoint)
    rows = []
    paths = [args.data / name for name in args.photos] if args.photos else sorted(args.data.glob("*"))[:3]
    for path in paths:
        original = to_chw_float(centre_crop(path, args.max_side))
        data = pillow_jpeg(to_hwc_uint8(original), args.quality, "4:2:0")
        jpeg = pj.read_jpeg(data)
        mean = sampler.posterior_mean_of(jpeg)
        samples = round_to_8_bits(torch.stack([s.image for s in sampler.samples(jpeg, range(args.samples), posterior_mean=mean)]))
        mean = mean.cpu()
        emit(photo=path.name, quality=args.quality, **calibration(samples, mean, original).as_dict())
        error = heat_map((original - mean).abs())
        rows.append([to_chw_float(libjpeg_decode(data)), mean.clamp(0, 1), samples[0], error, std_map(samples)])
    Image.fromarray(contact_sheet(rows)).save(args.out)
    print(f"uncertainty_sheet: {args.out} (rows: decode | M | sample | |x - M| | std of {args.samples} samples)")


if __name__ == "__main__":
    main()
