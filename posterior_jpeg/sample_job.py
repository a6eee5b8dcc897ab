"""The sampling job behind `python sample.py` and `posterior-jpeg sample` (whose parser is
`commands.sample`): JPEG files in, posterior samples, their sample mean and an uncertainty map out as PNGs,
with a manifest of what was made and how."""

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import checkpoints, explorer, export
from .atomic import Folder, FolderLock, file_digest
from .errors import FolderBusyError, LibjpegWarning, PosteriorJpegError, SymlinkError, printable
from .jpeg.file import JpegFile, read_jpeg
from .jpeg.projection import projection, round_to_16_bits
from .manifest import MANIFEST, read_manifest
from .metrics import Agreement, eight_bit_consistency, float_consistency
from .options import SampleOptions
from .precision import Precision, choose_precision
from .sampler import PosteriorSampler, resolve_device
from .pixels import to_hwc_uint8, to_uint8, to_unit_float
from .visualize import contact_sheet, heat_map

JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)

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
            try:
                found = _glob(item, recursive)
            except ValueError as error:  # "a**b": ** must be a whole part of the path
                found = []
                errors.append(f"{item}: {error}")
            else:
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


def _glob(pattern: str, recursive: bool) -> list[Path]:
    """The files a glob pattern matches, sorted. `**` (with --recursive; else it is `*`) descends into
    sub-folders but never through a link to a folder, so a pattern stays inside the tree it names."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    rest = "/".join(parts[first:])
    if not recursive:
        rest = rest.replace("**", "*")
    return sorted(p for p in Path(*parts[:first]).glob(rest) if p.is_file())


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


_TRANSFORMS = {
    1: lambda x: x,
    2: lambda x: x.flip(2),
    3: lambda x: x.flip(1, 2),
    4: lambda x: x.flip(1),
    5: lambda x: x.transpose(1, 2),
    6: lambda x: x.transpose(1, 2).flip(2),
    7: lambda x: x.transpose(1, 2).flip(1, 2),
    8: lambda x: x.transpose(1, 2).flip(1),
}
_INVERSE = {6: 8, 8: 6}  # the quarter turns undo each other; every other transform undoes itself


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] in stored orientation -> as displayed under EXIF `orientation` (1-8)."""
    return _TRANSFORMS[orientation](image)


