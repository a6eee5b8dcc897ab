"""Fit the spread network's gains and dispersions: after projection, a sample carries the residual
energy of the truth, scattered over the cells as the truth's is.

V predicts the variance of M's residual by band, but the projection then clips whatever part of a
sample leaves the file's quantization intervals, and a projected sample keeps only part of V's
energy. So a sample is drawn wider, by a gain per band that depends on how coarse the tables are
(`SpreadConfig.gain_*`). The gains are fitted on training photos at
several qualities, a few rounds of: draw projected samples, compare each band's energy around M with
the original's, correct the gain by the root of the ratio; then a straight line in the table
coarseness through the per-quality gains. Before them, per quality, the dispersion of each cell's
variance (`models/spread.py`) at which the log of projected samples' cell energy over V's prediction
varies as much as the original's. Validation photos are never used.
"""

import numpy as np
import torch

from .data import pillow_jpeg, read_image
from .jpeg.file import read_jpeg
from .metrics.psnr import luma
from .models.generator import AnchoredGenerator
from .models.spread import cell_energy, split_bands, table_coarseness
from .pixels import to_chw_float
from .sampler import PosteriorSampler

FIT_QUALITIES = (10, 20, 30, 50, 75, 90)
FIT_SIDE = 256  # centre crops
FIT_SAMPLES = 2  # per photo and quality
FIT_ROUNDS = 3
MIN_SCATTER_SLOPE, MAX_DISPERSION = 0.1, 2.0  # bounds of the dispersion fit's secant step and result
ENERGY_FLOOR = 1e-8  # cell energy floor before the log: (1/40 gray level)^2, below what 8 bits show


def centre_crop(image: np.ndarray, side: int = FIT_SIDE) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[top : top + side, left : left + side]


def _band_energy(residual: torch.Tensor) -> torch.Tensor:
    """[3] total energy of each band of the luma of a residual [3, H, W]."""
    return split_bands(luma(residual[None].double())).pow(2).sum((0, 2, 3))


def fit_spread(generator: AnchoredGenerator, photos: list[np.ndarray], device="cpu",
               dtype=torch.float32) -> dict[str, dict[int, list[float]]]:
    """Set generator.spread.config's dispersions, then its gains, from uint8 [H, W, 3] photos (4:2:0,
    FIT_QUALITIES); returns each quality's fitted values (low, mid, high), for the record."""
    sampler = PosteriorSampler(generator, "calibration", device, dtype)
    cases = {}
    for quality in FIT_QUALITIES:
        cases[quality] = []
        for photo in photos:
            jpeg = read_jpeg(pillow_jpeg(centre_crop(photo), quality, "4:2:0"))
            m = sampler.posterior_mean_of(jpeg)
            cases[quality].append((jpeg, m, to_chw_float(centre_crop(photo)).to(m.device) - m))
    coarseness = {q: table_coarseness(cases[q][0][0].qtable_tensor(), 1).item() for q in FIT_QUALITIES}
    return {"dispersion": _fit_dispersion(generator.spread, sampler, cases, coarseness),
            "log_gain": _fit_gain(generator.spread.config, sampler, cases, coarseness)}


