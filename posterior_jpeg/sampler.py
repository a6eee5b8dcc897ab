"""PosteriorSampler: several posterior reconstructions of a JPEG file, each exactly consistent with it.

Big images run through G in overlapping tiles (memory follows the tile, not the image) that are
blended with linear ramps and projected onto the file as a whole afterwards. The noise z is keyed
to positions (`models.noise.PositionalNoise`): the map drawn before a given layer at a given cell of
the noise grid depends only on the sample's seed, the layer and the cell's place in the whole image. So a seed gives the same sample
whatever the batch size, and tiled and untiled runs differ only where a tile's edge cuts G's
receptive field (near the seams, where the blending ramps hide it).

Bit for bit, too: convolution kernels pick their blocking by the batch's shape (oneDNN on AVX-512
CPUs, cuDNN), so a sample computed in a batch of 2 can differ in its last bits from the same sample
in a batch of 1, and one 8-bit rounding apart is another file; at a fixed batch shape, the place in
the batch can matter too (a batch of 3 on an AVX-512 CPU). So
every network call holds one sample: S gets the sample and its antithetic mirror as one batch of 2,
M the file's `posterior_mean_flips` flips as one batch, always in the same places. A seed's sample is then the
same bits whatever n, the other seeds of the run and where a run was resumed, on a given machine,
precision and tile size. On a CPU one image fills the cores; a GPU would want several small images
per call, which this gives up for exactness.

Grayscale in, grayscale out: for a grayscale file each sample is G's output reduced to its luma
(libjpeg's RGB -> Y), one channel through the projection and into the PNG. A colour file whose
chroma is one flat tint (a gray photo stored as YCbCr, see `JpegFile.flat_chroma`) keeps the
decode's chroma: G's colour there would be speckle that nothing in the file supports.
"""

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .jpeg.color import rgb_to_gray, rgb_to_ycbcr, ycbcr_to_rgb
from .jpeg.file import JpegFile
from .jpeg.subsampling import GRAY
from .jpeg.projection import project as project_onto, projection
from .errors import PosteriorJpegError
from .models.generator import AnchoredGenerator
from .models.noise import GRID, PositionalNoise
from .pixels import round_to_8_bits
from .precision import choose_precision, torch_dtype
from .tiling import DEFAULT_OVERLAP, DEFAULT_TILE, PAD_MULTIPLE

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"

