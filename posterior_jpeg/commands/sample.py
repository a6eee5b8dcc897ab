"""`sample`: decode JPEG files into posterior samples, their sample mean and an uncertainty map (also
`python sample.py`). The parser builds a `SampleOptions` for the sampling job."""

import argparse
import dataclasses
import os
import sys

from ..options import DEFAULT_QUALITY, FORMATS, MAX_GRID_SAMPLES, MAX_SUMMARY_SAMPLES, SEED_LIMIT, SampleOptions
from ..precision import PRECISIONS
from ..tiling import DEFAULT_OVERLAP, DEFAULT_TILE, PAD_MULTIPLE
from .common import Renamed

NAME = "sample"
HELP = "decode JPEG files into posterior samples (PNGs)"

DESCRIPTION = """\
Decode JPEG files stochastically: for each file, N different plausible originals (posterior samples)
drawn by a trained generator with seeds SEED, SEED+1, ..., each projected onto the file so that,
saved as 8-bit and compressed again by libjpeg with the file's tables, it gives back the file's own
coefficients.

Outputs, in OUT:
  <stem>_s<seed>.png   one 8-bit PNG per sample
  <stem>_mean.png      --sample-mean: the mean of the samples (projected too, unless --no-project)
  <stem>_mmse.png      --posterior-mean: the posterior-mean decode M(y, q), the best-PSNR output (projected
                       too, unless --no-project), from models that have M (the bundled one does)
  <stem>_std.png       --std: per-pixel standard deviation across samples, black (0) -> red ->
                       yellow -> white (>= 0.1, i.e. 25 gray levels)
  <stem>_grid.png      --grid: contact sheet: input decode | samples | mean | std
  manifest.jsonl       one JSON line appended per output written: kind (sample, mean, std,
                       grid), input path and sha256, seed (seeds of a summary), checkpoint and
                       sha256 of its weights, model config, projection on/off, libjpeg's warnings,
                       seconds; for samples, consistency_rmse and coefficient/block agreement
                       measured on the saved 8-bit pixels (in the file's stored orientation). The
                       last record of an output describes it. Samples and the mean also record
                       the format written and its written_consistency: 8-bit, float, partial
                       or none; projected outputs also record failing_blocks, differing_coefficients
                       and float_consistency / float_violations (their float result).
  index.html           --html: a page to flip through and zoom into every file's outputs

Consistency, two levels: "8-bit" = the saved 8-bit image, re-compressed by libjpeg with the file's
tables and sampling, gives back every coefficient of the file; "float" = the exact DCT of the float
result (before 8-bit rounding) lies inside every quantization interval. Projection always reaches
float; 8-bit is searched for and reached on nearly all files (README: "Measured"). A file with an
output that is not 8-bit exact gets one line on stderr (not with --quiet); --strict makes it a failure.

Formats: --format png16 writes 16-bit PNGs of the float result (float-consistent where its colours
lie in the RGB cube: written_consistency "float"); webp and jpeg are lossy, so a re-exported lossy
file is NO LONGER consistent with the input JPEG (written_consistency: none).

Orientation and colour: PNGs are written the way the photo is shown, i.e. the file's EXIF
orientation is applied to the pixels (PNG viewers ignore EXIF), and the file's ICC profile is
embedded in the samples, the mean and the grid (not in the false-colour std map). Undo the rotation
before comparing a PNG with the file's coefficients; the manifest's figures are measured that way.

Big images go through the generator in tiles of --tile pixels that overlap and are blended, then
each sample is projected as a whole: memory follows the tile size, not the image. Nor does it
follow -n: samples are drawn, written and released one by one, and the mean and std map are kept as
running sums; a contact sheet (--grid) holds at most 64 samples and --sample-mean / --std summarise at
most 100000 (refused up front beyond), and SEED + N - 1 must stay below 2^64. A seed gives the
same file whatever -n and wherever a run was resumed (on one machine, precision and --tile); another
--tile changes it only near tile seams.

Grayscale files give grayscale outputs: one channel through the generator's luma, the projection
and the PNGs (mode L); the std map and the grid stay in colour.

Batch runs resume: running the same command again completes exactly the outputs that are missing
(after Ctrl-C, a kill, a full disk) and keeps those the manifest records as made from the same input
with the same seed, checkpoint and projection, unchanged since (their sha256). An existing output
that the manifest does not record that way is never replaced without --overwrite (its input is
reported as failed); --overwrite makes everything again. Files are written under a temporary name
and renamed when complete, each one's manifest record appended (one whole line) just before its
rename, so an interrupted run leaves only whole files and whole lines; temporaries of killed runs
are removed by the next run. One run at a time writes into OUT: a second one is refused while the
first runs (OUT/.posterior-jpeg.lock holds its pid; a lock left by a dead process is taken over).
No write follows a link inside OUT: a link where an output, the manifest, the lock or thumbs/ should
be is refused with one line (OUT itself may be a link). Inputs in OUT that its manifest records as
outputs are skipped with a note (a folder sampled into itself); an input of the run is never
replaced, not even with --overwrite.

Inputs whose names give the same <stem> would write the same outputs: the first one in argument
order is sampled, the others are reported as failed (sample them into another -o folder). Bad inputs
(not a JPEG, truncated, unsupported kind, too many pixels) are reported as 'FILE: reason' on stderr
and skipped. libjpeg's warnings about a file (corrupt data it decoded anyway, tables too coarse for
a baseline re-encode) are printed as 'FILE: warning: ...' (not with --quiet) and listed in every
manifest record of that file. Exit status: 0 all done, 1 some input failed, 2 the model, the options
or OUT are unusable (another run holds it), 130 interrupted.
"""

