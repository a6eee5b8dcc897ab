"""Evaluation jobs: FID, consistency, PSNR, LPIPS and diversity of JPEG decoders (the paper's Table 1).

    python -m posterior_jpeg eval --config configs/eval.yaml [key=value ...]
    posterior-jpeg eval --config configs/eval.yaml [key=value ...]
    torchrun --nproc_per_node 8 -m posterior_jpeg eval --config ...     (or accelerate launch)

Per setting (each quality x subsampling applied to clean test images, or a folder of real JPEG files
as stored) the methods are: the libjpeg decode ("jpeg"), an MMSE model ("mmse"), and per checkpoint
posterior samples unprojected ("ours"), projected onto the file ("ours_p") and the mean of K samples
("ours_a"). Every output is rounded to 8 bits (what a user saves) before it is measured. `Runner`
samples and measures in one pass per setting; `report` turns its records into rows and files.

Samples are drawn once: test image i gets max(repeats, samples) samples, sample r with seed
seed + i * SEED_STRIDE + r (a seed gives the same sample whatever the batch, see `PosteriorSampler`). FID
repeat r takes sample r, so each repeat has one fresh sample per image; Ours-A and the diversity
metrics take the K samples 0..K-1; the MMSE model (same architecture, noise inputs included) is run
once with seed + i * SEED_STRIDE. Nothing depends on how images are split across processes.

Images are read as 8-bit RGB (16-bit PNGs scaled, not clipped to white; grayscale samples measured as
RGB, like libjpeg's decode). A test image that cannot be measured (unreadable, not a JPEG, under one
16x16 MCU with crop mod16, under the 31x31 pixels LPIPS alex needs, 16x16 for vgg) is skipped and listed
with its reason under "skipped"; the job goes on. A fid_reference .npz must hold mu [2048] and sigma
[2048, 2048] and is refused with one line otherwise; a cached reference that cannot be read is computed
again.

Many processes: image i goes to process i mod N; Inception features and per-image measurements are
gathered before any statistic, so the numbers equal a single process's (up to float rounding of
differently composed Inception batches).
"""

import sys

if __name__ == "__main__":  # the job is not a command: no upward import of posterior_jpeg.commands
    print("python -m posterior_jpeg.evaluate is now python -m posterior_jpeg eval (or posterior-jpeg eval)", file=sys.stderr)
    sys.exit(2)


from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Hashable

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from PIL import Image
from tqdm.auto import tqdm

from . import __version__, explorer
from .atomic import Folder
from .checkpoints import resolve
from .config import (RULES, ConfigError, integer_in, load_structured, one_of, output_folder, run_with_config,
                     show_config)
from .data import WRITABLE_MODES, ImageError, libjpeg_decode, list_images, pillow_jpeg, read_rgb
from .errors import PosteriorJpegError, StatisticsError
from .jpeg.file import JpegFile, read_jpeg
from .jpeg.projection import project
from .metrics import LPIPS, GaussianStats, InceptionFeatures, frechet_distance
from .metrics.registry import Subject, table_metrics
from .metrics.fid import FEATURE_DIM, RANDOM, statistics_key
from .pixels import round_to_8_bits, to_chw_float
from .precision import PRECISIONS, choose_precision
from .pretrained import WeightsConfig
from .report import METHODS, POSTERIOR_METHODS, RESULT_FILES, Key, Tally, markdown, rows, summarize, write_results
from .sampler import PosteriorSampler

DEFAULT_METHODS = ("jpeg", "ours", "ours_p", "ours_a")
SEED_STRIDE = 100_000


@dataclass
class EvalData:
    """Test images: set ground_truth or jpegs. With jpegs, FID needs fid_reference (.npz: ours or
    pytorch-fid's). crop applies to ground-truth and reference images (resizing is bicubic)."""

    ground_truth: str | None = None  # folder of clean test images, compressed here at every quality x subsampling
    jpegs: str | None = None  # OR a folder of real JPEG files, as stored (no ground truth: no PSNR, LPIPS)
    fid_reference: str | None = None  # FID reference: image folder or statistics .npz; null: the ground truth
    crop: str = "mod16"  # "full", "mod16" (centre crop to a multiple of 16) or N (short side to N, centre N x N)
    limit: int | None = None  # evaluate only the first N test images (sorted paths)


