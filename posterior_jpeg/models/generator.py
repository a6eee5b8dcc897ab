"""The stochastic decoder G(z, y, q): decoded JPEG y + tables q + noise z -> one plausible original.

Shape of the network (the paper's, with a pluggable trunk and table conditioning added):
pixel-unshuffle x4 (the trunk runs at 1/4 resolution, 16x cheaper per layer), conv in, trunk, conv
out, pixel-shuffle x4 (optionally one more 3x3 conv at full resolution), and the result is added to y. Residual output: y is already a consistent
estimate, so G starts near it and only has to learn the missing detail; the consistency penalty is
small from the first step instead of having to pull a random image onto y.

Registered as architecture "residual" (models/registry.py). Trunks, chosen by `GeneratorConfig.trunk`:
- "rrdb": ESRGAN's residual-in-residual dense blocks (residual scaling 0.2), with the paper's noise:
  one fresh N(0, 1) channel, times a learnable scalar (initially 1), concatenated before every conv.
- "plain": residual blocks of two wide 3x3 convs with one fresh N(0, 1) map per block added to the
  block's input through a learnable per-channel scale: the same job in big dense convs, which run
  near the tensor-core roofline where the dense blocks' thin concatenations do not.

Beyond the paper, the trunk is FiLM-modulated (per-block scale and shift) by an embedding of the
file's quantization tables, so one model serves every quality and custom tables.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics.psnr import luma
from ..tiling import PAD_MULTIPLE
from .noise import GRID, MirroredNoise, NoiseRng, NoiseSource, cell_noise, full_resolution_noise, noise_source
from .registry import build, register

UNSHUFFLE = GRID  # the trunk runs on the noise grid: position-keyed noise keys each trunk cell
RESIDUAL_SCALE = 0.2
PLAIN_NOISE_INIT = 0.1  # added noise starts at a tenth of unit features: seeds differ, features dominate
TRUNKS = ("rrdb", "plain")


@dataclass
class GeneratorConfig:
    """Architecture of G; one dataclass so configs, checkpoints and tests build the same code.

    arch: "residual", this architecture's name in the registry.
    trunk: "rrdb" (the paper's) or "plain" (fast wide residual blocks).
    features: trunk width. blocks: number of RRDB or residual blocks.
    growth: dense-block growth channels (rrdb only).
    table_embedding: width of the table embedding that drives FiLM; 0 gives the paper's
    table-blind network.
    full_res_features: 0: conv out emits the residual's 48 sub-pixel values per 1/4-resolution cell
    and pixel-shuffle places them (each of the 16 positions of a 4x4 cell has its own filter, which
    invites a 4-pixel periodic pattern). > 0: conv out emits this many features per full-resolution
    pixel and one 3x3 conv at full resolution maps them to RGB, across cell borders, so no period is
    built in (a few percent more compute).
    noise: False builds a deterministic network (no noise inputs, no noise scales): the posterior-mean
    estimate M(y, q), trained with MSE, for which noise is only a nuisance to unlearn."""

    arch: str = "residual"  # the architecture (models/registry.py): pixel-unshuffle, trunk, pixel-shuffle, added to y
    trunk: str = "rrdb"  # "rrdb" (the paper's) or "plain" (fast wide residual blocks)
    features: int = 64  # trunk width
    blocks: int = 23  # number of RRDB or residual blocks
    growth: int = 32  # dense-block growth channels (rrdb only)
    table_embedding: int = 64  # width of the quantization-table embedding that drives FiLM; 0: table-blind
    full_res_features: int = 0  # 0: pixel-shuffle the residual; > 0: this many full-resolution features, then a 3x3 conv
    noise: bool = True  # false: a deterministic network (the MMSE estimate M, no noise inputs)

    def __post_init__(self):
        if self.trunk not in TRUNKS:
            raise ValueError(f"unknown generator trunk {self.trunk!r}; expected one of {', '.join(TRUNKS)}")
        if min(self.features, self.blocks, self.growth) < 1 or min(self.table_embedding, self.full_res_features) < 0:
            raise ValueError(f"generator sizes must be positive, got {self}")


PRESETS = {
    # The paper's network: 64 features, 23 RRDBs, growth 32.
    "paper": GeneratorConfig(trunk="rrdb", features=64, blocks=23, growth=32),
    # A wide plain trunk of about the paper's size: large convolutions, which GPU tensor cores run well.
    "plain": GeneratorConfig(trunk="plain", features=256, blocks=12),
    # Small enough to train and sample on a CPU; 24 convs give a receptive field of ~200 pixels.
    "demo": GeneratorConfig(trunk="plain", features=96, blocks=12),
    # For tests.
    "tiny": GeneratorConfig(trunk="rrdb", features=16, blocks=1, growth=8, table_embedding=8),
}


def build_generator(config) -> nn.Module:
    """A freshly initialised generator from its config (any registered architecture) or the name of
    one of PRESETS."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown generator preset {config!r}; expected one of {', '.join(PRESETS)}")
        config = PRESETS[config]
    return build(config)