EPILOG = """\
examples:
  python sample.py photo.jpg -n 4 -o out --checkpoint runs/demo --sample-mean --std
      four samples of photo.jpg with the latest checkpoint of the run folder runs/demo, plus the
      sample mean and the std map
  python sample.py photos/ --recursive -n 8 -o out --checkpoint model/generator_ema.safetensors --grid
      every .jpg/.jpeg under photos/, eight samples each and a contact sheet per file
  python sample.py 'scans/*.jpg' -n 2 --seed 100 -o out --checkpoint runs/demo --quiet
      a quoted glob (expanded by sample.py itself); seeds 100 and 101; only errors are printed
  posterior-jpeg sample big.jpg -o out --checkpoint runs/demo --tile 256 --device cuda
      the same command from the installed package; smaller tiles for less GPU memory

--checkpoint takes a run folder written by train.py (its latest checkpoint), a checkpoint folder, or
a generator_ema.safetensors file with model.yaml (or, written before model.yaml existed,
config.yaml) beside it. A checkpoint that cannot be used stops the run with one line, exit status 2.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^64), got {value}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be 1-100, got {value}")
    return value


def _tile(text: str) -> int:
    value = int(text)
    smallest = 2 * DEFAULT_OVERLAP
    if value != 0 and (value % PAD_MULTIPLE or value < smallest):
        raise argparse.ArgumentTypeError(
            f"must be 0 (no tiling) or a multiple of 16 of at least {smallest}, got {value}"
        )
    return value


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` the sampling command's help and arguments (sample.py and `posterior-jpeg sample`)."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="JPEG files, folders or glob patterns")
    parser.add_argument("-n", "--samples", type=_positive, default=8, help="samples per file (default 8)")
    parser.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder (created if missing)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the first sample; sample i uses SEED+i (default 0)")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="run folder, checkpoint folder or weights file (default: the bundled model)")
    parser.add_argument("--no-project", action="store_true",
                        help="keep the generator's raw outputs (not exactly consistent with the file)")
    parser.add_argument("--sample-mean", action="store_true", help="also write <stem>_mean.png, the mean of the samples")
    parser.add_argument("--posterior-mean", action="store_true",
                        help="also write <stem>_mmse.png: the posterior-mean decode M (the best-PSNR output, "
                             "projected unless --no-project); needs a model with M, like the bundled one")
    parser.add_argument("--std", action="store_true", help="also write <stem>_std.png, the uncertainty map")
    parser.add_argument("--grid", action="store_true", help="also write <stem>_grid.png, a contact sheet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the generator runs (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", *PRECISIONS), default="auto",
                        help="precision of the networks; the projection is always fp32/fp64, so every output stays exact "
                             "(default auto: bf16 with channels_last on cuda and on CPUs that multiply bf16 "
                             "natively, AMX or AVX512-BF16 or Arm BF16; fp32 on other CPUs, where bf16 is slower)")
    parser.add_argument("--tile", type=_tile, default=DEFAULT_TILE,
                        help=f"tile size in pixels, a multiple of 16; 0 runs whole images (default {DEFAULT_TILE})")
    parser.add_argument("--posterior-mean-flips", type=int, choices=(1, 2, 4), default=4,
                        help="runs of the posterior-mean network M per file, on the image and its flips, averaged "
                             "(default 4: the best decode at every quality; 1 runs M once, the fast setting; "
                             "README: Measured)")
    parser.add_argument("--mean", action=Renamed, new="--sample-mean", dest="sample_mean", nargs=0)
    parser.add_argument("--mmse", action=Renamed, new="--posterior-mean", dest="posterior_mean", nargs=0)
    parser.add_argument("--mean-flips", action=Renamed, new="--posterior-mean-flips", dest="posterior_mean_flips",
                        type=int, choices=(1, 2, 4))
    parser.add_argument("--recursive", action="store_true",
                        help="descend into sub-folders of folder INPUTs ('**' in globs), never through links to folders")
    parser.add_argument("--overwrite", action="store_true",
                        help="make every output again (default: keep those a previous run recorded, make the missing)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar, summary or warnings: print errors only (warnings stay in the manifest)")
    parser.add_argument("--strict", action="store_true",
                        help="a file with a projected output that is not 8-bit exact counts as failed (exit 1; "
                             "its outputs are still written and recorded)")
    parser.add_argument("--html", action="store_true",
                        help="at the end, write OUT/index.html: a page to flip through and zoom into every "
                             "file's decode, samples, mean and std map (no network needed)")
    add_export_arguments(parser)
    parser.set_defaults(run=run)
    return parser


EXPORT_HELP = {
    "format": "file format of the samples and the mean: png (8-bit, default), png16 (16-bit PNG of the "
              "float-consistent result), webp or jpeg (lossy: a re-exported lossy file is NO LONGER consistent "
              "with the input; the manifest's written_consistency says 'none')",
    "quality": f"quality 1-100 of webp and jpeg (default {DEFAULT_QUALITY}); jpeg is written progressive "
               "with optimized Huffman tables",
    "metadata": "keep (default): embed the input's ICC profile and its EXIF, with the orientation tag "
                "set to 1 since the rotation is applied to the pixels; strip: embed neither",
}


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """--format, --quality and --metadata, read back by `export.settings_from`."""
    parser.add_argument("--format", choices=FORMATS, default="png", help=EXPORT_HELP["format"])
    parser.add_argument("--quality", type=_quality, metavar="Q", help=EXPORT_HELP["quality"])
    parser.add_argument("--metadata", choices=("keep", "strip"), default="keep", help=EXPORT_HELP["metadata"])


def options(args: argparse.Namespace) -> SampleOptions:
    """The parsed command line as the job's typed options."""
    return SampleOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(SampleOptions)})


