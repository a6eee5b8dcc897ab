"""The differentiable codec against libjpeg on real photos: share of identical quantized coefficients
per quality and subsampling, and decode error against libjpeg's decode, with kornia's codec as the
reference in the same run.

    python bench/codec_agreement.py [--images 6]
"""

import argparse
import sys

import kornia
import numpy as np
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.data import libjpeg_decode, pillow_jpeg
from posterior_jpeg.jpeg import codec, tables
from posterior_jpeg.pixels import to_chw_float

from common import SHARED_DATA, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    files = sorted((SHARED_DATA / "val").glob("*.png"))[: args.images]
    if not files:
        sys.exit(f"no photos in {SHARED_DATA / 'val'}")
    photos = [np.array(Image.open(f).convert("RGB")) for f in files]
    for mode in ("4:4:4", "4:2:2", "4:2:0"):
        for quality in (5, 10, 25, 50, 75, 95):
            same = total = 0
            for rgb in photos:
                jf = pj.read_jpeg(pillow_jpeg(rgb, quality, mode))
                ours = codec.encode(to_chw_float(rgb)[None], torch.from_numpy(jf.qtables).float(), mode)
                for a, b in zip(ours, jf.coefficient_tensors()):
                    same += int((a.long() == b).sum())
                    total += b.numel()
            emit(bench="codec_agreement", mode=mode, quality=quality, images=len(photos), identical=same / total)
    for quality in (10, 50, 90):
        errors = []
        for rgb in photos:
            rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 16 * 16, : rgb.shape[1] // 16 * 16])  # kornia: x16
            data = pillow_jpeg(rgb, quality, "4:2:0")
            libjpeg = to_chw_float(libjpeg_decode(data))[None] * 255
            x = to_chw_float(rgb)[None]
            ours = codec.roundtrip(x, torch.from_numpy(tables.ijg_tables(quality)).float(), "4:2:0")[1] * 255
            theirs = kornia.enhance.jpeg_codec_differentiable(x, torch.tensor([float(quality)])) * 255
            errors.append([(ours - libjpeg).abs().mean().item(), (theirs - libjpeg).abs().mean().item()])
        ours_error, kornia_error = np.mean(errors, axis=0)
        emit(bench="codec_decode_vs_libjpeg", mode="4:2:0", quality=quality, ours_mean_abs=ours_error,
             reference="kornia.enhance.jpeg_codec_differentiable", reference_mean_abs=kornia_error,
             ratio=kornia_error / ours_error)


if __name__ == "__main__":
    main()
