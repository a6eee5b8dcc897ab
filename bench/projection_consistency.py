"""Exact consistency of projected images on real photos, per quality and chroma subsampling.

    python bench/projection_consistency.py [--images 19] [--qualities 5 10 25 50 75 95]

For each photo of ../shared/data/val (cropped to odd sizes), each quality and subsampling: compress
with Pillow, make three candidates (a random perturbation of the decode, a blurred and a sharpened
decode), project them, and re-encode the 8-bit results with libjpeg. One JSON line per setting
(coefficient and block agreement before and after, consistency RMSE after), then a markdown table
on stderr. The reference is the unprojected candidates, measured the same way in the same run.
"""

import argparse
import io
import sys
import time

import numpy as np
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.metrics import coefficient_agreement, consistency_rmse

from common import SHARED_DATA, emit, perturbed


def candidates(jf, seed: int) -> torch.Tensor:
    y = jf.decode()
    return torch.stack([perturbed(y, kind, seed) for kind in ("noise", "blur", "sharpen")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=19, help="how many validation photos")
    parser.add_argument("--qualities", type=int, nargs="+", default=[5, 10, 25, 50, 75, 95])
    parser.add_argument("--modes", nargs="+", default=["4:2:0", "4:2:2", "4:4:4"])
    args = parser.parse_args()
    files = sorted((SHARED_DATA / "val").glob("*.png"))[: args.images]
    if not files:
        sys.exit(f"no photos in {SHARED_DATA / 'val'}")
    photos = []
    for path in files:
        rgb = np.array(Image.open(path).convert("RGB"))
        height, width = rgb.shape[:2]
        photos.append(np.ascontiguousarray(rgb[: height - 1 + height % 2, : width - 1 + width % 2]))  # odd sizes
    rows = []
    for mode in args.modes:
        for quality in args.qualities:
            before = after = None
            rmse = []
            start = time.perf_counter()
            for index, rgb in enumerate(photos):
                buffer = io.BytesIO()
                Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=mode)
                data = buffer.getvalue()
                jf = pj.read_jpeg(data)
                batch = candidates(jf, seed=index)
                projected = pj.project(batch, jf)
                b, a = coefficient_agreement(batch, jf), coefficient_agreement(projected, jf)
                before, after = (b, a) if before is None else (before + b, after + a)
                rmse.append(consistency_rmse(projected, jf))
            rmse = torch.cat(rmse)
            record = dict(
                bench="projection_consistency", mode=mode, quality=quality, images=len(photos), candidates=3,
                agreement_before=before.coefficients, agreement_after=after.coefficients,
                block_agreement_after=after.blocks, differing_coefficients_after=after.differing_coefficients,
                total_coefficients=after.total_coefficients, rmse_after_mean=rmse.mean().item(),
                rmse_after_max=rmse.max().item(), seconds=time.perf_counter() - start,
            )
            emit(**record)
            rows.append(record)
    print("\n| sampling | quality | agreement before | agreement after | blocks after | RMSE after (mean / max) |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['mode']} | {r['quality']} | {100 * r['agreement_before']:.3f}% | "
              f"{100 * r['agreement_after']:.4f}% | {100 * r['block_agreement_after']:.3f}% | "
              f"{r['rmse_after_mean']:.4f} / {r['rmse_after_max']:.4f} |", file=sys.stderr)


if __name__ == "__main__":
    main()
