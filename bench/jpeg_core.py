"""Throughput of the JPEG core, each against a reference measured in the same run.

    python bench/jpeg_core.py [--device cpu|cuda] [--megapixels 12]

Figures (JSON lines): read + decode vs Pillow's libjpeg decode; the differentiable codec vs kornia's
(forward, and forward + backward); one projection pass and a full project() vs a per-block
NumPy/SciPy projection.
"""

import argparse
import io
import time

import kornia
import numpy as np
import scipy.fft
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.data import pillow_jpeg
from posterior_jpeg.jpeg import codec, projection, tables
from posterior_jpeg.jpeg.color import rgb_to_ycbcr
from posterior_jpeg.jpeg.projection.intervals import cut_tiles, file_tensors
from posterior_jpeg.pixels import to_chw_float

from common import best_time, emit, photo


def bench_read_decode(data: bytes, megapixels: float, device: str) -> None:
    ours = best_time(lambda: pj.read_jpeg(data, max_pixels=None).decode(device=device), synchronize=device == "cuda")
    pillow = best_time(lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    emit(bench="read_decode", device=device, megapixels=megapixels, ours_mp_s=megapixels / ours,
         reference="pillow libjpeg decode", reference_mp_s=megapixels / pillow, ratio=pillow / ours)


def bench_codec(device: str, batch: int, size: int) -> None:
    """Differentiable encode + decode at 4:2:0 with IJG tables, where kornia's codec applies."""
    rgb = photo(size, size * batch)
    x = to_chw_float(rgb).reshape(3, size, batch, size).permute(2, 0, 1, 3)
    x = x.contiguous().to(device)
    quality = 50
    q = torch.from_numpy(tables.ijg_tables(quality)).float().to(device)
    kq = torch.full((batch,), float(quality), device=device)
    megapixels = batch * size * size / 1e6
    sync = device == "cuda"
    for label, grad in (("forward", False), ("forward_backward", True)):
        def ours():
            image = x.clone().requires_grad_(grad)
            out = codec.roundtrip(image, q, "4:2:0")[1]
            if grad:
                out.mean().backward()

        def theirs():
            image = x.clone().requires_grad_(grad)
            out = kornia.enhance.jpeg_codec_differentiable(image, kq)
            if grad:
                out.mean().backward()

        with torch.set_grad_enabled(grad):
            ours(), theirs()  # warm-up
            t_ours, t_theirs = best_time(ours, synchronize=sync), best_time(theirs, synchronize=sync)
        emit(bench=f"codec_{label}", device=device, batch=batch, size=size, ours_mp_s=megapixels / t_ours,
             reference="kornia.enhance.jpeg_codec_differentiable", reference_mp_s=megapixels / t_theirs,
             ratio=t_theirs / t_ours)


def numpy_projection_pass(ycc: np.ndarray, jf) -> np.ndarray:
    """Reference: the paper's projection, block by block with SciPy's DCT (luma only, 4:4:4 logic)."""
    out = ycc.copy()
    q = jf.qtables[0].astype(np.float64)
    stored = jf.coefficients[0]
    for i in range(ycc.shape[1] // 8):
        for j in range(ycc.shape[2] // 8):
            block = out[0, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8] - 128
            coefficients = scipy.fft.dctn(block, norm="ortho")
            clamped = np.clip(coefficients, (stored[i, j] - 0.5) * q, (stored[i, j] + 0.5) * q)
            out[0, i * 8 : i * 8 + 8, j * 8 : j * 8 + 8] = scipy.fft.idctn(clamped, norm="ortho") + 128
    return out


def bench_projection(data: bytes, megapixels: float, device: str) -> None:
    jf = pj.read_jpeg(data, max_pixels=None)
    y = jf.decode(device=device)
    candidate = (y + 0.02 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(device)).clamp(0, 1)
    region, tiles, intervals = cut_tiles(candidate[None] * 255, jf, *file_tensors(jf, device))[0]
    bounds = intervals.bounds(0.5, torch.float32)
    ycc = rgb_to_ycbcr(tiles)
    tile_mp = tiles.shape[0] * tiles.shape[-1] * tiles.shape[-2] / 1e6
    sync = device == "cuda"

    def one_pass():
        projection.gamut_projection(projection.interval_projection(ycc, intervals.mode, bounds))

    one_pass()
    t_pass = best_time(one_pass, synchronize=sync)
    # reference on a 512x512 crop (it is slow), scaled to megapixels per second
    crop = rgb_to_ycbcr(candidate[None, :, :512, :512].cpu().double() * 255)[0].numpy()
    start = time.perf_counter()
    numpy_projection_pass(crop, jf)
    t_reference = time.perf_counter() - start
    reference_mp_s = (512 * 512 / 1e6) / t_reference
    emit(bench="projection_pass", device=device, megapixels=tile_mp, ours_mp_s=tile_mp / t_pass,
         reference="per-block SciPy DCT projection, luma only", reference_mp_s=reference_mp_s,
         ratio=(tile_mp / t_pass) / reference_mp_s)
    start = time.perf_counter()
    projected = pj.project(candidate, jf)
    if sync:
        torch.cuda.synchronize()
    t_full = time.perf_counter() - start
    agreement = pj.metrics.coefficient_agreement(projected.cpu(), jf) if megapixels <= 16 else None
    emit(bench="project_full", device=device, megapixels=megapixels, seconds=t_full, ours_mp_s=megapixels / t_full,
         reference="per-block SciPy DCT projection pass", reference_mp_s=reference_mp_s,
         ratio=(megapixels / t_full) / reference_mp_s,
         coefficient_agreement=None if agreement is None else agreement.coefficients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the test photo (4:3)")
    parser.add_argument("--codec-batch", type=int, default=8)
    parser.add_argument("--codec-size", type=int, default=256)
    args = parser.parse_args()
    height = int(round((args.megapixels * 1e6 * 3 / 4) ** 0.5))
    width = int(round(height * 4 / 3))
    data = pillow_jpeg(photo(height, width), 50, "4:2:0")
    megapixels = height * width / 1e6
    bench_read_decode(data, megapixels, args.device)
    bench_codec(args.device, args.codec_batch, args.codec_size)
    bench_projection(data, megapixels, args.device)


if __name__ == "__main__":
    main()
