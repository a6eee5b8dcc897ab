"""The posterior's spread around M: how far M is from the original, where, and at which scale.

Without V, the samples of an anchored model are M plus one fine grain of the same size everywhere:
too much in flat areas, a fraction of M's error in texture, nothing at coarse scales. The spread
network V(M, q) predicts, per 8x8 cell, the variance of each scale band of the luma residual x - M
(trained by a Poisson deviance, so its variances are calibrated: `band_deviance`). A sample's luma
residual is then built band by band with exactly that variance (`compose_luma`):
- low band (periods over ~8 px) and mid band (4-8 px): band-passed white noise, so samples differ in
  shading and edge position, not only in grain;
- high band (2-4 px): S's own detail (its learned texture), normalised to unit local energy.
V gives E[energy | file] per cell; the original's energy scatters around it far more than a
Gaussian field's does (M misses an edge in one cell and nothing in the next: on training photos the
log of the original's cell energy over V's varies 0.2-0.9 more than a sample's). So each cell's
variance is drawn from a log-normal scale mixture with mean 1 around V's (a Gaussian scale mixture,
the classical model of natural images' band coefficients), its log std per band fitted like the
gains (`SpreadConfig.dispersion_*`).
Every part is an odd function of the noise (the mixture's draw is even in it) and V depends on M
alone, so the mean over z stays M.

Bands are split by two Gaussian blurs of the residual, sigma 1.5 and 0.75 pixels: their half-power
frequencies, 1/8 and 1/4 cycle per pixel, are the bounds of `metrics.calibration`'s bands.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.psnr import luma
from .generator import PlainTrunk, normalise_tables
from .registry import register

CELL = 8  # V predicts one variance per band per 8x8 cell: JPEG's block, the calibration's tile
BAND_SIGMAS = (1.5, 0.75)  # blurs that split low | mid | high
BANDS = 3
SMOOTHING_SIGMA = 4.0  # window of the local energy that S's high-band detail is normalised by
DETAIL_FLOOR = 1e-6  # (1/4 gray level)^2: where S adds nothing, its detail is not blown up
CONTRAST_SIGMA = 6.0  # M's low-band cue: its luma blurred at 1.5 px minus at 6 px
CUE_FLOOR = 1e-7  # floor of M's band energies before the log (flat areas)
CUE_CENTRE, CUE_SCALE = -9.0, 3.0  # log energies of 1e-7 .. 1e-2 scaled to about -2.4 .. 1.5 for the trunk


@dataclass
class SpreadConfig:
    """Architecture of V: a plain trunk at 1/8 resolution, FiLM-free (one table-driven shift and scale)."""

    arch: str = "band_spread"  # the architecture (models/registry.py): V's log variances per band and 8x8 cell
    features: int = 32  # trunk width
    blocks: int = 4  # residual blocks
    table_embedding: int = 32  # width of the quantization-table embedding
    # log gain of each band's std, a + b t with t the luma table's mean log step / log 255: the
    # projection clips the part of a sample outside the file's intervals, so a sample is drawn wider
    # than V's variance to carry it after projection (fitted on training photos: calibrate.py)
    gain_intercept: list[float] = field(default_factory=lambda: [0.0] * BANDS)
    gain_slope: list[float] = field(default_factory=lambda: [0.0] * BANDS)
    # std of the log of each cell's variance factor (mean 1), a + b t clamped at 0: the original's
    # cell energies scatter around V's prediction more than a Gaussian sample's (fitted: calibrate.py)
    dispersion_intercept: list[float] = field(default_factory=lambda: [0.0] * BANDS)
    dispersion_slope: list[float] = field(default_factory=lambda: [0.0] * BANDS)

    def __post_init__(self):
        if min(self.features, self.blocks, self.table_embedding) < 1:
            raise ValueError(f"spread network sizes must be positive, got {self}")
        if any(len(getattr(self, name)) != BANDS for name in FITTED):
            raise ValueError(f"spread gains and dispersions need {BANDS} values each (low, mid, high), got {self}")

    @property
    def mixes(self) -> bool:
        """Whether samples draw each cell's variance (any dispersion), which takes noise maps of its own."""
        return any(self.dispersion_intercept) or any(self.dispersion_slope)


FITTED = ("gain_intercept", "gain_slope", "dispersion_intercept", "dispersion_slope")  # set by calibrate.py