@dataclass
class FeatureWeights:
    """Pretrained feature networks, never downloaded: a file path, null for the file in weights.dir, or
    "random" (tests and demos only: the numbers are then NOT comparable to anything)."""

    inception: str | None = None  # Inception weights file (pytorch-fid's); null: from weights.dir; "random": tests only
    lpips: str | None = None  # LPIPS backbone weights file; null: from weights.dir; "random": tests only
    lpips_net: str = "alex"  # LPIPS backbone: alex or vgg
    batch_size: int = 32  # images per Inception batch


@dataclass
class EvalConfig:
    """One evaluation job; see configs/eval.yaml for every key."""

    checkpoints: list[str] = field(default_factory=list)  # posterior models: run folders, checkpoint folders or weights files
    mmse_checkpoint: str | None = None  # a stage=mmse run for the mmse method
    data: EvalData = field(default_factory=EvalData)  # test images
    qualities: list[int] = field(default_factory=lambda: [10])  # JPEG qualities (1-100), each a setting
    subsamplings: list[str] = field(default_factory=lambda: ["4:2:0"])  # chroma subsamplings, each a setting
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))  # jpeg, mmse, ours, ours_p (projected), ours_a (mean of samples)
    repeats: int = 8  # FID repeats, one fresh sample per test image each
    samples: int = 8  # K samples per image for ours_a and the diversity metrics
    seed: int = 0  # sample r of image i (FID repeat r's): seed + i * SEED_STRIDE + r
    features: FeatureWeights = field(default_factory=FeatureWeights)  # pretrained feature networks, never downloaded
    weights: WeightsConfig = field(default_factory=WeightsConfig)  # where the feature networks' files are
    fid_cache: str = "~/.cache/posterior-jpeg/fid"  # reference statistics, keyed by file contents, weights and crop
    out_dir: str = "runs/eval"  # results.json, results.csv, results.md
    device: str = "auto"  # auto, cpu or cuda
    dtype: str = "auto"  # sampling precision: auto (bf16 on GPU and on CPUs with native bf16 units, else fp32), fp32, bf16 or fp16
    progress: bool = True  # progress bars (main process only)

    def __post_init__(self):  # what keys must satisfy together; each key's own range: EVAL_RULES
        if (self.data.ground_truth is None) == (self.data.jpegs is None):
            raise ConfigError("set exactly one of data.ground_truth (clean images) and data.jpegs (real JPEG files)")
        if "mmse" in self.methods and not self.mmse_checkpoint:
            raise ConfigError("method 'mmse' needs mmse_checkpoint (a run folder of stage=mmse)")
        if set(self.methods) & set(POSTERIOR_METHODS) and not self.checkpoints:
            raise ConfigError("methods ours / ours_p / ours_a need at least one entry in checkpoints")


# A square crop at least as large as LPIPS alex measures (31 pixels) and no larger than one that
# fits memory with its samples (a typo's 100000 would ask for 30 GB per image).
CROP_SIZES = (32, 4096)


def _crop_rule(value: str) -> bool:
    return value in ("full", "mod16") or (value.isdigit() and CROP_SIZES[0] <= int(value) <= CROP_SIZES[1])


# Each key's own range, checked over the whole merged config like training's (config.violations):
# one line per violation naming the key, its value, where it came from and what is allowed.
EVAL_RULES = {
    "data.crop": (_crop_rule, f"full, mod16 or an integer in [{CROP_SIZES[0]}, {CROP_SIZES[1]}]"),
    "data.limit": integer_in(1),
    "qualities": ((lambda v: len(v) > 0 and len(set(v)) == len(v) and all(1 <= q <= 100 for q in v)),
                  "a non-empty list of distinct integers in [1, 100]"),  # each a setting: twice would be measured twice
    "subsamplings": ((lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(WRITABLE_MODES)),
                     "a non-empty list of distinct names from " + ", ".join(WRITABLE_MODES)),
    "methods": ((lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(METHODS)),
                "a non-empty list of distinct names from " + ", ".join(METHODS)),
    "repeats": integer_in(1, SEED_STRIDE - 1),
    "samples": integer_in(2, SEED_STRIDE - 1),  # a spread needs two
    "seed": integer_in(0, 2**32 - 1),
    "features.lpips_net": one_of(("alex", "vgg")),
    "features.batch_size": integer_in(1, 1024),
    "device": one_of(("auto", "cpu", "cuda")),
    "dtype": one_of(("auto", *PRECISIONS)),
}
RULES[EvalConfig] = EVAL_RULES