def undo_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] as displayed under EXIF `orientation` -> in stored orientation."""
    return _TRANSFORMS[_INVERSE.get(orientation, orientation)](image)


class FileFailed(Exception):
    """One input could not be sampled; the message is the line to print."""


class CannotStart(Exception):
    """The run cannot start (no model, no CUDA, no output folder); the message says why."""


@dataclasses.dataclass
class Job:
    """What every file of a run shares."""

    sampler: PosteriorSampler
    precision: Precision  # as decided once for the run, printed and recorded with every output
    args: SampleOptions
    out: Path
    folder: Folder  # OUT, held open: every write goes through it (see atomic.Folder)
    checkpoint_sha256: str
    model: dict
    recorded: dict  # output file name -> its last manifest record
    export: export.ExportSettings
    inputs: set = dataclasses.field(default_factory=set)  # (st_dev, st_ino) of this run's inputs: never replaced

    def _recipe(self, input_sha256: str, exported: bool = True) -> dict:
        args = self.args
        common = {"input_sha256": input_sha256, "checkpoint_sha256": self.checkpoint_sha256,
                  "projected": not args.no_project, "dtype": self.precision.name}
        if exported:
            common.update(format=self.export.format, quality=self.export.quality, metadata=self.export.metadata)
        return common

    def sample_output(self, stem: str, seed: int) -> Path:
        return self.out / f"{stem}_s{seed}{self.export.suffix}"

    def sample_recipe(self, seed: int, input_sha256: str) -> dict:
        """A sample's recipe, the record fields that make it what it is: a rerun keeps an existing
        output whose last manifest record has the same recipe and the file's sha256 (so a file
        replaced since, or one a killed run never renamed, is not kept)."""
        return {"kind": "sample", "seed": seed, **self._recipe(input_sha256)}

    def summary_plan(self, stem: str, input_sha256: str) -> dict[Path, dict]:
        """The outputs of an input other than its samples (posterior mean, sample mean, std, grid, as
        asked), with their recipes (see `sample_recipe`)."""
        args = self.args
        suffix = self.export.suffix
        plan = {}
        if args.posterior_mean:
            plan[self.out / f"{stem}_mmse{suffix}"] = {"kind": "mmse", **self._recipe(input_sha256)}
        if not (args.sample_mean or args.std or args.grid):
            return plan
        seeds = list(range(args.seed, args.seed + args.samples))  # at most MAX_SUMMARY_SAMPLES (the parser)
        if args.sample_mean:
            plan[self.out / f"{stem}_mean{suffix}"] = {"kind": "mean", "seeds": seeds, **self._recipe(input_sha256)}
        for kind in ("std", "grid"):
            if getattr(args, kind):
                plan[self.out / f"{stem}_{kind}.png"] = {"kind": kind, "seeds": seeds,
                                                         **self._recipe(input_sha256, exported=False)}
        return plan

    def existing_seeds(self, stem: str, seeds: range) -> list[int]:
        """The seeds of `seeds` whose sample of `stem` has an entry in OUT, from one listing of OUT:
        -n may ask for billions of samples, and memory and time must not follow it."""
        prefix, suffix = f"{stem}_s", self.export.suffix
        found = []
        for name in os.listdir(self.folder.descriptor):
            digits = name[len(prefix):len(name) - len(suffix)]
            if (name.startswith(prefix) and name.endswith(suffix) and digits.isascii() and digits.isdigit()
                    and str(int(digits)) == digits and int(digits) in seeds):
                found.append(int(digits))
        return sorted(found)

    def is_recorded(self, output: Path, recipe: dict) -> bool:
        record = self.recorded.get(output.name, {})
        if any(record.get(key) != value for key, value in recipe.items()):
            return False
        return record.get("output_sha256") == file_digest(output)

    def write(self, output: Path, data: bytes, line: dict, began: float) -> None:
        """Write one output file's bytes atomically, appending its manifest record (`line` with the
        file's sha256 and the seconds since `began`) just before the rename makes it visible."""
        record = {**line, "output_sha256": hashlib.sha256(data).hexdigest()}

        def append() -> None:
            record["seconds"] = round(perf_counter() - began, 3)
            self.folder.append_line(MANIFEST, json.dumps(record))
            self.recorded[output.name] = record

        self.folder.write(output.name, data, before_rename=append)