def _fit_dispersion(spread, sampler: PosteriorSampler, cases: dict, coarseness: dict) -> dict[int, list[float]]:
    """Per quality, the log std s whose samples scatter as the truth around V. A sample's scatter grows
    with s^2 more slowly than s^2 (each pixel's variance blends four cells, the bands blur across
    cells), so the slope is measured: one step as if it were 1, then a secant step to the truth's."""
    config = spread.config
    sigma = {}
    for quality, files in cases.items():
        with torch.no_grad():  # V's log variances: the same for every dispersion tried
            predicted = [spread(m[None], jpeg.qtable_tensor().to(m.device)).double() for jpeg, m, _ in files]
        truth = torch.cat([_log_cell_ratio(residual, log_variance)
                           for (_, _, residual), log_variance in zip(files, predicted)], 1).var(1).cpu().numpy()
        start = np.clip(np.array(config.dispersion_intercept) + np.array(config.dispersion_slope) * coarseness[quality], 0, None) ** 2
        drawn = _sample_scatter(spread.config, sampler, files, predicted, start)
        trial = start + np.clip(truth - drawn, 0, None)
        slope = np.clip((_sample_scatter(spread.config, sampler, files, predicted, trial) - drawn)
                        / np.maximum(trial - start, 1e-6),
                        MIN_SCATTER_SLOPE, 1.0)
        sigma[quality] = np.sqrt(np.clip(start + (truth - drawn) / slope, 0, MAX_DISPERSION**2))
    _fit_line(config, "dispersion", sigma, coarseness)
    return {q: sigma[q].round(4).tolist() for q in FIT_QUALITIES}


def _sample_scatter(config, sampler: PosteriorSampler, files: list, predicted: list, variance: np.ndarray) -> np.ndarray:
    """[3] variance over cells of the log of projected samples' cell energy over V's (`predicted`, per
    file), at dispersion^2 = variance."""
    _set_line(config, "dispersion", np.sqrt(variance))
    ratios = [_log_cell_ratio(sample.image.to(m.device) - m, log_variance)
              for (jpeg, m, _), log_variance in zip(files, predicted)
              for sample in sampler.samples(jpeg, range(FIT_SAMPLES), posterior_mean=m)]
    return torch.cat(ratios, 1).var(1).cpu().numpy()


def _log_cell_ratio(residual: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """[3, cells]: log of each cell's band energy of a residual [3, H, W] over V's variance [1, 3, h, w]."""
    energy = cell_energy(luma(residual[None].double()))[..., : log_variance.shape[-2], : log_variance.shape[-1]]
    return (torch.log(energy + ENERGY_FLOOR) - log_variance).flatten(2)[0]


def _fit_gain(config, sampler: PosteriorSampler, cases: dict, coarseness: dict) -> dict[int, list[float]]:
    log_gain = {q: np.array(config.gain_intercept) + np.array(config.gain_slope) * coarseness[q] for q in FIT_QUALITIES}
    for _ in range(FIT_ROUNDS):
        for quality, files in cases.items():
            _set_line(config, "gain", log_gain[quality])
            drawn = sum(_band_energy(sample.image.to(m.device) - m) / FIT_SAMPLES
                        for jpeg, m, _ in files for sample in sampler.samples(jpeg, range(FIT_SAMPLES), posterior_mean=m))
            truth = sum(_band_energy(residual) for _, _, residual in files)
            log_gain[quality] = log_gain[quality] + 0.5 * np.log((truth / drawn).cpu().numpy())
    _fit_line(config, "gain", log_gain, coarseness)
    return {q: log_gain[q].round(4).tolist() for q in FIT_QUALITIES}


def _set_line(config, name: str, values: np.ndarray) -> None:
    """One quality's values as the config's line: intercept = values, slope 0."""
    setattr(config, f"{name}_intercept", values.tolist())
    setattr(config, f"{name}_slope", [0.0] * 3)


def _fit_line(config, name: str, by_quality: dict, coarseness: dict) -> None:
    """The straight line in the table coarseness through each quality's values, into the config."""
    t = np.array([coarseness[q] for q in FIT_QUALITIES])
    slope, intercept = np.polyfit(t, np.stack([by_quality[q] for q in FIT_QUALITIES]), 1)
    setattr(config, f"{name}_intercept", intercept.tolist())
    setattr(config, f"{name}_slope", slope.tolist())


def training_photos(images, count: int) -> list[np.ndarray]:
    """The first `count` training photos (a folder's files or shards) as uint8 RGB (at least FIT_SIDE
    on each side where they are)."""
    return [np.asarray(read_image(images, index)) for index in range(min(count, len(images)))]