def load_eval_config(path: str | Path | None = None, overrides: list[str] = ()) -> EvalConfig:
    """Defaults <- YAML file <- dotlist overrides -> a validated EvalConfig (unknown keys are errors)."""
    return load_structured(EvalConfig, path, overrides)


def load_image(path: Path, crop: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB of an image file (16-bit ones scaled, see `read_rgb`) after the crop
    policy (see EvalData)."""
    image = read_rgb(path)
    width, height = image.size
    if crop == "mod16":
        new_w, new_h = width // 16 * 16, height // 16 * 16
        if min(new_w, new_h) == 0:
            raise ImageError(f"{path}: {width}x{height} is smaller than one 16x16 MCU")
        left, top = (width - new_w) // 2, (height - new_h) // 2
        image = image.crop((left, top, left + new_w, top + new_h))
    elif crop != "full":
        size = int(crop)
        if min(width, height) != size:
            scale = size / min(width, height)
            image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
            width, height = image.size
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.array(image)


@dataclass(frozen=True)
class Setting:
    """A JPEG setting: (quality, subsampling) applied to ground truth, or (None, None): files as stored."""

    quality: int | None
    subsampling: str | None

    @property
    def label(self) -> str:
        return "as stored" if self.quality is None else f"QF {self.quality}, {self.subsampling}"


@dataclass
class Item:
    index: int
    ground_truth: torch.Tensor | None  # [1, 3, H, W]
    jpeg: JpegFile
    decoded: torch.Tensor  # [1, 3, H, W], libjpeg's decode


class TestSet:
    """The test images under one setting, addressed by index (every process sees the same list).
    min_side: images with a smaller height or width are refused (the least LPIPS can measure)."""

    def __init__(self, data: EvalData, setting: Setting, min_side: int = 1):
        if data.jpegs is not None:
            self.root = Path(data.jpegs)
            self.files = [p for p in list_images(self.root) if p.suffix.lower() in (".jpg", ".jpeg")]
            if not self.files:
                raise ImageError(f"{self.root}: no .jpg / .jpeg files")
        else:
            self.root = Path(data.ground_truth)
            self.files = list_images(self.root)
        self.files = self.files[: data.limit]
        self.crop = data.crop
        self.setting = setting
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.files)

    def item(self, index: int) -> Item:
        path = self.files[index]
        if self.setting.quality is None:  # read from the path, so that its warnings name the file
            item = Item(index, None, read_jpeg(path), to_chw_float(libjpeg_decode(path.read_bytes()))[None])
        else:
            pixels = load_image(path, self.crop)
            data = pillow_jpeg(pixels, self.setting.quality, self.setting.subsampling)
            item = Item(index, to_chw_float(pixels)[None], read_jpeg(data), to_chw_float(libjpeg_decode(data))[None])
        height, width = item.jpeg.size
        if min(height, width) < self.min_side:
            raise ImageError(f"{path}: {width}x{height} is smaller than the {self.min_side}x{self.min_side} "
                             "pixels LPIPS needs; not measured")
        return item


@dataclass
class Outputs:
    """One row's outputs for one test image, [n, 3, H, W] on the 8-bit grid: images[r] is FID repeat
    r's for r < repeats, and the first `diversity` of them (0: none) are measured for diversity."""

    images: torch.Tensor
    repeats: int = 1
    diversity: int = 0
    mean: torch.Tensor | None = None  # [3, H, W]: the model's posterior mean M, which calibration measures around


class FeatureBatches:
    """Collects (tag, image index, [3, H, W] image) and runs Inception a batch at a time."""

    def __init__(self, inception: InceptionFeatures, batch_size: int):
        self.inception = inception
        self.batch_size = batch_size
        self.pending: list[tuple[Hashable, int, torch.Tensor]] = []
        self.done: list[tuple[Hashable, int, np.ndarray]] = []

    def add(self, tag: Hashable, index: int, image: torch.Tensor) -> None:
        self.pending.append((tag, index, image))
        if len(self.pending) >= self.batch_size:
            self._run()

    def _run(self) -> None:
        features = self.inception([image for _, _, image in self.pending])
        self.done += [(tag, index, feature.numpy()) for (tag, index, _), feature in zip(self.pending, features)]
        self.pending = []

    def finish(self) -> list[tuple[Hashable, int, np.ndarray]]:
        if self.pending:
            self._run()
        return self.done


class Runner:
    """Runs an EvalConfig: reference statistics, then one pass over each setting's test images that
    draws each image's samples once and measures every output; `report` turns the records into rows."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda: CUDA is not available here (use device=cpu or auto)")
        with Folder(output_folder("out_dir", cfg.out_dir)) as out:  # a planted link stops the job before it starts
            for name in (*RESULT_FILES, explorer.PAGE, explorer.CROPS):
                out.refuse_link(name)
        self.state = PartialState(cpu=cfg.device == "cpu")
        # Accelerate names a CPU process's device "cpu:N", which safetensors refuses
        self.device = torch.device("cpu") if self.state.device.type == "cpu" else self.state.device
        self.rank, self.world = self.state.process_index, self.state.num_processes
        has_truth = cfg.data.ground_truth is not None
        self.inception = None
        if has_truth or cfg.data.fid_reference is not None:
            self.inception = InceptionFeatures(cfg.features.inception, cfg.weights.dir).to(self.device)
        posterior = bool(set(cfg.methods) & set(POSTERIOR_METHODS))
        self.lpips = LPIPS(cfg.features.lpips, cfg.features.lpips_net, cfg.weights.dir).to(self.device) if has_truth or posterior else None
        self.checkpoints = self._labels(cfg.checkpoints) if posterior else {}
        self.precision = choose_precision(cfg.dtype, self.device.type)
        if self.state.is_main_process and cfg.progress:
            print(f"eval: {self.device}, precision {self.precision.describe()}", file=sys.stderr)
        self.samplers = {label: PosteriorSampler.from_checkpoint(path, device=str(self.device), dtype=self.precision.name)
                         for label, path in self.checkpoints.items()}
        self.mmse = (PosteriorSampler.from_checkpoint(cfg.mmse_checkpoint, device=str(self.device), dtype=self.precision.name)
                     if "mmse" in cfg.methods else None)
        self.skipped: dict[str, str] = {}
        # per setting label: (image index, file name, [(row key, or None for the ground truth, centre crop)])
        # of the first explorer.CROP_IMAGES test images, for the results page
        self.crops: dict[str, list[tuple[int, str, list[tuple[Key | None, torch.Tensor]]]]] = {}
        self.reference_note = "none (no ground truth and no data.fid_reference): FID not computed"

    @staticmethod
    def _labels(paths: list[str]) -> dict[str, str]:
        """Short row labels for checkpoints: the folder name, or the whole path where names repeat."""
        names = [Path(p).name for p in paths]
        return {(name if names.count(name) == 1 else p): p for name, p in zip(names, paths)}

    # ------------------------------------------------------------------ features across processes
    def _gathered_statistics(self, features: list[tuple[Hashable, int, np.ndarray]]) -> dict[Hashable, GaussianStats | None]:
        """Every process's features, in image order, -> statistics per tag (None under 2 images)."""
        by_tag: dict[Hashable, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for tag, index, feature in gather_object(features):
            by_tag[tag].append((index, feature))
        return {tag: GaussianStats.from_features(np.stack([f for _, f in sorted(found, key=lambda r: r[0])]))
                if len(found) >= 2 else None for tag, found in by_tag.items()}

    def _progress(self, indices: range, description: str):
        return tqdm(indices, desc=description, leave=False, disable=not (self.cfg.progress and self.state.is_main_process))

    # ------------------------------------------------------------------ reference statistics
    def reference_statistics(self) -> GaussianStats | None:
        """FID statistics of the real images: from a given .npz, from the cache, or computed (and cached)."""
        cfg = self.cfg
        source = cfg.data.fid_reference or cfg.data.ground_truth
        if source is None:
            return None
        if source.endswith(".npz"):
            stats = GaussianStats.load(source)
            if len(stats.mu) != FEATURE_DIM:
                raise StatisticsError(f"{source}: statistics of {len(stats.mu)}-d features; FID's Inception "
                                      f"pool3 features are {FEATURE_DIM}-d")
            self.reference_note = f"{source} (given statistics, {stats.count or 'unknown'} images)"
            return stats
        root = Path(source)
        files = list_images(root)
        if cfg.data.fid_reference is None:
            files = files[: cfg.data.limit]
        key = statistics_key(root, files, self.inception.identity, {"crop": cfg.data.crop})
        cache = Path(cfg.fid_cache).expanduser() / f"{key}.npz"
        try:  # a cache file that cannot be read is computed again
            stats = GaussianStats.load(cache)
            self.reference_note = f"{source} ({stats.count} images, crop {cfg.data.crop}; cached statistics {cache})"
            return stats
        except StatisticsError:
            pass
        batches = FeatureBatches(self.inception, cfg.features.batch_size)
        mine = range(self.rank, len(files), self.world)
        for index in self._progress(mine, "FID reference"):
            try:
                batches.add("reference", index, to_chw_float(load_image(files[index], cfg.data.crop)))
            except ImageError as error:
                self.skipped[str(files[index])] = str(error)
        stats = self._gathered_statistics(batches.finish()).get("reference")
        if stats is None:
            raise ImageError(f"{source}: FID needs at least 2 readable reference images")
        if self.state.is_main_process:
            cache.parent.mkdir(parents=True, exist_ok=True)
            stats.save(cache)
        self.reference_note = f"{source} ({stats.count} images, crop {cfg.data.crop}; statistics computed, cached at {cache})"
        return stats

    # ------------------------------------------------------------------ one pass over the test images
    def outputs(self, item: Item) -> dict[Key, Outputs]:
        """Every row's outputs for one test image. Each checkpoint draws its max(repeats, samples)
        samples once, one at a time: sample r (seed + i * SEED_STRIDE + r) is
        FID repeat r's; Ours-A and diversity take samples 0..samples-1."""
        cfg, methods = self.cfg, self.cfg.methods
        result = {}
        if "jpeg" in methods:
            result[Key("", "jpeg")] = Outputs(item.decoded)
        seed = cfg.seed + item.index * SEED_STRIDE
        if self.mmse is not None:
            mmse = self.mmse.sample(item.jpeg, n=1, seed=seed, project=False).expand(-1, 3, -1, -1)  # gray: as RGB
            result[Key("", "mmse")] = Outputs(round_to_8_bits(mmse))
        for label, sampler in self.samplers.items():
            # a grayscale file's samples have one channel: measured as RGB, like libjpeg's decode
            mean = sampler.posterior_mean_of(item.jpeg) if sampler.posterior_mean_network is not None else None
            seeds = range(seed, seed + max(cfg.repeats, cfg.samples))
            raw = torch.stack([s.image for s in sampler.samples(item.jpeg, seeds, project=False, posterior_mean=mean)])
            raw = raw.expand(-1, 3, -1, -1)
            mean = None if mean is None else mean.cpu()
            if "ours" in methods:
                result[Key(label, "ours")] = Outputs(round_to_8_bits(raw), cfg.repeats, cfg.samples, mean)
            if "ours_p" in methods:
                result[Key(label, "ours_p")] = Outputs(project(raw, item.jpeg), cfg.repeats, cfg.samples, mean)
            if "ours_a" in methods:
                result[Key(label, "ours_a")] = Outputs(round_to_8_bits(raw[: cfg.samples].mean(dim=0, keepdim=True)))
        return result

    def _measure(self, key: Key, outputs: Outputs, item: Item, truth: list[torch.Tensor] | None, tally: Tally) -> None:
        """Every table metric (metrics.registry) that one row's outputs have what it needs for, per
        output; `truth`: the ground truth's LPIPS features, computed once for every row."""
        subject = Subject(outputs.images, outputs.repeats, outputs.diversity, item.jpeg, item.ground_truth,
                          outputs.mean, self.lpips, truth)
        for metric in table_metrics():
            if metric.applies(subject):
                for value in metric.measure(subject):
                    tally.add(key, metric.name, item.index, value)

    # ------------------------------------------------------------------ settings and rows
    def settings(self) -> list[Setting]:
        if self.cfg.data.jpegs is not None:
            return [Setting(None, None)]
        return [Setting(q, s) for q in self.cfg.qualities for s in self.cfg.subsamplings]

    def evaluate_setting(self, setting: Setting, reference: GaussianStats | None) -> list[dict]:
        """One pass over this process's share of the test images: every row's outputs measured, the
        Inception features of each FID repeat's output gathered; then the setting's table rows."""
        cfg = self.cfg
        test_set = TestSet(cfg.data, setting, self.lpips.min_size if self.lpips is not None else 1)
        tally = Tally()
        batches = FeatureBatches(self.inception, cfg.features.batch_size) if self.inception is not None else None
        crops = []
        for index in self._progress(range(self.rank, len(test_set), self.world), setting.label):
            try:
                item = test_set.item(index)
            except PosteriorJpegError as error:
                self.skipped[str(test_set.files[index])] = str(error)
                continue
            truth = self.lpips.features(item.ground_truth) if item.ground_truth is not None else None
            every = self.outputs(item)
            for key, outputs in every.items():
                self._measure(key, outputs, item, truth, tally)
                if batches is not None:
                    for repeat, image in enumerate(outputs.images[: outputs.repeats]):
                        batches.add((key, repeat), index, image)
            if index < explorer.CROP_IMAGES:
                shown = [(None, item.ground_truth)] if item.ground_truth is not None else []
                shown += [(key, outputs.images[:1]) for key, outputs in every.items()]
                crops.append((index, test_set.files[index].name, [(k, explorer.centre_crop(v).clone()) for k, v in shown]))
        self.crops[setting.label] = sorted(gather_object(crops), key=lambda crop: crop[0])
        fids: dict[Key, list[float]] = defaultdict(list)
        if batches is not None:
            for (key, _), stats in sorted(self._gathered_statistics(batches.finish()).items()):
                if reference is not None and stats is not None:
                    fids[key].append(frechet_distance(reference, stats))
        keys = [Key("", method) for method in ("jpeg", "mmse")]
        keys += [Key(label, method) for label in self.samplers for method in POSTERIOR_METHODS]
        return rows([key for key in keys if key.method in cfg.methods], summarize(gather_object(tally.records)),
                    fids, setting.quality, setting.subsampling)

    def header(self, images: int) -> dict:
        cfg = self.cfg
        return {
            "package_version": __version__,
            "checkpoints": {label: str(resolve(path)[0]) for label, path in self.checkpoints.items()},
            "mmse_checkpoint": str(resolve(cfg.mmse_checkpoint)[0]) if self.mmse is not None else None,
            "test_images": f"{images} from {cfg.data.ground_truth or cfg.data.jpegs}"
                           + (f" (ground truth, crop {cfg.data.crop})" if cfg.data.ground_truth else " (real JPEG files, no ground truth)"),
            "settings": [s.label for s in self.settings()],
            "fid_features": self.inception.label if self.inception is not None else None,
            "fid_reference": self.reference_note,
            "fid_repeats": f"{cfg.repeats} (one sample per test image each; mean +- sample std)",
            "lpips": self.lpips.label if self.lpips is not None else None,
            "samples_per_image": f"{cfg.samples} (Ours-A and diversity)",
            "seeds": f"image i, sample r: {cfg.seed} + i * {SEED_STRIDE} + r, drawn once; FID repeat r takes sample r, "
                     f"Ours-A and diversity samples 0..{cfg.samples - 1}",
            "processes": self.world,
            "device": str(self.device),
            "dtype": self.precision.describe(),
            "random_feature_weights": RANDOM in (cfg.features.inception, cfg.features.lpips),
        }

    def run(self, print_table: bool = True) -> dict:
        reference = self.reference_statistics()
        table = []
        for setting in self.settings():
            table += self.evaluate_setting(setting, reference)
        skipped = dict(sorted({k: v for part in gather_object([self.skipped]) for k, v in part.items()}.items()))
        files = TestSet(self.cfg.data, self.settings()[0]).files
        images = sum(str(path) not in skipped for path in files)
        if images == 0:  # an empty table is no result
            raise ImageError(f"none of the {len(files)} test images could be measured; the first: {skipped[str(files[0])]}")
        results = {"header": self.header(images), "rows": table, "skipped": skipped}
        if self.state.is_main_process:
            write_results(results, Path(self.cfg.out_dir))
            explorer.write_evaluation_page(self, results)
            if print_table:
                print(markdown(results))
        self.state.wait_for_everyone()
        return results


def evaluate(cfg: EvalConfig, print_table: bool = True) -> dict:
    """Run one evaluation job; every process returns the same results, the main one writes them
    (and prints the markdown table unless print_table is False)."""
    return Runner(cfg).run(print_table)


def run_command(config: str | None, overrides: list[str], program: str, print_config: bool = False) -> int:
    """The command line's work: exit code 0, 1 (a job error, e.g. missing weights) or 2 (bad config)."""
    if print_config:
        return show_config(program, EvalConfig, config, overrides)
    return run_with_config(program, load_eval_config, evaluate, config, overrides)