@contextlib.contextmanager
def libjpeg_warnings(found: list[str]):
    """Collect the text of the LibjpegWarnings raised inside into `found`; other warnings go on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LibjpegWarning)
        yield
    for warning in caught:
        if isinstance(warning.message, LibjpegWarning):
            found.append(warning.message.text)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _kept_sample(output: Path, jf: JpegFile) -> torch.Tensor:
    """A sample a previous run wrote (its sha256 checked), back as uint8 [C, H, W] in the file's
    stored orientation (for the summaries; a lossy export comes back with its losses)."""
    with Image.open(output) as image:
        array = np.array(image.convert("L" if image.mode in ("L", "I;16", "I") else "RGB"))
    return undo_orientation(torch.from_numpy(array).reshape(*array.shape[:2], -1).permute(2, 0, 1), jf.orientation)


def sample_file(job: Job, path: Path, advance=lambda count=1: None, warn=lambda line: None) -> int:
    """Sample one input: write its missing outputs (every output with --overwrite), calling
    `advance` for each sample made or kept and `warn` with each new warning line. Returns how many
    files it wrote (0: complete already); FileFailed says why it could not."""
    args = job.args
    try:
        jf = read_jpeg(path)
    except PosteriorJpegError as error:
        raise FileFailed(str(error)) from None
    input_sha256 = file_digest(path)
    seeds = range(args.seed, args.seed + args.samples)
    summaries = job.summary_plan(path.stem, input_sha256)
    existing = {job.sample_output(path.stem, seed): job.sample_recipe(seed, input_sha256)
                for seed in job.existing_seeds(path.stem, seeds)}
    existing.update({output: recipe for output, recipe in summaries.items() if job.folder.lstat(output.name)})
    links = [output for output in existing if output.is_symlink()]
    if links:
        raise FileFailed(str(SymlinkError(links[0])))
    inputs = [output for output in existing if _identity(job.folder.lstat(output.name)) in job.inputs]
    if inputs:
        raise FileFailed(f"{path}: its output {inputs[0]} would replace an input of this run; inputs are never "
                         "replaced, not even with --overwrite (sample into another -o folder)")
    kept = set() if args.overwrite else {output for output, recipe in existing.items()
                                         if job.is_recorded(output, recipe)}
    foreign = [output for output in existing if output not in kept and not args.overwrite]
    if foreign:
        also = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise FileFailed(f"{path}: {foreign[0]} exists{also} and {MANIFEST} does not record it as made from this "
                         "input with these options; pass --overwrite to replace")
    metadata = export.input_metadata(path, jf.icc_profile, job.export)
    reported = list(dict.fromkeys(jf.warnings))
    for text in reported:
        warn(f"{path}: warning: {text}")
    kept_seeds = sorted(existing[output]["seed"] for output in kept if existing[output]["kind"] == "sample")
    summaries_todo = [output for output in summaries if output not in kept]
    if not summaries_todo and len(kept_seeds) == len(seeds):
        advance(args.samples)
        return 0
    common = {"input": str(path), "input_sha256": input_sha256, "checkpoint": job.sampler.source,
              "checkpoint_sha256": job.checkpoint_sha256, "model": job.model, "projected": not args.no_project,
              "orientation_applied": jf.orientation, "tile": job.sampler.tile, "mean_flips": job.sampler.posterior_mean_flips, "device": str(job.sampler.device)}
    kinds_todo = [summaries[output]["kind"] for output in summaries_todo]
    wanted_summaries = [kind for kind in ("mean", "std", "grid") if kind in kinds_todo]
    kept_set = set(kept_seeds)
    wanted = (seed for seed in seeds if seed not in kept_set)  # drawn lazily: -n may be huge
    advance(len(kept_seeds))
    moments = Moments()  # of every sample, for the mean and the std map, without holding them
    sheet = {}  # seed -> uint8 [C, H, W] of every sample, for the grid only (at most MAX_GRID_SAMPLES)

    inexact = []  # (output, Agreement) of each projected output that is not 8-bit exact

    def write_decoded(output: Path, recipe: dict, image: torch.Tensor, began: float,
                      floats: torch.Tensor | None) -> torch.Tensor:
        """Measure a decoded image [C, H, W] as its file will hold it, write it with its manifest
        record, report new warnings; returns its 8-bit pixels."""
        pixels = to_uint8(image)
        measured = []
        with libjpeg_warnings(measured):
            line, agreement = _levels(pixels, floats, jf, job.export)
        for text in dict.fromkeys(measured):
            if text not in reported:
                reported.append(text)
                warn(f"{path}: warning: {text}")
        if not args.no_project and agreement.coefficients < 1.0:
            inexact.append((output, agreement))
        line = {**common, **recipe, "output": str(output), **line,
                "icc_profile_embedded": metadata.icc_profile is not None,
                "warnings": list(dict.fromkeys([*jf.warnings, *measured]))}
        written = floats if floats is not None and job.export.format == "png16" else image
        job.write(output, export.encode(apply_orientation(written, jf.orientation), job.export, metadata), line, began)
        return pixels

    posterior_mean_output = job.out / f"{path.stem}_mmse{job.export.suffix}"
    posterior_mean = None  # M(y, q), the dearest pass: run once for its output and the samples
    if posterior_mean_output in summaries_todo:
        began = perf_counter()
        posterior_mean = job.sampler.posterior_mean_of(jf)
        decode = job.sampler.posterior_mean_decode(jf, project=False, posterior_mean=posterior_mean)
        result = None if args.no_project else projection(decode, jf)
        write_decoded(posterior_mean_output, summaries[posterior_mean_output],
                      decode if result is None else result.images, began, None if result is None else result.floats)
    for sample in job.sampler.samples(jf, wanted, project=not args.no_project, posterior_mean=posterior_mean):
        pixels = write_decoded(job.sample_output(path.stem, sample.seed), job.sample_recipe(sample.seed, input_sha256),
                               sample.image, perf_counter() - sample.seconds, sample.floats)
        if wanted_summaries:
            moments.add(pixels)
        if "grid" in wanted_summaries:
            sheet[sample.seed] = pixels
        advance()
    if wanted_summaries:
        for seed in kept_seeds:  # read back one at a time
            pixels = _kept_sample(job.sample_output(path.stem, seed), jf)
            moments.add(pixels)
            if "grid" in wanted_summaries:
                sheet[seed] = pixels
        inexact += _write_summaries(job, path, jf, moments, [sheet[seed] for seed in sorted(sheet)],
                                    wanted_summaries, common, metadata)
    if inexact:
        output, worst = min(inexact, key=lambda item: item[1].coefficients)
        report = (f"{path}: not 8-bit exact: {len(inexact)} output(s); in the worst, {output.name}, "
                  f"{worst.differing_coefficients} of {worst.total_coefficients} coefficients (in "
                  f"{worst.differing_blocks} of {worst.total_blocks} blocks) re-encode differently; see {MANIFEST}")
        if args.strict:
            raise FileFailed(report + " (--strict)")
        warn(report)
    return len(summaries_todo) + len(seeds) - len(kept_seeds)


def _levels(pixels: torch.Tensor, floats: torch.Tensor | None, jf: JpegFile,
            settings: export.ExportSettings) -> tuple[dict, Agreement]:
    """Manifest figures of an output: 8-bit level (its 8-bit pixels [C, H, W] re-encoded by libjpeg),
    float level (the float result of the projection, as a 16-bit file holds it or before rounding)
    and which level the written file meets."""
    saved = to_unit_float(pixels)  # measure exactly what the PNG holds, in stored orientation
    measured = eight_bit_consistency(saved, jf)
    agreement = measured.agreement
    line = {"consistency_rmse": measured.rmse.item(), "coefficient_agreement": agreement.coefficients,
            "block_agreement": agreement.blocks, "differing_coefficients": agreement.differing_coefficients,
            "failing_blocks": agreement.differing_blocks}
    float_level = None
    if floats is not None:
        held = round_to_16_bits(floats) if settings.format == "png16" else floats
        float_level = float_consistency(held, jf)
        line.update(float_consistency=float_level.coefficients, float_violations=float_level.violating_coefficients)
    line["written_consistency"] = settings.written_consistency(agreement.coefficients, float_level)
    return line, agreement


class Moments:
    """Per-pixel sums of an input's 8-bit samples, added one at a time, for their mean and std: the
    summaries of any number of samples in the memory of two images. float64 sums of 8-bit values are
    exact, so the order the samples come in does not matter."""

    def __init__(self):
        self.count, self.total, self.squares = 0, None, None

    def add(self, pixels: torch.Tensor) -> None:
        """uint8 [C, H, W]."""
        values = pixels.double()
        if self.total is None:
            self.total, self.squares = torch.zeros_like(values), torch.zeros_like(values)
        self.total += values
        self.squares += values * values
        self.count += 1

    def mean(self) -> torch.Tensor:
        """[C, H, W] in [0, 1], float32."""
        return (self.total / (255.0 * self.count)).float()

    def std(self) -> torch.Tensor:
        """[C, H, W] in [0, 1], float32: the unbiased per-pixel std (0 for a single sample)."""
        variance = (self.squares - self.total * self.total / self.count) / max(self.count - 1, 1)
        return (variance.clamp(min=0).sqrt() / 255.0).float()


def _write_summaries(job: Job, path: Path, jf: JpegFile, moments: Moments, sheet: list, kinds: list[str],
                     common: dict, metadata: export.Metadata) -> list:
    """The sample mean, std map and contact sheet of an input's samples (their `moments`, and for the
    sheet the samples themselves, uint8 [C, H, W] each), as asked. Returns [(output, Agreement)]
    for a projected sample mean that is not 8-bit exact."""
    began = perf_counter()
    result = None if job.args.no_project else projection(moments.mean(), jf)
    sample_mean = moments.mean() if result is None else result.images
    spread = heat_map(moments.std())
    seeds = list(range(job.args.seed, job.args.seed + job.args.samples))
    inexact = []
    for kind in kinds:
        icc = None if kind == "std" else metadata.icc_profile  # the std map is a false-colour chart
        output = job.out / f"{path.stem}_{kind}{job.export.suffix if kind == 'mean' else '.png'}"
        line = {**common, "kind": kind, "output": str(output), "seeds": seeds,
                "icc_profile_embedded": icc is not None, "warnings": list(jf.warnings)}
        if kind == "mean":
            levels, agreement = _levels(to_uint8(sample_mean), None if result is None else result.floats, jf, job.export)
            if result is not None and agreement.coefficients < 1.0:
                inexact.append((output, agreement))
            line.update(format=job.export.format, quality=job.export.quality, metadata=job.export.metadata, **levels)
            written = result.floats if result is not None and job.export.format == "png16" else sample_mean
            data = export.encode(apply_orientation(written, jf.orientation), job.export, metadata)
        elif kind == "grid":
            row = [jf.decode(), *map(to_unit_float, sheet), sample_mean, spread]
            data = export.encode_png(contact_sheet([[apply_orientation(image.expand(3, -1, -1), jf.orientation)
                                              for image in row]]), icc)
        else:
            data = export.encode_png(to_hwc_uint8(apply_orientation(spread, jf.orientation)), icc)
        job.write(output, data, line, began)
    return inexact


def _prepare(args: SampleOptions, stack: contextlib.ExitStack) -> Job:
    """The shared state of a run, holding OUT's lock (released by `stack`); CannotStart with the line
    that says why it cannot start."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CannotStart("--device cuda: CUDA is not available here (use --device cpu)")
    out = Path(args.out)
    try:
        folder = stack.enter_context(Folder(out, create=True))
        stack.enter_context(FolderLock(folder))
        removed = folder.remove_stale_temporaries()
        records, torn = read_manifest(folder)
    except (FolderBusyError, SymlinkError) as error:
        raise CannotStart(str(error)) from None
    except OSError as error:
        raise CannotStart(f"{out}: cannot use the output folder ({error.strerror or error})") from None
    if not args.quiet:
        for name in removed:
            print(printable(f"sample: {out / name}: removed, a temporary file left by a killed run"), file=sys.stderr)
    try:
        settings = export.settings_from(args)
    except ValueError as error:
        raise CannotStart(str(error)) from None
    if not args.quiet and torn:
        print(printable(f"sample: {out / MANIFEST}: cut off a torn last line ({torn} bytes) left by an interrupted run"),
              file=sys.stderr)
    try:
        device = resolve_device(args.device)
        precision = choose_precision(args.dtype, device.type)
        sampler = PosteriorSampler.from_checkpoint(args.checkpoint, str(device), precision.name, tile=args.tile,
                                                   posterior_mean_flips=args.posterior_mean_flips)
        weights, _ = checkpoints.resolve(sampler.source)
    except PosteriorJpegError as error:
        raise CannotStart(str(error)) from None
    if args.posterior_mean and sampler.posterior_mean_network is None:
        raise CannotStart(f"--posterior-mean: {sampler.source} has no posterior-mean network M")
    if not args.quiet:
        print(f"sample: {device}, precision {precision.describe()}", file=sys.stderr)
    return Job(sampler, precision, args, out, folder, file_digest(weights),
               dataclasses.asdict(checkpoints.model_file(sampler.generator)),
               {Path(record["output"]).name: record for record in records}, settings)