def _gaussian(sigma: float, device, dtype) -> torch.Tensor:
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W], edges repeated (the image's size is kept)."""
    kernel = _gaussian(sigma, images.device, images.dtype)
    radius = kernel.numel() // 2
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def split_bands(luma: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, 3, H, W]: low, mid and high band; they sum to the input."""
    coarse, fine = (blur(luma, sigma) for sigma in BAND_SIGMAS)
    return torch.cat([coarse, fine - coarse, luma - fine], dim=1)


def detail_bands(luma: torch.Tensor) -> torch.Tensor:
    """`split_bands` without what is coarser than CONTRAST_SIGMA in the low band: M's own local
    contrast at each scale (the low band itself would be mostly the image's brightness)."""
    bands = split_bands(luma)
    return torch.cat([bands[:, :1] - blur(luma, CONTRAST_SIGMA), bands[:, 1:]], dim=1)


def white_noise_band_std() -> torch.Tensor:
    """[3] std of each band of unit white noise (the root energy of each band's impulse response),
    which turns band-passed noise into unit-variance fields."""
    size = 4 * math.ceil(3 * max(BAND_SIGMAS)) + 1
    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    impulse[..., size // 2, size // 2] = 1.0
    return split_bands(impulse).pow(2).flatten(2).sum(-1).sqrt()[0].float()


@register("band_spread", "spread", SpreadConfig)
class SpreadNet(nn.Module):
    """V(M, q) -> [N, 3, ceil(H / 8), ceil(W / 8)] log variance of the low, mid and high band of the
    luma residual x - M, per 8x8 cell. M: [N, 3, H, W] in [0, 1]; qtables as `normalise_tables`.

    Where M is wrong is where M itself has energy (M's gradient energy per tile ranks the tiles by
    M's error at 0.78 on val), so the log energy of each band of M's own luma per cell
    (`detail_bands`) is an input
    and, through a 1x1 conv, a linear path to the output (a learned power law); the trunk, seeing
    M's pixels and the tables, learns the rest."""

    def __init__(self, config: SpreadConfig):
        super().__init__()
        self.config = config
        self.conv_in = nn.Conv2d(3 * CELL**2 + BANDS, config.features, 3, padding=1)
        self.table_mlp = nn.Sequential(nn.Linear(2 * 64, config.table_embedding), nn.SiLU(),
                                       nn.Linear(config.table_embedding, 2 * config.features))
        self.trunk = PlainTrunk(config.features, config.blocks, noise=False)
        self.conv_out = nn.Conv2d(config.features, BANDS, 3, padding=1)
        self.power_law = nn.Conv2d(BANDS, BANDS, 1)
        with torch.no_grad():
            self.table_mlp[-1].weight.mul_(0.1)
            self.table_mlp[-1].bias.zero_()
            self.conv_out.weight.mul_(0.1)
            self.conv_out.bias.zero_()
            self.power_law.weight.copy_(torch.eye(BANDS).view(BANDS, BANDS, 1, 1))  # start: M's own band energies
            self.power_law.bias.fill_(math.log(0.25))

    def forward(self, m: torch.Tensor, qtables: torch.Tensor) -> torch.Tensor:
        n, _, height, width = m.shape
        padded = F.pad(m, (0, -width % CELL, 0, -height % CELL), mode="replicate")
        cues = torch.log(F.avg_pool2d(detail_bands(luma(padded.float())).pow(2), CELL) + CUE_FLOOR)
        inputs = torch.cat([F.pixel_unshuffle(2.0 * padded - 1.0, CELL), ((cues - CUE_CENTRE) / CUE_SCALE).to(padded)], 1)
        features = self.conv_in(inputs)
        scale, shift = self.table_mlp(normalise_tables(qtables, n).to(features))[:, :, None, None].chunk(2, dim=1)
        features = self.trunk(features * (1.0 + scale) + shift, None, None)
        return self.conv_out(F.leaky_relu(features, 0.2)) + self.power_law(cues.to(features))

    def gain(self, qtables: torch.Tensor, batch: int) -> torch.Tensor:
        """[N, 3, 1, 1] the factor on each band's std for these tables (SpreadConfig's gains)."""
        t = table_coarseness(qtables, batch).to(self.conv_out.weight.device)[:, None]
        intercept, slope = (torch.tensor(v, device=t.device)[None] for v in (self.config.gain_intercept,
                                                                             self.config.gain_slope))
        return (intercept + slope * t).exp()[:, :, None, None]

    def dispersion(self, qtables: torch.Tensor, batch: int) -> torch.Tensor:
        """[N, 3, 1, 1] the std of the log of each cell's variance factor for these tables."""
        t = table_coarseness(qtables, batch).to(self.conv_out.weight.device)[:, None]
        intercept, slope = (torch.tensor(v, device=t.device)[None] for v in (self.config.dispersion_intercept,
                                                                             self.config.dispersion_slope))
        return (intercept + slope * t).clamp_min(0.0)[:, :, None, None]

    def rebuild_luma(self, m: torch.Tensor, qtables: torch.Tensor, white: torch.Tensor,
                     detail_luma: torch.Tensor, mixing: torch.Tensor | None = None) -> torch.Tensor:
        """A sample's luma residual [N, 1, H, W] whose bands have V's variances: white [N, 2, H, W]
        (unit white noise) band-passed for the low and mid band, S's luma detail for the high one.
        mixing [N, 3, h, w] (unit normal per cell and band, where the config mixes) draws each cell's
        variance around V's."""
        height, width = detail_luma.shape[-2:]
        variance = self(m, qtables).float().exp()
        if mixing is not None:
            sigma = self.dispersion(qtables, len(m))
            variance = variance * torch.exp(sigma * even_normal(mixing) - 0.5 * sigma.pow(2))
        std = per_pixel(variance, height, width).sqrt() * self.gain(qtables, len(m))
        scale = white_noise_band_std().to(white)
        fields = torch.cat([split_bands(white[:, i : i + 1])[:, i : i + 1] / scale[i] for i in range(2)], dim=1)
        return (std[:, :2] * fields).sum(1, keepdim=True) + std[:, 2:] * unit_detail(detail_luma.float())


def even_normal(noise: torch.Tensor) -> torch.Tensor:
    """Unit normal noise -> unit normal noise that is the same for -noise: |u| is half-normal, so
    erf(|u| / sqrt 2) is uniform, and the inverse normal CDF makes it normal again. Keeps a sample
    odd in z when its variance is drawn too."""
    uniform = torch.erf(noise.abs().double() / math.sqrt(2.0)).clamp(1e-12, 1.0 - 1e-12)
    return torch.special.ndtri(uniform).to(noise.dtype)


def table_coarseness(qtables: torch.Tensor, batch: int) -> torch.Tensor:
    """[N] the luma table's mean log step over log 255: 0 for all-ones tables, about 0.55 at IJG
    quality 10 and 0.1 at 90."""
    return normalise_tables(qtables, batch)[:, :64].mean(1)


def per_pixel(cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-cell maps [N, C, h, w] -> per-pixel [N, C, height, width], bilinear between cell centres."""
    full = F.interpolate(cells, scale_factor=CELL, mode="bilinear", align_corners=False)
    return full[:, :, :height, :width]


def cell_energy(residual_luma: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] -> [N, 3, ceil(H / 8), ceil(W / 8)]: each band's mean square per 8x8 cell (edge
    cells over their pixels in the image)."""
    bands = split_bands(residual_luma).pow(2)
    height, width = bands.shape[-2:]
    padding = (0, -width % CELL, 0, -height % CELL)
    total = F.avg_pool2d(F.pad(bands, padding), CELL)
    share = F.avg_pool2d(F.pad(torch.ones_like(bands[:1, :1]), padding), CELL)
    return total / share


def band_deviance(log_variance: torch.Tensor, residual_luma: torch.Tensor) -> torch.Tensor:
    """Poisson deviance of V's cell variances v against the residual's cell energies e, per image
    relative to its mean energy: sum(v - e log v) / sum(e), averaged over images. Its optimum is
    v = E[e] like the Gaussian likelihood's, but its log link also matches the sums, sum v = sum e,
    wherever V errs (the Gaussian likelihood matches mean(e / v) instead, which over-predicts the
    energy by the spread of V's errors: 1.6-2.7x on val when tried). The calibration figures compare
    energy sums."""
    energy = cell_energy(residual_luma.float())
    log_var = log_variance.float()
    per_image = (log_var.exp() - energy * log_var).flatten(1).sum(1) / energy.flatten(1).sum(1).clamp_min(1e-12)
    return per_image.mean()


def unit_detail(detail_luma: torch.Tensor) -> torch.Tensor:
    """S's luma detail [N, 1, H, W] scaled to unit local energy (an odd function of it)."""
    energy = blur(detail_luma.pow(2), SMOOTHING_SIGMA)
    return detail_luma * torch.rsqrt(energy + DETAIL_FLOOR)


