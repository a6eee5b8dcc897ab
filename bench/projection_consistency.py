"""Exact consistency of projected images on real photos, per quality and chroma subsampling.

    python bench/projection_consistency.py [--images 19] [--qualities 5 10 25 50 75 95]
    python bench/projection_consistency.py --exact [--images 19] [--qualities 10 50 75]
    python bench/projection_consistency.py --megapixel [--threads 1]

For each photo of ../shared/data/val (cropped to odd sizes), each quality and subsampling: compress
with Pillow, make three candidates (a random perturbation of the decode, a blurred and a sharpened
decode), project them, and re-encode the 8-bit results with libjpeg. One JSON line per setting
(coefficient and block agreement before and after, consistency RMSE after), then a markdown table
on stderr. The reference is the unprojected candidates, measured the same way in the same run.

--exact: issue 21's target. Two crops of odd size (61x97, 130x77) of each photo; candidates the
decode plus noise of sigma 0.08, a 5x5 box blur and a Gaussian blur (radius 1.5) of the photo. The
photo is an exact 8-bit answer, so every projection must reach agreement 1.0. One JSON line per
(sampling, quality, kind): agreement before and after (min over the outputs), outputs not exact.

--megapixel: the projection's time on a 1 MP photo (quality 30 and 75, 4:2:0; a noisy decode and a
box blur) against the time of the bundled model's sample of the same file (no projection) in the
same process: the projection must not become the bottleneck of sampling. With the CPU's model.
"""

import argparse
import sys
import time

import numpy as np
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.data import pillow_jpeg
from posterior_jpeg.metrics import coefficient_agreement, consistency_rmse

from common import SHARED_DATA, cpu_model, emit, perturbed, photo

EXACT_SIZES = ((61, 97), (77, 130))  # height, width: one and two real columns in the last luma blocks


def candidates(jf, seed: int) -> torch.Tensor:
    y = jf.decode()
    return torch.stack([perturbed(y, kind, seed) for kind in ("noise", "blur", "sharpen")])


def exact_candidates(rgb: np.ndarray, jf, seed: int) -> dict[str, torch.Tensor]:
    """Issue 21's candidates: the decode plus noise of sigma 0.08, a 5x5 box and a Gaussian blur of
    the photo itself (not of the decode)."""
    from PIL import ImageFilter

    y = jf.decode()
    image = Image.fromarray(rgb)
    as_tensor = lambda filtered: torch.from_numpy(np.array(filtered)).permute(2, 0, 1).float() / 255  # noqa: E731
    return {
        "noise": (y + 0.08 * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1),
        "box5": as_tensor(image.filter(ImageFilter.BoxBlur(2))),
        "gaussian": as_tensor(image.filter(ImageFilter.GaussianBlur(1.5))),
    }


def exact(files: list, qualities: list[int], modes: list[str]) -> None:
    """--exact: see the module docstring."""
    crops = []  # (photo crop, noise seed)
    for path in files:
        rgb = np.array(Image.open(path).convert("RGB"))
        height, width = rgb.shape[:2]
        for k, (h, w) in enumerate(EXACT_SIZES):
            top, left = (height - h) // (2 + k), (width - w) // (3 - k)
            crops.append(np.ascontiguousarray(rgb[top : top + h, left : left + w]))
    rows = []
    for mode in modes:
        for quality in qualities:
            figures = {}
            start = time.perf_counter()
            for seed, rgb in enumerate(crops):
                jf = pj.read_jpeg(pillow_jpeg(rgb, quality, mode))
                for kind, candidate in exact_candidates(rgb, jf, seed).items():
                    before = coefficient_agreement(candidate, jf).coefficients
                    after = coefficient_agreement(pj.project(candidate, jf), jf).coefficients
                    figures.setdefault(kind, []).append((before, after))
            seconds = time.perf_counter() - start
            for kind, pairs in figures.items():
                record = dict(
                    bench="projection_exact", mode=mode, quality=quality, kind=kind, outputs=len(pairs),
                    agreement_before_min=min(b for b, _ in pairs), agreement_after_min=min(a for _, a in pairs),
                    not_exact=sum(a < 1.0 for _, a in pairs), seconds_all_kinds=seconds, cpu=cpu_model(),
                )
                emit(**record)
                rows.append(record)
    print("\n| sampling | quality | candidate | agreement before (min) | agreement after (min) | outputs not exact |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['mode']} | {r['quality']} | {r['kind']} | {r['agreement_before_min']:.4f} | "
              f"{r['agreement_after_min']:.6f} | {r['not_exact']} of {r['outputs']} |", file=sys.stderr)


def megapixel() -> None:
    """--megapixel: see the module docstring."""
    rgb = photo(1000, 1000)
    sampler = pj.PosteriorSampler.from_checkpoint(None)
    for quality in (30, 75):
        jf = pj.read_jpeg(pillow_jpeg(rgb, quality, "4:2:0"))
        start = time.perf_counter()
        sampler.sample(jf, n=1, seed=0, project=False)
        generator_seconds = time.perf_counter() - start
        for kind, candidate in exact_candidates(rgb, jf, seed=0).items():
            if kind == "gaussian":
                continue
            start = time.perf_counter()
            projected = pj.project(candidate, jf)
            seconds = time.perf_counter() - start
            emit(bench="projection_megapixel", quality=quality, kind=kind, megapixels=1.0, projection_seconds=seconds,
                 generator_seconds=generator_seconds, ratio=seconds / generator_seconds,
                 agreement_after=coefficient_agreement(projected, jf).coefficients, threads=torch.get_num_threads(),
                 cpu=cpu_model())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=19, help="how many validation photos")
    parser.add_argument("--qualities", type=int, nargs="+", help="default 5 10 25 50 75 95; with --exact 10 50 75")
    parser.add_argument("--modes", nargs="+", default=["4:2:0", "4:2:2", "4:4:4"])
    parser.add_argument("--exact", action="store_true", help="issue 21's grid (see above); qualities default to 10 50 75")
    parser.add_argument("--megapixel", action="store_true", help="the projection's time on 1 MP (see above)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.megapixel:
        return megapixel()
    files = sorted((SHARED_DATA / "val").glob("*.png"))[: args.images]
    if not files:
        sys.exit(f"no photos in {SHARED_DATA / 'val'}")
    if args.exact:
        return exact(files, args.qualities or [10, 50, 75], args.modes)
    args.qualities = args.qualities or [5, 10, 25, 50, 75, 95]
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
                data = pillow_jpeg(rgb, quality, mode)
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
