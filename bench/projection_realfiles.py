"""Projection on real files: consistency reached and its cost against the generator's, per file.

    python bench/projection_realfiles.py [--limit N] [--kinds model noise blur sharpen] [--sigma 0.1]
                                         [--threads T] [--set key=value ...] [FILE ...]

For every file under ../shared/realfiles that read_jpeg accepts (or the FILEs given), smallest
first: draw one sample with the bundled default model (`PosteriorSampler.from_checkpoint(None)`, timed: the
reference cost), make the candidates asked for (the model sample; the decode with Gaussian noise of
`--sigma`, blurred, sharpened), project each (timed) and measure:
- agreement before / after: share of stored coefficients that a real libjpeg re-encode of the
  8-bit image reproduces (`metrics.coefficient_agreement`), and the failing blocks after;
- float violations: coefficients whose exact DCT of the float result lies outside its interval
  (`metrics.float_consistency`), and the same for its 16-bit rounding;
- given-up coefficients: those whose intervals the projection widened because the file's own
  colours leave the RGB cube there.
One JSON line per (file, candidate kind) on stdout; then one JSON line per quality band and
sampling with the summary, and the same summary as a markdown table on stderr. Bands by the mean of
the luminance table: >= 10 (IJG quality <= 91), 3.4-10 (quality 92-97), below (98-100).
"""

import argparse
import sys
import time
from collections import defaultdict

import torch

import posterior_jpeg as pj
from posterior_jpeg.jpeg.projection import projection, round_to_16_bits
from posterior_jpeg.metrics import coefficient_agreement, float_consistency

from common import REAL_FILES, emit, perturbed

BANDS = ((10.0, "luma>=10 (q<=91)"), (3.4, "luma 3.4-10 (q92-97)"), (0.0, "luma<3.4 (q98+)"))


def band(luma_mean: float) -> str:
    return next(name for floor, name in BANDS if luma_mean >= floor)


def accepted_files(paths: list[str]) -> list:
    """The files read_jpeg accepts, smallest image first; each refusal is one line on stderr."""
    files = []
    for path in paths:
        try:
            files.append(pj.read_jpeg(path, max_pixels=None))
        except pj.PosteriorJpegError as error:
            print(f"skip: {error}", file=sys.stderr)
    return sorted(files, key=lambda jf: (jf.height * jf.width, jf.source))


def summarize(records: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in records:
        groups[(r["band"], r["sampling"])].append(r)
    rows = []
    for (band_name, mode), group in sorted(groups.items()):
        rows.append(dict(
            bench="projection_realfiles_summary", band=band_name, sampling=mode, outputs=len(group),
            files=len({r["file"] for r in group}),
            agreement_after_min=min(r["agreement_after"] for r in group),
            agreement_after_mean=sum(r["agreement_after"] for r in group) / len(group),
            exact_share=sum(r["differing_coefficients"] == 0 for r in group) / len(group),
            float_violations_max=max(r["float_violations"] for r in group),
            float16_violations_max=max(r["float16_violations"] for r in group),
            given_up_total=sum(r["given_up_coefficients"] for r in group),
            projection_seconds=sum(r["projection_seconds"] for r in group),
            generator_seconds=sum(r["generator_seconds"] for r in group if r["kind"] == "model"),
        ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="JPEG files (default: every file under ../shared/realfiles)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N accepted files (smallest first)")
    parser.add_argument("--kinds", nargs="+", default=["model"], choices=["model", "noise", "blur", "sharpen"])
    parser.add_argument("--sigma", type=float, default=0.1, help="noise level of the 'noise' candidate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="projection() settings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {key: float(value) if "." in value else int(value) for key, value in (s.split("=") for s in args.set)}
    paths = args.files or sorted(str(p) for p in REAL_FILES.rglob("*.jpg"))
    if not paths:
        sys.exit(f"no JPEG files under {REAL_FILES}")
    files = accepted_files(paths)[: args.limit]
    sampler = pj.PosteriorSampler.from_checkpoint(None)
    records = []
    for jf in files:
        start = time.perf_counter()
        sample = sampler.sample(jf, n=1, seed=0, project=False)[0]
        generator_seconds = time.perf_counter() - start
        y = jf.decode()
        luma_mean = float(jf.qtables[0].mean())
        for kind in args.kinds:
            candidate = sample if kind == "model" else perturbed(y, kind, sigma=args.sigma)
            start = time.perf_counter()
            result = projection(candidate, jf, **settings)
            seconds = time.perf_counter() - start
            before, after = coefficient_agreement(candidate, jf), coefficient_agreement(result.images, jf)
            record = dict(
                bench="projection_realfiles", file=jf.source, kind=kind, width=jf.width, height=jf.height,
                megapixels=jf.width * jf.height / 1e6, sampling=jf.sampling, luma_table_mean=luma_mean,
                band=band(luma_mean), generator_seconds=generator_seconds, projection_seconds=seconds,
                ratio=seconds / generator_seconds, agreement_before=before.coefficients,
                agreement_after=after.coefficients, differing_coefficients=after.differing_coefficients,
                failing_blocks=after.differing_blocks, total_blocks=after.total_blocks,
                float_violations=float_consistency(result.floats, jf).violating_coefficients,
                float16_violations=float_consistency(round_to_16_bits(result.floats), jf).violating_coefficients,
                given_up_coefficients=int(result.given_up_coefficients),
            )
            emit(**record)
            records.append(record)
    rows = summarize(records)
    for row in rows:
        emit(**row)
    print("\n| band | sampling | files | outputs | agreement min / mean | 8-bit exact | float violations max"
          " (16-bit) | given up | projection s / generator s |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        print(f"| {r['band']} | {r['sampling']} | {r['files']} | {r['outputs']} | {r['agreement_after_min']:.6f} / "
              f"{r['agreement_after_mean']:.6f} | {100 * r['exact_share']:.0f}% | {r['float_violations_max']} "
              f"({r['float16_violations_max']}) | {r['given_up_total']} | {r['projection_seconds']:.1f} / "
              f"{r['generator_seconds']:.1f} |", file=sys.stderr)


if __name__ == "__main__":
    main()
