"""Is the spread of the samples the posterior's? Residual energies around the posterior mean.

A posterior sampler draws x_s so that x_s and the original x are exchangeable given the file. Around
the posterior mean M their residuals then carry the same energy, in the same places and at the same
frequencies. Every figure here is a ratio, samples' residual energy over the original's, so 1 is
calibrated, < 1 under-dispersed (the std map under-reports M's error), > 1 over-dispersed:
- overall: all pixels;
- by quartile of M's error: 8x8 tiles ranked by the original's residual energy, split in four;
- by radial frequency band of the residual's power spectrum (radius in units of Nyquist);
plus the rank correlation over tiles between the samples' residual energy and M's squared error
(how well the std map says where M is wrong) and the PSNR gap of rcGAN / pcaGAN, PSNR(mean of P
samples) - PSNR(one sample), which is 10 log10(2P / (P + 1)) for exchangeable samples. Luma only.
It needs the original, so it is an evaluation metric.

The quartiles and the rank correlation are not 1 and 1 even for a perfect sampler: tiles ranked by
the original's own residual put in the lowest quarter the tiles where the original happened to land
close to M, where an independent draw lands farther (and the reverse in the highest quarter); and a
tile's energy is a noisy draw of its variance. So beside them stand the figures the original would
give if it were one more sample of this model (each sample in turn taken as the original, the
others as the samples): a perfect sampler scores, up to noise, what its own samples score.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .psnr import as_batch, luma, psnr

TILE = 8
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, math.inf))  # radius / Nyquist: low, mid, high
BAND_NAMES = ("low", "mid", "high")


@dataclass
class Calibration:
    """The figures of one image (see the module docstring); every ratio is 1 when calibrated."""

    overall: float
    quartiles: tuple[float, float, float, float]  # M's error lowest quarter of tiles .. highest
    bands: tuple[float, float, float]  # low (r < 0.25), mid (0.25-0.5), high (>= 0.5)
    rank_correlation: float  # over tiles: samples' residual energy vs M's squared error
    psnr_gap: float  # PSNR(mean of the samples) - mean PSNR(one sample), dB
    psnr_gap_ideal: float  # 10 log10(2P / (P + 1)) for P exchangeable samples
    quartiles_exchangeable: tuple[float, float, float, float]  # a sample as the original (NaN for P = 1)
    rank_correlation_exchangeable: float  # likewise


    def as_dict(self) -> dict[str, float]:
        figures = {"calibration": self.overall, "rank_corr": self.rank_correlation,
                   "psnr_gap": self.psnr_gap, "psnr_gap_ideal": self.psnr_gap_ideal}
        figures.update({f"calibration_q{i + 1}": value for i, value in enumerate(self.quartiles)})
        figures.update({f"calibration_{name}": value for name, value in zip(BAND_NAMES, self.bands)})
        figures.update({f"calibration_q{i + 1}_exchangeable": value
                        for i, value in enumerate(self.quartiles_exchangeable)})
        figures["rank_corr_exchangeable"] = self.rank_correlation_exchangeable
        return figures


def ideal_psnr_gap(samples: int) -> float:
    """PSNR(mean of P samples) - PSNR(one sample) when samples and original are exchangeable: a
    sample's error is twice the posterior variance, the mean's (1 + 1/P) times it."""
    return 10.0 * math.log10(2.0 * samples / (samples + 1.0))


def tile_energy(residual: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, H // 8 * W // 8] mean square per whole 8x8 tile (partial edge tiles dropped)."""
    return F.avg_pool2d(residual.pow(2), TILE).flatten(1)