def _init_scaled(conv: nn.Conv2d, scale: float) -> None:
    """Kaiming init shrunk by `scale` (ESRGAN's): deep residual trunks start close to the identity."""
    nn.init.kaiming_normal_(conv.weight, a=0.2)
    with torch.no_grad():
        conv.weight.mul_(scale)
    nn.init.zeros_(conv.bias)


class DenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the block input and all earlier outputs plus one noise channel."""

    def __init__(self, features: int, growth: int, noise: bool):
        super().__init__()
        extra = 1 if noise else 0
        self.convs = nn.ModuleList(
            nn.Conv2d(features + i * growth + extra, growth if i < 4 else features, 3, padding=1) for i in range(5)
        )
        self.noise_scales = nn.Parameter(torch.ones(5)) if noise else None
        for conv in self.convs:
            _init_scaled(conv, 0.1)

    def forward(self, x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        inputs = [x]
        for i, conv in enumerate(self.convs):
            extra = [] if self.noise_scales is None else [self.noise_scales[i] * noise.like(x)]
            out = conv(torch.cat([*inputs, *extra], dim=1))
            if i < 4:
                inputs.append(F.leaky_relu(out, 0.2))
        return x + RESIDUAL_SCALE * out


class RRDB(nn.Module):
    """Residual-in-residual: three dense blocks inside one more scaled skip."""

    def __init__(self, features: int, growth: int, noise: bool):
        super().__init__()
        self.dense = nn.ModuleList(DenseBlock(features, growth, noise) for _ in range(3))

    def forward(self, x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        out = x
        for block in self.dense:
            out = block(out, noise)
        return x + RESIDUAL_SCALE * out


class RRDBTrunk(nn.Module):
    """ESRGAN's trunk: RRDBs, one more conv, and a long skip."""

    def __init__(self, features: int, blocks: int, growth: int, noise: bool):
        super().__init__()
        self.blocks = nn.ModuleList(RRDB(features, growth, noise) for _ in range(blocks))
        self.conv = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor, noise: NoiseSource, film: list | None) -> torch.Tensor:
        out = x
        for i, block in enumerate(self.blocks):
            out = _modulate(block(out, noise), film, i)
        return x + self.conv(out)


