"""Fit the spread network's gains: after projection, a sample carries the residual energy of the truth.

V predicts the variance of M's residual by band, but the projection then clips whatever part of a
sample leaves the file's quantization intervals (measured on val at quality 10: the samples kept
0.5 of V's energy; 0.3 at quality 90). So a sample is drawn wider, by a gain per band that depends on
how coarse the tables are (`SpreadConfig.gain_*`). The gains are fitted on training photos at
several qualities, a few rounds of: draw projected samples, compare each band's energy around M with
the original's, correct the gain by the root of the ratio; then a straight line in the table
coarseness through the per-quality gains. Validation photos are never used.
"""

import io

import numpy as np
import torch
from PIL import Image

from .data import read_image
from .jpeg.file import read_jpeg
from .metrics.psnr import luma
from .models.generator import AnchoredGenerator
from .models.spread import split_bands, table_coarseness
from .pixels import to_chw_float
from .sampler import Sampler

FIT_QUALITIES = (10, 20, 30, 50, 75, 90)
FIT_SIDE = 256  # centre crops
FIT_SAMPLES = 2  # per photo and quality
FIT_ROUNDS = 3


def centre_crop(image: np.ndarray, side: int = FIT_SIDE) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[top : top + side, left : left + side]


def _band_energy(residual: torch.Tensor) -> torch.Tensor:
    """[3] total energy of each band of the luma of a residual [3, H, W]."""
    return split_bands(luma(residual[None].double())).pow(2).sum((0, 2, 3))


def fit_projection_gain(generator: AnchoredGenerator, photos: list[np.ndarray], device="cpu",
                        dtype=torch.float32) -> dict[int, list[float]]:
    """Set generator.spread.config's gains from uint8 [H, W, 3] photos (4:2:0, FIT_QUALITIES);
    returns each quality's fitted log gains (low, mid, high), for the record."""
    config = generator.spread.config
    sampler = Sampler(generator, "calibration", device, dtype)
    cases = {}
    for quality in FIT_QUALITIES:
        cases[quality] = []
        for photo in photos:
            buffer = io.BytesIO()
            Image.fromarray(centre_crop(photo)).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
            jpeg = read_jpeg(buffer.getvalue())
            mean = sampler.mean_of(jpeg)
            truth = _band_energy(to_chw_float(centre_crop(photo)).to(mean.device) - mean)
            cases[quality].append((jpeg, mean, truth))
    coarseness = {q: table_coarseness(cases[q][0][0].qtable_tensor(), 1).item() for q in FIT_QUALITIES}
    start = [np.array(config.gain_intercept) + np.array(config.gain_slope) * coarseness[q] for q in FIT_QUALITIES]
    log_gain = dict(zip(FIT_QUALITIES, start))
    for _ in range(FIT_ROUNDS):
        for quality, files in cases.items():
            config.gain_intercept, config.gain_slope = log_gain[quality].tolist(), [0.0] * 3
            drawn = sum(_band_energy(sample.image.to(mean.device) - mean) / FIT_SAMPLES
                        for jpeg, mean, _ in files for sample in sampler.samples(jpeg, range(FIT_SAMPLES), mean=mean))
            truth = sum(t for _, _, t in files)
            log_gain[quality] = log_gain[quality] + 0.5 * np.log((truth / drawn).cpu().numpy())
    t = np.array([coarseness[q] for q in FIT_QUALITIES])
    gains = np.stack([log_gain[q] for q in FIT_QUALITIES])  # [qualities, 3]
    slope, intercept = np.polyfit(t, gains, 1)
    config.gain_intercept, config.gain_slope = intercept.tolist(), slope.tolist()
    return {q: log_gain[q].round(4).tolist() for q in FIT_QUALITIES}


def training_photos(images, count: int) -> list[np.ndarray]:
    """The first `count` training photos (a folder's files or shards) as uint8 RGB (at least FIT_SIDE
    on each side where they are)."""
    return [np.asarray(read_image(images, index)) for index in range(min(count, len(images)))]