def _identity(found: os.stat_result | None) -> tuple[int, int] | None:
    return None if found is None else (found.st_dev, found.st_ino)


def split_own_outputs(files: list[Path], job: Job) -> tuple[list[Path], list[str]]:
    """Leave out the inputs that are outputs of an earlier run in OUT (its manifest records them):
    sampling a folder into itself must not sample its own samples on each rerun. A note for each."""
    out = _identity(os.fstat(job.folder.descriptor))
    kept, notes = [], []
    for path in files:
        if path.name in job.recorded and _identity(path.parent.stat()) == out:
            notes.append(f"sample: {path}: skipped, an output of an earlier run ({MANIFEST} records it)")
        else:
            kept.append(path)
    return kept, notes


def _sample_all(args: SampleOptions) -> int:
    files, errors = expand_inputs(args.inputs, args.recursive)
    for line in errors:
        print(printable(line), file=sys.stderr)
    if not files:
        return 1
    with contextlib.ExitStack() as stack:
        try:
            job = _prepare(args, stack)
        except CannotStart as error:
            print(printable(f"sample: {error}"), file=sys.stderr)
            return 2
        files, notes = split_own_outputs(files, job)
        files, clashes = split_name_clashes(files)
        for line in (notes if not args.quiet else []) + clashes:
            print(printable(line), file=sys.stderr)
        job.inputs = {_identity(path.stat()) for path in files}
        return _sample_files(job, files, len(errors) + len(clashes))


