"""The sampling command (`python sample.py`, `posterior-jpeg sample`): JPEG files in, posterior
samples, their mean and an uncertainty map out as PNGs, with a manifest of what was made and how."""

import argparse
import dataclasses
import glob
import io
import json
import os
import sys
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import checkpoints, explorer, export
from .metrics.fid import file_digest
from .atomic import write_atomically
from .errors import PosteriorJpegError
from .jpeg.file import JpegFile, read_jpeg
from .jpeg.projection import project
from .metrics import coefficient_agreement, consistency_rmse
from .models.generator import PAD_MULTIPLE
from .sampling import DEFAULT_OVERLAP, DEFAULT_TILE, Sampler
from .visualize import contact_sheet, std_map, to_uint8

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
MANIFEST = "manifest.jsonl"
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)

DESCRIPTION = """\
Decode JPEG files stochastically: for each file, N different plausible originals (posterior samples)
drawn by a trained generator with seeds SEED, SEED+1, ..., each projected onto the file so that,
saved as 8-bit and compressed again by libjpeg with the file's tables, it gives back the file's own
coefficients.

Outputs, in OUT:
  <stem>_s<seed>.png   one 8-bit PNG per sample (.webp / .jpg with --format webp / jpeg)
  <stem>_mean.png      --mean: the sample mean (projected too, unless --no-project), same format
  <stem>_std.png       --std: per-pixel standard deviation across samples, black (0) -> red ->
                       yellow -> white (>= 0.1, i.e. 25 gray levels)
  <stem>_grid.png      --grid: contact sheet: input decode | samples | mean | std
  manifest.jsonl       one JSON line appended per sample written: input path and sha256, seed,
                       checkpoint and sha256 of its weights, model config, projection on/off,
                       consistency_rmse and coefficient/block agreement measured on the saved
                       8-bit pixels (in the file's stored orientation), seconds taken, and the
                       format written with its written_consistency: 8-bit, partial or none
  index.html           --html: a page to flip through and zoom into every file's outputs

Formats: --format png16 writes 16-bit PNGs of the float output; webp and jpeg are lossy, so a
re-exported lossy file is NO LONGER consistent with the input JPEG (written_consistency: none).

Orientation and colour: PNGs are written the way the photo is shown, i.e. the file's EXIF
orientation is applied to the pixels (PNG viewers ignore EXIF), and the file's ICC profile is
embedded in the samples, the mean and the grid (not in the false-colour std map; none of it with
--metadata strip), the EXIF in samples and mean with its orientation set to 1. Undo the rotation
before comparing a PNG with the file's coefficients; the manifest's figures are measured that way.

Big images go through the generator in tiles of --tile pixels that overlap and are blended, then
each sample is projected as a whole: memory follows the tile size, not the image. A seed gives the
same sample whatever the batch or tile size, up to small differences near tile seams.

Inputs whose names give the same <stem> would write the same outputs: the first one in argument
order is sampled, the others are reported as failed (sample them into another -o folder). An output
that already exists is never replaced without --overwrite (its input is reported as failed). Files
are written under a temporary name and renamed when complete, so an interrupted run (Ctrl-C) leaves
only whole files. Bad inputs (not a JPEG, truncated, unsupported kind, too many pixels) are reported
as 'FILE: reason' on stderr and skipped. Exit status: 0 all done, 1 some input failed, 2 the model or
the options are unusable, 130 interrupted.
"""

