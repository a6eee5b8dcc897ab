"""Every per-image metric, declared once: its name (the JSON key and CSV column), its table label, how
it is measured, what it needs, which way is better, how it is printed and how images are summed up.
The evaluation job, its report (JSON, CSV, markdown, the results page), the sweep's table and
bench/val_yardsticks.py all read these declarations, so a new metric is a function and a `register`
line. FID is not here: it is a statistic of a whole set of images, not of one (see evaluate.Runner).
"""

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..jpeg.file import JpegFile
from .blockiness import blockiness
from .calibration import Calibration, calibration
from .chroma import chroma_psnr, is_gray, rgb_luma_gap
from .consistency import EightBitConsistency, eight_bit_consistency
from .diversity import mean_pairwise_distance, per_pixel_std
from .perceptual import LPIPS
from .periodic import PERIODS, periodic_peaks
from .psnr import psnr, psnr_y
from .texture import texture_ratio

# What a metric may need beyond the outputs themselves; a subject that lacks one is not measured by it.
NEEDS = ("file", "original", "colour", "gray", "samples", "mean", "lpips")


@dataclass(eq=False)
class Subject:
    """One decoder's outputs for one image and what they may be measured against. What several
    metrics share (one libjpeg re-encode, LPIPS features, calibration) is computed once (`once`)."""

    images: torch.Tensor  # [n, 3, H, W] on the 8-bit grid
    repeats: int = 1  # images[:repeats] are the outputs measured (one per FID repeat)
    diversity: int = 0  # images[:diversity] are the samples whose spread is measured (0: none)
    file: JpegFile | None = None  # the JPEG file the outputs decode
    original: torch.Tensor | None = None  # [1, 3, H, W] the ground truth
    mean: torch.Tensor | None = None  # [3, H, W] the posterior mean M, which calibration measures around
    lpips: LPIPS | None = None
    original_features: list[torch.Tensor] | None = None  # the original's LPIPS features, when the caller has them
    computed: dict = field(default_factory=dict, repr=False)  # see `once`

    @property
    def outputs(self) -> torch.Tensor:
        return self.images[: self.repeats]

    @property
    def samples(self) -> torch.Tensor:
        return self.images[: self.diversity]

    def has(self, need: str) -> bool:
        present = {"file": self.file is not None, "original": self.original is not None,
                   "samples": self.diversity >= 2, "mean": self.mean is not None, "lpips": self.lpips is not None}
        if need in ("colour", "gray"):
            return self.original is not None and bool(is_gray(self.original).all()) == (need == "gray")
        return present[need]

    def once(self, compute: Callable[["Subject"], Any]) -> Any:
        """compute(self), computed on first use and kept: for what several metrics share."""
        if compute not in self.computed:
            self.computed[compute] = compute(self)
        return self.computed[compute]


# What several metrics share (each computed once per subject through `Subject.once`)
def consistency(s: Subject) -> EightBitConsistency:
    """Agreement and consistency RMSE of every output, from one libjpeg re-encode."""
    return eight_bit_consistency(s.outputs, s.file)


def lpips_features(s: Subject) -> list[torch.Tensor]:
    """LPIPS features of the outputs compared with the original and of the samples, in one pass."""
    return s.lpips.features(s.images[: max(s.diversity, s.repeats if s.has("original") else 0)])


def calibrated(s: Subject) -> Calibration:
    return calibration(s.samples, s.mean, s.original[0])


def lpips_to_original(s: Subject) -> list[float]:
    """LPIPS of each output to the original (whose features the caller may have computed once for all rows)."""
    truth = s.original_features if s.original_features is not None else s.lpips.features(s.original)
    count = s.repeats
    outputs = [f[:count] for f in s.once(lpips_features)]
    return s.lpips.distance(outputs, [t.expand(count, -1, -1, -1) for t in truth]).tolist()


def chroma(s: Subject) -> torch.Tensor:
    return chroma_psnr(s.outputs, s.original)


def peaks(s: Subject) -> torch.Tensor:
    """[n, periods] the largest orientation's periodic peak of each output."""
    return periodic_peaks(s.outputs).amax(dim=2)


def mean_over_images(per_image: list[list[float]]) -> float:
    """Each image's mean over its outputs (FID repeats), then the mean over the images."""
    return float(np.mean([np.mean(values) for values in per_image]))


def pooled_share(per_image: list[list[tuple[int, int]]]) -> float:
    """1 - differing / total, the (differing, total) counts summed over every output of every image."""
    differing = sum(d for values in per_image for d, _ in values)
    return 1.0 - differing / sum(t for values in per_image for _, t in values)