def _sample_files(job: Job, files: list[Path], failed: int) -> int:
    args = job.args
    done = complete = 0

    def warn(line: str) -> None:
        if not args.quiet:
            tqdm.write(printable(line), file=sys.stderr)

    with tqdm(total=len(files) * args.samples, unit="sample", disable=args.quiet, file=sys.stderr) as bar:
        tiles = []  # the bar of the network pass under way, while one over several tiles runs

        def on_tile(network: str, done: int, total: int) -> None:
            """A second bar under the first for a pass over several tiles: a 12 MP sample takes a
            minute on a CPU. It lives as long as its pass, so that single-tile runs print one bar."""
            if done == 1:
                while tiles:  # a pass that a failure cut short
                    tiles.pop().close()
                tiles.append(tqdm(total=total, desc=f"  {network}", unit="tile", disable=args.quiet,
                                  file=sys.stderr, leave=False, position=1))
            tiles[-1].update(1)
            if done == total:
                tiles.pop().close()

        job.sampler.on_tile = on_tile
        for index, path in enumerate(files, 1):
            bar.set_description(printable(f"{index}/{len(files)} {path.name}"))
            before = bar.n
            try:
                if sample_file(job, path, bar.update, warn):
                    done += 1
                else:
                    complete += 1
            except FileFailed as error:
                tqdm.write(printable(error), file=sys.stderr)
                failed += 1
            except OSError as error:  # writing: disk full, permissions, ...
                tqdm.write(printable(f"{path}: cannot write outputs ({error})"), file=sys.stderr)
                failed += 1
            except (MemoryError, torch.cuda.OutOfMemoryError):
                tqdm.write(printable(f"{path}: out of memory on {job.sampler.device} (try a smaller --tile)"),
                           file=sys.stderr)
                failed += 1
            bar.update(before + args.samples - bar.n)  # a failed file's samples count as passed
    if args.html:
        try:
            page = explorer.write_sample_page(job.out)
            if not args.quiet:
                print(f"explorer page: {page}")
        except OSError as error:
            print(printable(f"{job.out / explorer.PAGE}: cannot write the explorer page ({error})"), file=sys.stderr)
            failed += 1
    if not args.quiet:
        print(f"sampled {done} file(s) into {job.out}" + (f"; {complete} complete already" if complete else "")
              + (f"; {failed} input(s) failed" if failed else ""))
    return 1 if failed else 0


def run(args: SampleOptions) -> int:
    """Sample every input; returns the exit status (Ctrl-C included: 130, only whole files left)."""
    try:
        return _sample_all(args)
    except KeyboardInterrupt:
        print("sample: interrupted; the outputs written so far are complete (run the same command again to "
              "make the rest)", file=sys.stderr)
        return INTERRUPTED