EPILOG = """\
examples:
  python sample.py photo.jpg -n 4 -o out --checkpoint runs/demo --mean --std
      four samples of photo.jpg with the latest checkpoint of the run folder runs/demo, plus the
      mean and the std map
  python sample.py photos/ --recursive -n 8 -o out --checkpoint model/generator_ema.safetensors --grid
      every .jpg/.jpeg under photos/, eight samples each and a contact sheet per file
  python sample.py 'scans/*.jpg' -n 2 --seed 100 -o out --checkpoint runs/demo --quiet
      a quoted glob (expanded by sample.py itself); seeds 100 and 101; only errors are printed
  posterior-jpeg sample big.jpg -o out --checkpoint runs/demo --tile 256 --device cuda
      the same command from the installed package; smaller tiles for less GPU memory

--checkpoint takes a run folder written by train.py (its latest checkpoint), a checkpoint folder, or
a generator_ema.safetensors file with config.yaml beside it.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
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
    """Give `parser` the sampling command's help and arguments (shared by sample.py and the
    `posterior-jpeg sample` subcommand)."""
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
    parser.add_argument("--mean", action="store_true", help="also write <stem>_mean.png")
    parser.add_argument("--std", action="store_true", help="also write <stem>_std.png, the uncertainty map")
    parser.add_argument("--grid", action="store_true", help="also write <stem>_grid.png, a contact sheet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the generator runs (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="generator precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--tile", type=_tile, default=DEFAULT_TILE,
                        help=f"tile size in pixels, a multiple of 16; 0 runs whole images (default {DEFAULT_TILE})")
    parser.add_argument("--recursive", action="store_true",
                        help="descend into sub-folders of folder INPUTs ('**' in globs)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary: print errors only")
    parser.add_argument("--html", action="store_true",
                        help="at the end, write OUT/index.html: a page to flip through and zoom into every "
                             "file's decode, samples, mean and std map (no network needed)")
    export.add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return configure(argparse.ArgumentParser(prog="sample.py"))


def expand_inputs(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """Files named by INPUT arguments, in argument order without repeats, and one error line per
    argument that names nothing. Folders give their JPEG files (by extension, sorted); globs give
    every file they match (sorted), for shells that leave patterns unexpanded."""
    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            candidates = path.glob("**/*" if recursive else "*")
            found = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in JPEG_SUFFIXES)
            if not found:
                hint = "" if recursive else " (pass --recursive to look in sub-folders)"
                errors.append(f"{item}: no JPEG files ({', '.join(JPEG_SUFFIXES)}) in this folder{hint}")
        elif any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=recursive) if os.path.isfile(p))
            if not found:
                errors.append(f"{item}: no files match")
        else:
            found = []
            errors.append(f"{item}: no such file or folder")
        files.extend(found)
    unique = {}
    for path in files:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), errors


def split_name_clashes(files: list[Path]) -> tuple[list[Path], list[str]]:
    """Keep the first file of each output stem (compared case-insensitively, as some file systems
    do); an error line for each later one."""
    owners, kept, errors = {}, [], []
    for path in files:
        key = path.stem.casefold()
        if key in owners:
            errors.append(f"{path}: its outputs ({path.stem}_*.png) would replace those of {owners[key]}; "
                          "sample it into another -o folder")
        else:
            owners[key] = path
            kept.append(path)
    return kept, errors


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] in stored orientation -> as displayed under EXIF `orientation` (1-8)."""
    transforms = {
        1: lambda x: x,
        2: lambda x: x.flip(2),
        3: lambda x: x.flip(1, 2),
        4: lambda x: x.flip(1),
        5: lambda x: x.transpose(1, 2),
        6: lambda x: x.transpose(1, 2).flip(2),
        7: lambda x: x.transpose(1, 2).flip(1, 2),
        8: lambda x: x.transpose(1, 2).flip(1),
    }
    return transforms[orientation](image)


def write_png(array: np.ndarray, path: Path, icc_profile: bytes | None) -> None:
    """Write uint8 [H, W, 3] as a PNG, atomically (see `write_atomically`)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", icc_profile=icc_profile)
    write_atomically(path, buffer.getvalue())


class FileFailed(Exception):
    """One input could not be sampled; the message is the line to print."""


class CannotStart(Exception):
    """The run cannot start (no model, no CUDA, no output folder); the message says why."""


@dataclasses.dataclass
class Job:
    """What every file of a run shares."""

    sampler: Sampler
    args: argparse.Namespace
    out: Path
    checkpoint_sha256: str
    model: dict
    export: export.ExportSettings

    def outputs(self, stem: str) -> list[Path]:
        suffix = self.export.suffix
        names = [f"{stem}_s{self.args.seed + i}{suffix}" for i in range(self.args.samples)]
        names += [f"{stem}_mean{suffix}"] if self.args.mean else []
        names += [f"{stem}_{kind}.png" for kind in ("std", "grid") if getattr(self.args, kind)]
        return [self.out / name for name in names]

    def record(self, line: dict) -> None:
        with open(self.out / MANIFEST, "a", encoding="utf-8") as manifest:
            manifest.write(json.dumps(line) + "\n")


def _pixels(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> the 8-bit values a PNG stores, as uint8."""
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _save_map(image: torch.Tensor, jf: JpegFile, path: Path) -> None:
    """A false-colour map as displayed, as a PNG without the file's ICC profile (it is no photo)."""
    write_png(to_uint8(apply_orientation(image, jf.orientation)), path, None)


