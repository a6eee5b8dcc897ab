"""Rebuild examples/val_crops_q10.png, MODEL_CARD.md's picture: for the first photos of the val set,
compressed by libjpeg at quality 10 (4:2:0), the most textured 96x96 window of each (the one whose
original has the highest luma Laplacian energy, so the crops show where decoders differ most),
zoomed 2x, as original | libjpeg | posterior mean M | 3 projected samples | per-pixel std map.

    python examples/make_model_card_crops.py [--checkpoint CKPT] [--photos 6] [--data DIR]
"""

import argparse
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.jpeg.color import rgb_to_gray
from posterior_jpeg.pixels import round_to_8_bits, to_chw_float
from posterior_jpeg.sampler import PosteriorSampler
from posterior_jpeg.visualize import contact_sheet, std_map

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data" / "val"
WINDOW, ZOOM, QUALITY, MAX_SIDE = 96, 2, 10, 512


def most_textured_window(original: torch.Tensor) -> tuple[int, int]:
    """(top, left) of the WINDOW x WINDOW window, on a 16-pixel grid, with the most luma Laplacian energy."""
    luma = rgb_to_gray(original[None])[0, 0]
    laplacian = 4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    energy = F.avg_pool2d(F.pad(laplacian.square(), (1, 1, 1, 1))[None, None], WINDOW, stride=16)[0, 0]
    row, col = divmod(int(energy.argmax()), energy.shape[1])
    return 16 * row, 16 * col


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="run, checkpoint or weights file (default: the bundled model)")
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=HERE / "val_crops_q10.png")
    args = parser.parse_args()
    sampler = PosteriorSampler.from_checkpoint(args.checkpoint)
    rows = []
    for path in sorted(args.data.glob("*.png"))[: args.photos]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        left, top = (width - min(width, MAX_SIDE)) // 2, (height - min(height, MAX_SIDE)) // 2
        image = image.crop((left, top, left + min(width, MAX_SIDE), top + min(height, MAX_SIDE)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=QUALITY, subsampling="4:2:0")
        jpeg = pj.read_jpeg(buffer.getvalue())
        original = to_chw_float(np.array(image))
        samples = sampler.sample(jpeg, n=3, seed=0)
        top, left = most_textured_window(original)
        views = [original, round_to_8_bits(jpeg.decode()), sampler.posterior_mean_decode(jpeg), *samples, std_map(samples)]
        rows.append([F.interpolate(v[None, :, top : top + WINDOW, left : left + WINDOW].expand(-1, 3, -1, -1),
                                   scale_factor=ZOOM, mode="nearest")[0] for v in views])
    Image.fromarray(contact_sheet(rows)).save(args.out)
    print(f"wrote {args.out}: original | libjpeg | M | 3 samples | std map, {len(rows)} photos")


if __name__ == "__main__":
    main()