def band_energy(residual: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, 3] power of the residual in each radial band of BANDS."""
    height, width = residual.shape[-2:]
    power = torch.fft.fft2(residual[:, 0]).abs().pow(2)
    fy = torch.fft.fftfreq(height, dtype=residual.dtype, device=residual.device)[:, None]
    fx = torch.fft.fftfreq(width, dtype=residual.dtype, device=residual.device)[None, :]
    radius = (fy.pow(2) + fx.pow(2)).sqrt() / 0.5  # Nyquist (0.5 cycles per pixel) at 1
    return torch.stack([(power * ((radius >= low) & (radius < high))).flatten(1).sum(1) for low, high in BANDS], 1)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(values)
    ranks[values.argsort()] = torch.arange(values.numel(), dtype=values.dtype, device=values.device)
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-D tensors (ties broken by order: the figures here are continuous)."""
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra * rb).sum().item() / max(math.sqrt((ra.pow(2).sum() * rb.pow(2).sum()).item()), 1e-30)


def calibration(samples: torch.Tensor, mean: torch.Tensor, original: torch.Tensor) -> Calibration:
    """samples [P, 3, H, W], the posterior mean M [3, H, W] and the original [3, H, W], in [0, 1].

    The images must be at least 8x8 (one tile); P >= 1 (the PSNR gap needs P >= 2 to say anything)."""
    samples = as_batch(samples).double()
    mean, original = as_batch(mean).double(), as_batch(original).double()
    if mean.shape[0] != 1 or original.shape != mean.shape or samples.shape[1:] != mean.shape[1:]:
        raise ValueError(f"calibration needs samples [P, 3, H, W] and M, original [3, H, W] of one size, got "
                         f"{tuple(samples.shape)}, {tuple(mean.shape)}, {tuple(original.shape)}")
    if min(mean.shape[-2:]) < TILE:
        raise ValueError(f"calibration needs images of at least {TILE}x{TILE} pixels, got {tuple(mean.shape)}")
    truth = luma(original - mean)  # [1, 1, H, W]
    drawn = luma(samples - mean)  # [P, 1, H, W]
    drawn_energy = tile_energy(drawn)  # [P, tiles]
    quartiles, rank = _by_tile(drawn_energy, tile_energy(truth)[0])
    count = drawn_energy.shape[0]
    if count > 1:  # each sample in turn as the original, the rest as the samples
        others = [_by_tile(drawn_energy[torch.arange(count) != k], drawn_energy[k]) for k in range(count)]
        quartiles_exchangeable = tuple(sum(q[i] for q, _ in others) / count for i in range(4))
        rank_exchangeable = sum(r for _, r in others) / count
    else:
        quartiles_exchangeable, rank_exchangeable = (math.nan,) * 4, math.nan
    bands = tuple(_ratio(d, t) for d, t in zip(band_energy(drawn).mean(0), band_energy(truth)[0]))
    gap = (psnr(samples.mean(0, keepdim=True), original) - psnr(samples, original.expand_as(samples)).mean()).item()
    return Calibration(
        overall=_ratio(drawn.pow(2).mean(), truth.pow(2).mean()),
        quartiles=quartiles,
        bands=bands,
        rank_correlation=rank,
        psnr_gap=gap,
        psnr_gap_ideal=ideal_psnr_gap(samples.shape[0]),
        quartiles_exchangeable=quartiles_exchangeable,
        rank_correlation_exchangeable=rank_exchangeable,
    )


def _by_tile(drawn: torch.Tensor, truth: torch.Tensor) -> tuple[tuple[float, ...], float]:
    """Tile energies of the samples [P, tiles] against the original's [tiles]: the ratios by quartile
    of the original's energy, and the rank correlation of the samples' mean energy with it."""
    drawn = drawn.mean(0)
    quartiles = tuple(_ratio(drawn[part].sum(), truth[part].sum()) for part in truth.argsort().chunk(4))
    return quartiles, spearman(drawn, truth)


def _ratio(drawn: torch.Tensor, truth: torch.Tensor) -> float:
    """drawn / truth; NaN where the original has no residual energy to compare against."""
    truth = truth.item()
    return drawn.item() / truth if truth > 0 else math.nan