def sample_file(job: Job, path: Path, advance=lambda: None) -> None:
    """Sample one input and write its outputs, calling `advance` after each sample; FileFailed says
    why it could not."""
    args = job.args
    try:
        jf = read_jpeg(path)
    except PosteriorJpegError as error:
        raise FileFailed(str(error)) from None
    existing = [p for p in job.outputs(path.stem) if p.exists()]
    if existing and not args.overwrite:
        also = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileFailed(f"{path}: {existing[0]} exists{also}; pass --overwrite to replace")
    input_sha256 = file_digest(path)
    metadata = export.input_metadata(path, jf.icc_profile, job.export)
    summaries = args.mean or args.std or args.grid
    samples = []  # kept (8-bit) only for the summaries
    for sample in job.sampler.samples(jf, args.samples, args.seed, project=not args.no_project):
        began = perf_counter()
        pixels = _pixels(sample.image)
        saved = pixels.float() / 255  # measure exactly what the PNG holds, in stored orientation
        agreement = coefficient_agreement(saved, jf)
        output = job.out / f"{path.stem}_s{sample.seed}{job.export.suffix}"
        export.write_image(apply_orientation(sample.image, jf.orientation), output, job.export, metadata)
        if summaries:
            samples.append(pixels)
        job.record({
            "input": str(path),
            "input_sha256": input_sha256,
            "output": str(output),
            "seed": sample.seed,
            "checkpoint": job.sampler.source,
            "checkpoint_sha256": job.checkpoint_sha256,
            "model": job.model,
            "projected": not args.no_project,
            "consistency_rmse": consistency_rmse(saved, jf).item(),
            "coefficient_agreement": agreement.coefficients,
            "block_agreement": agreement.blocks,
            "orientation_applied": jf.orientation,
            "icc_profile_embedded": jf.icc_profile is not None,
            "tile": job.sampler.tile,
            "device": str(job.sampler.device),
            "seconds": round(sample.seconds + perf_counter() - began, 3),
            "format": job.export.format,
            "quality": job.export.quality,
            "metadata": job.export.metadata,
            "written_consistency": job.export.written_consistency(agreement.coefficients),
        })
        advance()
    if not summaries:
        return
    stack = torch.stack(samples).float() / 255
    mean = stack.mean(dim=0) if args.no_project else project(stack.mean(dim=0), jf)
    if args.mean:
        output = job.out / f"{path.stem}_mean{job.export.suffix}"
        export.write_image(apply_orientation(mean, jf.orientation), output, job.export, metadata)
    if args.std:
        _save_map(std_map(stack), jf, job.out / f"{path.stem}_std.png")
    if args.grid:
        row = [jf.decode(), *stack, mean, std_map(stack)]
        sheet = contact_sheet([[apply_orientation(image, jf.orientation) for image in row]])
        write_png(sheet, job.out / f"{path.stem}_grid.png", metadata.icc_profile)


def _prepare(args) -> Job:
    """The shared state of a run; CannotStart with the line that says why it cannot start."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CannotStart("--device cuda: CUDA is not available here (use --device cpu)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CannotStart(f"{out}: cannot create the output folder ({error.strerror or error})") from None
    try:
        settings = export.settings_from(args)
    except ValueError as error:
        raise CannotStart(str(error)) from None
    try:
        sampler = Sampler.from_checkpoint(args.checkpoint, args.device, args.dtype, tile=args.tile)
        weights, _ = checkpoints.resolve(sampler.source)
    except PosteriorJpegError as error:
        raise CannotStart(str(error)) from None
    return Job(sampler, args, out, file_digest(weights), dataclasses.asdict(sampler.generator.config), settings)


def _sample_all(args) -> int:
    files, errors = expand_inputs(args.inputs, args.recursive)
    files, clashes = split_name_clashes(files)
    errors += clashes
    for line in errors:
        print(line, file=sys.stderr)
    if not files:
        return 1
    try:
        job = _prepare(args)
    except CannotStart as error:
        print(f"sample: {error}", file=sys.stderr)
        return 2
    failed, done = len(errors), 0
    with tqdm(total=len(files) * args.samples, unit="sample", disable=args.quiet, file=sys.stderr) as bar:
        for index, path in enumerate(files, 1):
            bar.set_description(f"{index}/{len(files)} {path.name}")
            before = bar.n
            try:
                sample_file(job, path, lambda: bar.update(1))
                done += 1
            except FileFailed as error:
                tqdm.write(str(error), file=sys.stderr)
                failed += 1
            except OSError as error:  # writing: disk full, permissions, ...
                tqdm.write(f"{path}: cannot write outputs ({error})", file=sys.stderr)
                failed += 1
            except (MemoryError, torch.cuda.OutOfMemoryError):
                tqdm.write(f"{path}: out of memory on {job.sampler.device} (try a smaller --tile)", file=sys.stderr)
                failed += 1
            bar.update(before + args.samples - bar.n)  # a failed file's samples count as passed
    if args.html:
        try:
            page = explorer.write_sample_page(job.out)
            if not args.quiet:
                print(f"explorer page: {page}")
        except OSError as error:
            print(f"{job.out / explorer.PAGE}: cannot write the explorer page ({error})", file=sys.stderr)
            failed += 1
    if not args.quiet:
        print(f"sampled {done} file(s) into {job.out}" + (f"; {failed} input(s) failed" if failed else ""))
    return 1 if failed else 0


def run(args) -> int:
    """Sample every input; returns the exit status (Ctrl-C included: 130, only whole files left)."""
    try:
        return _sample_all(args)
    except KeyboardInterrupt:
        print("sample: interrupted; the outputs written so far are complete", file=sys.stderr)
        return INTERRUPTED


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