class PlainBlock(nn.Module):
    """x + 0.2 * conv(lrelu(conv(x + s * n))): noise enters through the learned branch only."""

    def __init__(self, features: int, noise: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.noise_scale = nn.Parameter(torch.full((1, features, 1, 1), PLAIN_NOISE_INIT)) if noise else None
        _init_scaled(self.conv1, 0.1)
        _init_scaled(self.conv2, 0.1)

    def forward(self, x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
        inner = x if self.noise_scale is None else x + self.noise_scale * noise.like(x)
        branch = self.conv2(F.leaky_relu(self.conv1(inner), 0.2))
        return x + RESIDUAL_SCALE * branch


class PlainTrunk(nn.Module):
    """A stack of wide residual blocks (no dense concatenations)."""

    def __init__(self, features: int, blocks: int, noise: bool):
        super().__init__()
        self.blocks = nn.ModuleList(PlainBlock(features, noise) for _ in range(blocks))

    def forward(self, x: torch.Tensor, noise: NoiseSource, film: list | None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = _modulate(block(x, noise), film, i)
        return x


def _modulate(features: torch.Tensor, film: list | None, index: int) -> torch.Tensor:
    """FiLM: features * (1 + scale) + shift with block `index`'s per-sample, per-channel parameters."""
    if film is None:
        return features
    scale, shift = film[index]
    return features * (1.0 + scale) + shift


def normalise_tables(qtables: torch.Tensor, batch: int) -> torch.Tensor:
    """Tables -> [N, 128] features log(q) / log(255) of the luma then the chroma table.

    Accepts [T, 8, 8] or [N, T, 8, 8] with T = 1 (grayscale: luma stands in for chroma), 2 (luma,
    chroma) or 3 (Y, Cb, Cr: Cb's table is used). The log spreads qualities evenly: tables scale
    multiplicatively with IJG quality."""
    qtables = torch.as_tensor(qtables)
    if qtables.dim() == 3:
        qtables = qtables.unsqueeze(0)
    if qtables.dim() != 4 or qtables.shape[-2:] != (8, 8) or not 1 <= qtables.shape[1] <= 3:
        raise ValueError(
            f"quantization tables must be [N, T, 8, 8] or [T, 8, 8] with T in 1..3, got {tuple(qtables.shape)}"
        )
    luma = qtables[:, 0]
    chroma = qtables[:, 1] if qtables.shape[1] > 1 else luma
    tables = torch.stack([luma, chroma], dim=1).float().clamp(min=1.0)
    return (tables.log() / math.log(255.0)).flatten(1).expand(batch, -1)


@register("residual", "generator", GeneratorConfig)
class Generator(nn.Module):
    """G(z, y, q). forward(y [N, 3, H, W] in [0, 1], qtables, noise) -> [N, 3, H, W].

    qtables: see `normalise_tables`. noise: the source of z, see `NoiseSource`; pass
    `seeded_noise(seeds)` so that sample i is reproducible from seeds[i] alone, or any object
    with NoiseSource's `like(features)` method (the sampler's position-keyed noise).
    Any H, W: the input is padded (edges repeated) to a multiple of 16 and the output cropped back.
    The output is y plus a residual and is not clamped: losses and the critic see G's raw output;
    whoever saves images clamps and quantizes."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        channels = 3 * UNSHUFFLE**2
        self.conv_in = nn.Conv2d(channels, config.features, 3, padding=1)
        if config.trunk == "rrdb":
            self.trunk = RRDBTrunk(config.features, config.blocks, config.growth, config.noise)
        else:
            self.trunk = PlainTrunk(config.features, config.blocks, config.noise)
        if config.full_res_features:
            self.conv_out = nn.Conv2d(config.features, config.full_res_features * UNSHUFFLE**2, 3, padding=1)
            self.conv_full_res = nn.Conv2d(config.full_res_features, 3, 3, padding=1)
            _init_scaled(self.conv_full_res, 0.1)  # G starts near the identity: output ~ y plus a small residual
        else:
            self.conv_out = nn.Conv2d(config.features, channels, 3, padding=1)
            _init_scaled(self.conv_out, 0.1)
        if config.table_embedding:
            width = config.table_embedding
            self.table_mlp = nn.Sequential(
                nn.Linear(2 * 64, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU()
            )
            self.film = nn.ModuleList(nn.Linear(width, 2 * config.features) for _ in range(config.blocks))
            with torch.no_grad():
                for head in self.film:
                    head.weight.mul_(0.1)  # start near the identity modulation
                    head.bias.zero_()

    def modulations(self, qtables: torch.Tensor, batch: int, like: torch.Tensor) -> list | None:
        """Per block, (scale, shift) as [N, C, 1, 1] each; None for a table-blind network."""
        if not self.config.table_embedding:
            return None
        embedding = self.table_mlp(normalise_tables(qtables, batch).to(device=like.device, dtype=like.dtype))
        film = []
        for head in self.film:
            scale, shift = head(embedding)[:, :, None, None].chunk(2, dim=1)
            film.append((scale, shift))
        return film

    def forward(self, y: torch.Tensor, qtables: torch.Tensor, noise: NoiseRng = None) -> torch.Tensor:
        if y.dim() != 4 or y.shape[1] != 3:
            raise ValueError(f"G expects images [N, 3, H, W], got {tuple(y.shape)}")
        n, _, height, width = y.shape
        pad_h = -height % PAD_MULTIPLE
        pad_w = -width % PAD_MULTIPLE
        padded = F.pad(y, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else y
        features = self.conv_in(F.pixel_unshuffle(2.0 * padded - 1.0, UNSHUFFLE))
        film = self.modulations(qtables, n, features)
        features = self.trunk(features, noise_source(noise, n), film)
        residual = F.pixel_shuffle(self.conv_out(F.leaky_relu(features, 0.2)), UNSHUFFLE)
        if self.config.full_res_features:
            residual = self.conv_full_res(F.leaky_relu(residual, 0.2))
        return (padded + residual)[:, :, :height, :width]

    def compile(self, *args, **kwargs) -> None:
        """torch.compile the trunk alone (nn.Module.compile compiles the whole call): it is the bulk
        of the work, and padding, table embedding and the noise source's wrapping stay eager."""
        self.trunk.compile(*args, **kwargs)


class AnchoredGenerator(nn.Module):
    """G(z, y, q) = S(z, M(y, q), q): a frozen posterior-mean estimate M (a noise-free generator
    trained with MSE) and a detail network S, itself a generator, applied to M's output (each of
    any registered generator architecture).

    Why: on a CPU budget a single GAN-trained G lost PSNR against the plain decode, while M alone is
    cheap to train and gains over it; S then starts at M (its residual starts near 0) and only has to
    learn the detail that M cannot know. M stays frozen: the `posterior_mean` decode keeps its
    meaning, and training S costs no backward pass through M.

    antithetic: G(z) = M + (S(z, M) - S(-z, M)) / 2, an odd function of z around M. The noise is
    symmetric, so E_z[G] = M exactly: the first moment holds by construction, and what S would add
    whatever z is (a fixed pattern such as a 4-pixel hatch from the 1/4-resolution head) cancels.
    Costs two passes of S per sample."""

    def __init__(self, posterior_mean: nn.Module, detail: nn.Module, antithetic: bool = False, spread: nn.Module | None = None):
        super().__init__()
        if posterior_mean.config.noise:
            raise ValueError("the posterior-mean network M must be noise-free (generator.noise: false)")
        self.mean = posterior_mean.requires_grad_(False)  # `mean`: the prefix of M's weights in every checkpoint
        self.detail = detail
        self.config = detail.config
        self.antithetic = antithetic
        self.spread = spread

    def train(self, mode: bool = True) -> "AnchoredGenerator":
        super().train(mode)
        self.mean.eval()  # frozen: no running statistics or dropout to update, ever
        return self

    def posterior_mean(self, y: torch.Tensor, qtables: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.mean(y, qtables)

    def forward(self, y: torch.Tensor, qtables: torch.Tensor, noise: NoiseRng = None,
                output: str = "sample"):
        """output "sample": G(z, y, q). "log_spread": (V's log variances of M's residual by band,
        M) for training V (models/spread.py) through forward, the only call DDP synchronises."""
        m = self.posterior_mean(y, qtables)
        if output == "log_spread":
            return self.spread(m, qtables), m
        return self.add_detail(m, qtables, noise)

    def add_detail(self, m: torch.Tensor, qtables: torch.Tensor, noise: NoiseRng = None) -> torch.Tensor:
        """G given M's output: the sampler computes M once per file and this once per sample. The
        antithetic passes S(z) and S(-z) run as one batch of 2N (one call, one shape). With a spread
        network, the luma of S's detail is rebuilt band by band at V's variances (`compose_luma`)."""
        n = m.shape[0]
        source = noise_source(noise, n)
        tables = torch.as_tensor(qtables)
        tables = tables.reshape(-1, *tables.shape[-3:]).expand(n, -1, -1, -1)  # [T, 8, 8] or [1 or N, T, 8, 8]
        if not self.antithetic and self.spread is None:
            return self.detail(m, tables, source)
        if self.antithetic:
            pair = self.detail(torch.cat([m, m]), torch.cat([tables, tables]), MirroredNoise(source, n))
            detail = 0.5 * (pair[:n] - pair[n:])
        else:
            detail = self.detail(m, tables, source) - m
        if self.spread is None:
            return m + detail
        detail_luma = luma(detail)
        white = full_resolution_noise(source, m, fields=2)
        mixing = cell_noise(source, m, fields=3) if self.spread.config.mixes else None
        rebuilt = self.spread.rebuild_luma(m, tables, white, detail_luma, mixing)
        return m + detail + (rebuilt - detail_luma).to(detail)  # equal R, G, B: the chroma stays S's