@dataclass(frozen=True)
class Metric:
    """A per-image metric. `measure` returns one value per output (one per FID repeat), or one value
    for the samples' spread; `summary` turns [per image: those values] into the table's figure."""

    name: str  # JSON key and CSV column
    label: str  # markdown column
    measure: Callable[[Subject], list]
    needs: frozenset = frozenset()  # names from NEEDS
    better: str | None = None  # "higher", "lower", or None: neither (the posterior's spread is right, not the most)
    format: str = ".4g"  # 4 significant digits: real FIDs (~5) and random-weight ones (~0.05) stay readable
    summary: Callable[[list[list]], float] = mean_over_images
    table: bool = True  # a column of the evaluation's table (False: a yardstick of bench/val_yardsticks.py)
    sweep: bool = False  # a column of the sweep's table too

    def applies(self, subject: Subject) -> bool:
        return all(subject.has(need) for need in self.needs)

    @property
    def heading(self) -> str:
        """The markdown column: the label, with an arrow where higher or lower is better."""
        return self.label + {"higher": " ↑", "lower": " ↓", None: ""}[self.better]


METRICS: dict[str, Metric] = {}  # by name, in the order of the table's columns


def register(metric: Metric) -> Metric:
    """Add a metric to every evaluation from here on (a name is registered once)."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is registered already")
    if not set(metric.needs) <= set(NEEDS) or metric.better not in ("higher", "lower", None):
        raise ValueError(f"metric {metric.name!r}: needs come from {NEEDS}, better is higher, lower or None")
    METRICS[metric.name] = metric
    return metric


def table_metrics() -> list[Metric]:
    """The metrics of the evaluation's table, in column order."""
    return [metric for metric in METRICS.values() if metric.table]


FILE, ORIGINAL, SAMPLES = frozenset({"file"}), frozenset({"original"}), frozenset({"samples"})
CALIBRATED = frozenset({"samples", "mean", "original"})

# The evaluation's table (the paper's Table 1 beside FID), in column order
register(Metric("consistency_rmse", "consistency RMSE", lambda s: s.once(consistency).rmse.tolist(), FILE, "lower",
                sweep=True))
register(Metric("coefficient_agreement", "coef. agreement",  # 6 decimals: 0.99997 must not read as 1
                lambda s: [(a.differing_coefficients, a.total_coefficients) for a in s.once(consistency).agreements],
                FILE, "higher", format=".6f", summary=pooled_share, sweep=True))
register(Metric("psnr_rgb", "PSNR", lambda s: psnr(s.outputs, s.original).tolist(), ORIGINAL, "higher", sweep=True))
register(Metric("psnr_y", "PSNR-Y", lambda s: psnr_y(s.outputs, s.original).tolist(), ORIGINAL, "higher"))
register(Metric("lpips", "LPIPS", lpips_to_original, frozenset({"original", "lpips"}), "lower"))
register(Metric("pixel_std", "per-pixel STD", lambda s: [per_pixel_std(s.samples)], SAMPLES, sweep=True))
register(Metric("pairwise_lpips", "pairwise LPIPS",
                lambda s: [mean_pairwise_distance([f[: s.diversity] for f in s.once(lpips_features)], s.lpips)],
                frozenset({"samples", "lpips"})))
register(Metric("calibration", "calibration", lambda s: [s.once(calibrated).overall], CALIBRATED))
register(Metric("calibration_rank", "calibration rank", lambda s: [s.once(calibrated).rank_correlation], CALIBRATED,
                "higher"))
register(Metric("psnr_gap", "PSNR gap", lambda s: [s.once(calibrated).psnr_gap], CALIBRATED))


# Yardsticks that need no downloaded weights (bench/val_yardsticks.py), one value per output
register(Metric("blockiness", "blockiness", lambda s: [blockiness(image[None]) for image in s.outputs], table=False))
register(Metric("hf", "texture ratio", lambda s: texture_ratio(s.outputs, s.original, inside_blocks=False).tolist(),
                ORIGINAL, table=False))
register(Metric("hf_in", "texture ratio in blocks", lambda s: texture_ratio(s.outputs, s.original).tolist(),
                ORIGINAL, table=False))
register(Metric("chroma_cb", "PSNR Cb", lambda s: s.once(chroma)[:, 0].tolist(), frozenset({"colour"}), "higher",
                table=False))
register(Metric("chroma_cr", "PSNR Cr", lambda s: s.once(chroma)[:, 1].tolist(), frozenset({"colour"}), "higher",
                table=False))
register(Metric("rgb_luma_gap", "PSNR-Y - PSNR", lambda s: rgb_luma_gap(s.outputs, s.original).tolist(),
                frozenset({"gray"}), table=False))
for _index, _period in enumerate(PERIODS):  # peak2, peak4, peak8
    register(Metric(f"peak{_period}", f"peak at period {_period}", lambda s, i=_index: s.once(peaks)[:, i].tolist(),
                    better="lower", table=False))
