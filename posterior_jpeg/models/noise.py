"""The noise z of the generators, and how a sample's noise is keyed.

Every generator draws its noise as maps [N, 1, h, w] on the noise grid (one value per GRID x GRID
pixel cell of the padded image), in a fixed order, from a source with a `like(features)` method:
- `NoiseSource`: torch RNGs (training, and `seeded_noise` for reproducible samples);
- `PositionalNoise`: the sampler's: each value keyed by (seed, map, cell), so that a seed gives the
  same sample whatever the batch and the tiling;
- `MirroredNoise`: z for N samples and -z for their mirrors (antithetic pairs).
`full_resolution_noise` and `cell_noise` draw their maps through the same source, so that a
position-keyed source keys them as it keys the rest.
"""

import torch
import torch.nn.functional as F

GRID = 4  # pixels per noise cell along each axis: the generators' trunks run at 1/4 resolution

NoiseRng = torch.Generator | list[torch.Generator] | None  # torch RNGs of the noise z (see NoiseSource)


def seeded_noise(seeds: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded torch RNG per sample, for a generator's `forward(..., noise=...)`."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


class NoiseSource:
    """Fresh N(0, 1) maps [N, 1, h, w] for a batch, in the order the network asks for them.

    - list of N torch RNGs: sample i's maps come from RNG i alone, so a sample depends only on its
      own seed, never on the rest of the batch. Maps are drawn on each RNG's device and moved to
      the features' device: CPU RNGs give the same noise on every device.
    - one torch RNG: the whole batch's maps from it (reproducible for the same batch).
    - None: torch's global RNG on the features' device (the fast path for training).
    Maps are drawn in float32 and cast, so mixed precision does not change the noise."""

    def __init__(self, batch: int, rng: NoiseRng):
        if isinstance(rng, (list, tuple)) and len(rng) != batch:
            raise ValueError(f"got {len(rng)} noise RNGs for a batch of {batch}")
        self.batch = batch
        self.rng = rng

    def like(self, features: torch.Tensor) -> torch.Tensor:
        """One noise map per sample with the spatial size, dtype and device of `features`."""
        size = features.shape[-2:]
        if self.rng is None:
            noise = torch.randn((self.batch, 1, *size), device=features.device)
        elif isinstance(self.rng, torch.Generator):
            noise = torch.randn((self.batch, 1, *size), generator=self.rng, device=self.rng.device)
        else:
            noise = torch.cat([torch.randn((1, 1, *size), generator=g, device=g.device) for g in self.rng])
        return noise.to(device=features.device, dtype=features.dtype)


def noise_source(noise, batch: int):
    """The source a network draws its maps from: `noise` itself where it is one (has `like`), else a
    NoiseSource of the torch RNGs (or None) it is."""
    return noise if hasattr(noise, "like") else NoiseSource(batch, noise)


_MASK32 = 0xFFFFFFFF


def _mul32(values: torch.Tensor, constant: int) -> torch.Tensor:
    """values * constant mod 2**32 on int64 tensors of 32-bit values, in 16-bit halves so that no
    intermediate overflows int64 (signed overflow is not something to rely on)."""
    low = values * (constant & 0xFFFF)
    high = ((values * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(values: torch.Tensor) -> torch.Tensor:
    """The 32-bit finaliser of MurmurHash3: every input bit flips about half of the output bits."""
    values = values & _MASK32
    values = values ^ (values >> 16)
    values = _mul32(values, 0x85EBCA6B)
    values = values ^ (values >> 13)
    values = _mul32(values, 0xC2B2AE35)
    return values ^ (values >> 16)


def _seed_keys(seeds: list[int]) -> torch.Tensor:
    """One 32-bit key per seed, from both halves of the seed taken modulo 2**64."""
    words = torch.tensor([[(s % 2**64) & _MASK32, (s % 2**64) >> 32] for s in seeds], dtype=torch.int64)
    return _mix32(_mix32(words[:, 1]) ^ words[:, 0])


def normal_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes -> N(0, 1) through the inverse normal CDF of a uniform in (0, 1) made from the
    top 23 bits: k + 0.5 stays exact in float32 below 2**23, so the uniform never rounds to 0 or 1
    (which would give an infinite value)."""
    uniform = ((bits >> 9).float() + 0.5) / 2.0**23
    return torch.special.ndtri(uniform)


class PositionalNoise:
    """A noise source for G (like NoiseSource): N(0, 1) maps keyed by (seed, map, cell).

    The network asks for its maps in a fixed order; the k-th request of sample i at grid cell (r, c)
    of a tile whose corner sits at grid cell (top, left) of the image gets the value
    hash(seed_i, k, top + r, left + c), made normal through the inverse normal CDF. The corner is
    kept as tensors so that torch.compile does not specialise on it (one graph for every tile)."""

    def __init__(self, seeds: list[int], top: int = 0, left: int = 0, device=None):
        self.keys = _seed_keys(seeds).to(device)
        self.top = torch.tensor(top, device=device)
        self.left = torch.tensor(left, device=device)
        self.calls = 0

    def like(self, features: torch.Tensor) -> torch.Tensor:
        n, _, height, width = features.shape
        if n != len(self.keys):
            raise ValueError(f"noise for {len(self.keys)} samples requested for a batch of {n}")
        device = features.device
        layer = _mix32(self.keys ^ _mix32(torch.full_like(self.keys, self.calls)))
        self.calls += 1
        rows = torch.arange(height, device=device) + self.top
        cols = torch.arange(width, device=device) + self.left
        row_keys = _mix32(layer[:, None] ^ _mix32(rows)[None, :])
        bits = _mix32(row_keys[:, :, None] ^ cols[None, None, :])
        return normal_from_bits(bits).unsqueeze(1).to(features.dtype)


def full_resolution_noise(source, like: torch.Tensor, fields: int) -> torch.Tensor:
    """[N, fields, H, W] white noise at every pixel of `like` [N, C, H, W], drawn from the noise
    source as GRID**2 maps on the noise grid per field and pixel-shuffled: a
    position-keyed source (the sampler's) keys each pixel by its place in the whole image."""
    n, _, height, width = like.shape
    cells = like.new_empty(n, 1, -(-height // GRID), -(-width // GRID))
    maps = [torch.cat([source.like(cells) for _ in range(GRID**2)], dim=1) for _ in range(fields)]
    return torch.cat([F.pixel_shuffle(m, GRID) for m in maps], dim=1)[:, :, :height, :width].float()


def cell_noise(source, like: torch.Tensor, fields: int) -> torch.Tensor:
    """[N, fields, ceil(H / 8), ceil(W / 8)] white noise, one value per 8x8 cell: maps drawn on the
    noise grid (so a position-keyed source keys them as it keys the rest) and every second row and
    column kept."""
    n, _, height, width = like.shape
    cells = like.new_empty(n, 1, -(-height // GRID), -(-width // GRID))
    return torch.cat([source.like(cells)[:, :, ::2, ::2] for _ in range(fields)], dim=1).float()


class MirroredNoise:
    """Noise for a batch of 2N that is N samples and their mirror images: each map is z for the first
    half and -z for the second, z drawn from `source` for N samples."""

    def __init__(self, source, n: int):
        self.source = source
        self.n = n

    def like(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[0] != 2 * self.n:
            raise ValueError(f"mirrored noise for 2 x {self.n} samples requested for a batch of {features.shape[0]}")
        noise = self.source.like(features[: self.n])
        return torch.cat([noise, -noise])