def resolve_device(name: str) -> torch.device:
    """"auto" (CUDA when available, else the CPU), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tile_spans(length: int, tile: int | None, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the tiles along one axis: the fewest tiles of at most `tile` pixels whose
    neighbours share at least `overlap`, all of one length (a multiple of 16) and spread evenly,
    starting on multiples of 16; the last one ends at the edge (G pads it, as it pads a whole image)."""
    if not tile or length <= tile:
        return [(0, length)]
    count = _ceil_div(length - overlap, tile - overlap)
    size = PAD_MULTIPLE * _ceil_div(_ceil_div(length + (count - 1) * overlap, count), PAD_MULTIPLE)
    last = _ceil_div(length - size, PAD_MULTIPLE)  # the last start, in 16-pixel units
    starts = [PAD_MULTIPLE * (i * last // (count - 1)) for i in range(count)]
    return [(start, min(start + size, length)) for start in starts]


def _ramp(start: int, end: int, length: int, overlap: int, device=None) -> torch.Tensor:
    """Blending weights of one tile along one axis: 1 inside, rising linearly over `overlap`
    pixels from an edge shared with another tile (never at the image's own edges); built on
    `device`, so that blending never copies from the host."""
    weights = torch.ones(end - start, device=device)
    if overlap == 0:
        return weights
    rise = (torch.arange(overlap, device=device) + 0.5) / overlap  # tiles are longer than the overlap (tile_spans)
    if start > 0:
        weights[:overlap] = torch.minimum(weights[:overlap], rise)
    if end < length:
        weights[-overlap:] = torch.minimum(weights[-overlap:], rise.flip(0))
    return weights


_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # posterior_mean's flips, in the order posterior_mean_flips takes them
DEFAULT_POSTERIOR_MEAN_FLIPS = 4


def _flip(image: torch.Tensor, dims: tuple) -> torch.Tensor:
    return image.flip(dims) if dims else image


def _file_colour(images: torch.Tensor, jpeg: JpegFile, decoded: torch.Tensor) -> torch.Tensor:
    """Network outputs [N, 3, H, W] in [0, 1] with the colour the file allows: luma alone for a
    grayscale file; for a flat-chroma file, their luma with the chroma of the decode [3, H, W]."""
    if jpeg.sampling == GRAY:
        return rgb_to_gray(images)
    if not jpeg.flat_chroma:
        return images
    luma = rgb_to_ycbcr(255.0 * images)[:, :1]
    chroma = rgb_to_ycbcr(255.0 * decoded[None])[:, 1:].expand(len(images), -1, -1, -1)
    return (ycbcr_to_rgb(torch.cat([luma, chroma], dim=1)) / 255.0).clamp(0, 1)


@dataclass
class Sample:
    """One posterior sample: its seed, the image [C, H, W] in [0, 1] on the CPU (C = 1 for a
    grayscale file, else 3; on the 8-bit grid when projected), the seconds it took (its share of its
    batch's generator pass and projection) and, when projected, the float-consistent result that the
    8-bit image rounds (for 16-bit output)."""

    seed: int
    image: torch.Tensor
    seconds: float
    floats: torch.Tensor | None = None  # projected samples: the float result before 8-bit rounding


class PosteriorSampler:
    """Draws posterior samples G(z_seed, y, q) for a JpegFile and projects them onto it.

    tile: run G on tiles of at most
    tile x tile pixels (a multiple of 16), None or 0 for the whole image at once; overlap: pixels
    shared by neighbouring tiles (a multiple of 16, at most tile / 2). dtype: autocast precision of
    the networks (reduced precision runs channels_last); projection and consistency stay in fp32 and
    fp64. An anchored G = S(z, M(y, q), q) runs M once per file (on posterior_mean_flips flips: see
    `posterior_mean`) and S once per sample."""

    def __init__(
        self,
        generator: nn.Module,
        source: str,
        device="cpu",
        dtype=torch.float32,
        tile: int | None = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        posterior_mean_flips: int = DEFAULT_POSTERIOR_MEAN_FLIPS,
    ):
        if posterior_mean_flips not in (1, 2, 4):
            raise ValueError(f"posterior_mean_flips must be 1, 2 or 4, got {posterior_mean_flips}")
        if overlap < 0 or overlap % PAD_MULTIPLE:
            raise ValueError(f"tile overlap must be a non-negative multiple of {PAD_MULTIPLE}, got {overlap}")
        if tile and (tile % PAD_MULTIPLE or tile < max(2 * overlap, PAD_MULTIPLE)):
            raise ValueError(
                f"tile must be a multiple of {PAD_MULTIPLE} and at least {max(2 * overlap, PAD_MULTIPLE)}, got {tile}"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.memory_format = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
        self.generator = generator.to(device=device, memory_format=self.memory_format).eval()
        self.anchored = isinstance(generator, AnchoredGenerator)
        self.posterior_mean_network = (generator.mean if self.anchored
                                       else None if generator.config.noise else generator)
        self.sample_network = generator.add_detail if self.anchored else generator
        self.source = source
        self.tile = tile or None
        self.overlap = overlap
        self.posterior_mean_flips = posterior_mean_flips
        self.on_tile = None  # progress hook for images of several tiles: on_tile(network, done, total)

    @classmethod
    def from_checkpoint(
        cls,
        path=None,
        device: str = "auto",
        dtype: str = "auto",
        tile: int | None = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
        posterior_mean_flips: int = DEFAULT_POSTERIOR_MEAN_FLIPS,
    ) -> "PosteriorSampler":
        """path: a run folder (its latest checkpoint), a checkpoint folder, a weights file, or None for
        the model bundled with the package. dtype: "auto" (see `precision.choose_precision`) or a name
        in PRECISIONS."""
        if path is None:
            if not (DEFAULT_MODEL / checkpoints.WEIGHTS).is_file():
                raise checkpoints.CheckpointError(
                    "no default model is bundled with this installation; pass a checkpoint "
                    "(--checkpoint RUN_DIR, a folder written by train.py)"
                )
            path = DEFAULT_MODEL
        chosen = resolve_device(device)
        generator, _ = checkpoints.load_generator(path, chosen)
        precision = torch_dtype(choose_precision(dtype, chosen.type).name)
        return cls(generator, str(path), chosen, precision, tile, overlap, posterior_mean_flips)

    def sample(self, jpeg: JpegFile, n: int = 8, seed: int = 0, project: bool = True) -> torch.Tensor:
        """[n, C, H, W] in [0, 1] on the CPU (C = 1 for a grayscale file, else 3): sample i uses
        seed + i, the same bits whatever n (see the module's note).

        The input y is the file decoded from its coefficients, on the 8-bit grid as in training."""
        return torch.stack([s.image for s in self.samples(jpeg, range(seed, seed + n), project)])

    @torch.no_grad()
    def samples(self, jpeg: JpegFile, seeds, project: bool = True, posterior_mean: torch.Tensor | None = None
                ) -> Iterator[Sample]:
        """The samples of the given seeds (any ints, in order), each as soon as it is ready: a caller
        can write each out without holding them all, and a resumed run draws only the seeds it lacks.
        posterior_mean: the file's `posterior_mean_of`, when the caller has it already (an anchored
        model's S starts from it: M is the dearest pass, never run twice for one file)."""
        decoded = round_to_8_bits(jpeg.decode(device=self.device))
        tables = jpeg.qtable_tensor(self.device)
        y = decoded
        if self.anchored:  # S's input: M(y, q), once per file
            y = self.posterior_mean(decoded, tables) if posterior_mean is None else posterior_mean
        for seed in seeds:
            began = perf_counter()
            image = _file_colour(self.generate(y, tables, seed), jpeg, decoded)
            if project:
                result = projection(image, jpeg)
                image, floats = torch.cat([result.images, result.floats]).cpu()  # one copy to the host
            else:
                image, floats = image[0].cpu(), None
            yield Sample(seed, image, perf_counter() - began, floats)

    @torch.no_grad()
    def posterior_mean_of(self, jpeg: JpegFile) -> torch.Tensor:
        """M(y, q) of a file, [3, H, W] on the model's device, unclamped: what `posterior_mean_decode`
        shows and an anchored model's S starts from."""
        return self.posterior_mean(round_to_8_bits(jpeg.decode(device=self.device)), jpeg.qtable_tensor(self.device))

    @torch.no_grad()
    def posterior_mean_decode(self, jpeg: JpegFile, project: bool = True,
                              posterior_mean: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior-mean decode M(y, q), [C, H, W] in [0, 1] on the CPU, projected by default:
        the best-PSNR output, from an anchored model's M or a noise-free model M alone.
        posterior_mean: the file's `posterior_mean_of`, when the caller has it already."""
        decoded = round_to_8_bits(jpeg.decode(device=self.device))
        if posterior_mean is None:
            posterior_mean = self.posterior_mean(decoded, jpeg.qtable_tensor(self.device))
        image = _file_colour(posterior_mean[None].clamp(0, 1), jpeg, decoded)
        return (project_onto(image, jpeg)[0] if project else image[0]).cpu()

    @torch.no_grad()
    def posterior_mean(self, y: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """M(y, q) [3, H, W] on the model's device, averaged over `posterior_mean_flips` flips of the image
        (none; left-right; and up-down), run as one batch. On the image padded to 16 pixels a flip
        keeps the file's block grid and tables, so each flipped run is as good an estimate as the
        first; their mean is better (README, "Measured": what the flips buy at each quality)
        and cancels the period-2 part of what M's 1/4-resolution head adds by pixel position."""
        if self.posterior_mean_network is None:
            raise PosteriorJpegError(
                f"{self.source}: this model has no posterior-mean network (train one with configs/cpu_mean.yaml)"
            )
        height, width = y.shape[-2:]
        padded = F.pad(y[None], (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE), mode="replicate")[0]
        flips = _FLIPS[: self.posterior_mean_flips]
        outputs = self._tiled(self.posterior_mean_network, torch.stack([_flip(padded, dims) for dims in flips]), tables, None,
                              "M")
        total = torch.zeros_like(padded)
        for output, dims in zip(outputs, flips):
            total += _flip(output, dims)
        return total[:, :height, :width] / self.posterior_mean_flips

    @torch.no_grad()
    def generate(self, y: torch.Tensor, tables: torch.Tensor, seed: int) -> torch.Tensor:
        """The sampling network on y [3, H, W] (an anchored model's M(y, q)) for one seed, tile by
        tile, blended: [1, 3, H, W] in [0, 1] on the model's device, not projected."""
        return self._tiled(self.sample_network, y[None], tables, [seed], f"sample {seed}").clamp(0, 1)

    def _tiled(self, network, images: torch.Tensor, tables: torch.Tensor, seeds: list[int] | None,
               name: str) -> torch.Tensor:
        """network (called `name` in progress reports) on images [N, 3, H, W] (with the noise of
        `seeds`, one per image, or none), tile by tile (row by row, in a fixed order), blended with
        linear ramps: [N, 3, H, W] on the model's device, not clamped."""
        height, width = images.shape[-2:]
        rows = tile_spans(height, self.tile, self.overlap)
        cols = tile_spans(width, self.tile, self.overlap)
        if len(rows) == len(cols) == 1:
            return self._run(network, images, tables, seeds, 0, 0)
        total = torch.zeros(len(images), 3, height, width, device=self.device)
        weight = torch.zeros(height, width, device=self.device)
        spans = [(top, bottom, left, right) for top, bottom in rows for left, right in cols]
        for done, (top, bottom, left, right) in enumerate(spans, 1):
            ramp = (_ramp(top, bottom, height, self.overlap, self.device)[:, None]
                    * _ramp(left, right, width, self.overlap, self.device))
            out = self._run(network, images[:, :, top:bottom, left:right], tables, seeds, top, left)
            total[:, :, top:bottom, left:right] += out * ramp
            weight[top:bottom, left:right] += ramp
            if self.on_tile is not None:
                self.on_tile(name, done, len(spans))
        return total / weight

    def _run(self, network, images: torch.Tensor, tables: torch.Tensor, seeds: list[int] | None, top: int,
             left: int) -> torch.Tensor:
        """network on one tile [N, 3, h, w] whose corner is pixel (top, left) of the image, with that
        place's noise; float32 on the model's device."""
        noise = None if seeds is None else PositionalNoise(seeds, top // GRID, left // GRID, self.device)
        count = len(images)
        images = images.contiguous(memory_format=self.memory_format)
        reduced = self.dtype != torch.float32  # autocast only then: fp32 runs on any device, even "meta"
        with torch.autocast(self.device.type, dtype=self.dtype) if reduced else contextlib.nullcontext():
            out = network(images, tables.expand(count, -1, -1, -1), noise)
        return out.float()

    def compile(self) -> "PosteriorSampler":
        """torch.compile each network as its class chooses (`nn.Module.compile`; the residual
        generator compiles its trunk, the bulk of the work). The first run at each tile shape
        compiles, which takes a while."""
        networks = [self.generator.mean, self.generator.detail] if self.anchored else [self.generator]
        for network in networks:
            network.compile()
        return self


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"Sampler.{old} is now PosteriorSampler.{new}", DeprecationWarning, stacklevel=3)


class Sampler(PosteriorSampler):
    """`posterior_jpeg.Sampler`, the former name, for code written against it: its former spellings
    (`mean_flips=`, `mmse`, `mean_of`, `samples(mean=)`, `mean_network`) still work, each warning once
    per use with its new name. New code uses `PosteriorSampler`."""

    def __init__(self, *args, mean_flips: int | None = None, **kwargs):
        if mean_flips is not None:
            _renamed("mean_flips", "posterior_mean_flips")
            kwargs["posterior_mean_flips"] = mean_flips
        super().__init__(*args, **kwargs)

    @classmethod
    def from_checkpoint(cls, *args, mean_flips: int | None = None, **kwargs) -> "Sampler":
        if mean_flips is not None:
            _renamed("mean_flips", "posterior_mean_flips")
            kwargs["posterior_mean_flips"] = mean_flips
        return super().from_checkpoint(*args, **kwargs)

    def mmse(self, jpeg: JpegFile, project: bool = True, mean: torch.Tensor | None = None) -> torch.Tensor:
        _renamed("mmse", "posterior_mean_decode")
        return self.posterior_mean_decode(jpeg, project, mean)

    def mean_of(self, jpeg: JpegFile) -> torch.Tensor:
        _renamed("mean_of", "posterior_mean_of")
        return self.posterior_mean_of(jpeg)

    def samples(self, jpeg: JpegFile, seeds, project: bool = True, posterior_mean: torch.Tensor | None = None,
                mean: torch.Tensor | None = None) -> Iterator[Sample]:
        if mean is not None:
            _renamed("samples(mean=)", "samples(posterior_mean=)")
            posterior_mean = mean
        return super().samples(jpeg, seeds, project, posterior_mean)

    @property
    def mean_network(self):
        _renamed("mean_network", "posterior_mean_network")
        return self.posterior_mean_network