def combination_error(args: argparse.Namespace) -> str | None:
    """What makes options that are each fine unusable together, or None. Memory follows the tile
    size, not -n (samples are written and released one by one), except for a contact sheet, which
    holds all of its samples, and the seed lists of summary records."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"-o {args.out}: is a file, not a folder"
    if args.seed + args.samples > SEED_LIMIT:
        return f"--seed {args.seed} -n {args.samples}: the last seed would pass 2^64 - 1"
    if args.grid and args.samples > MAX_GRID_SAMPLES:
        return f"--grid: a contact sheet holds at most {MAX_GRID_SAMPLES} samples, -n is {args.samples}"
    if (args.sample_mean or args.std) and args.samples > MAX_SUMMARY_SAMPLES:
        return f"--sample-mean and --std summarise at most {MAX_SUMMARY_SAMPLES} samples, -n is {args.samples}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = combination_error(args)
    if problem is not None:
        print(f"sample: error: {problem}", file=sys.stderr)
        return 2
    from ..sample_job import run as run_job  # torch: after parsing

    return run_job(options(args))


def build_parser() -> argparse.ArgumentParser:
    return configure(argparse.ArgumentParser(prog="sample.py"))


def main(argv=None) -> int:
    """`python sample.py`."""
    args = build_parser().parse_args(argv)
    return args.run(args)
