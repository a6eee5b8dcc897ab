"""Projection onto a file: clamp every DCT coefficient into its quantization interval, exactly.

A float projection alone (as in the paper) is not enough: saving the result as 8-bit RGB, the
0..255 range and the colour conversion move some coefficients back out of their intervals. We
alternate, in YCbCr, orthogonal projections onto the intervals and onto the RGB cube (a convex
feasibility problem, so the alternation converges), round to 8 bits, check every coefficient with
a bit-exact model of libjpeg's compressor, and give the coefficients that still differ a safety
margin inside their intervals, until the 8-bit image re-compresses to the file's coefficients.

The constraints of different MCUs (the 8x8 / 16x16 pixel units that libjpeg codes together) do not
interact, so the work runs on a batch of MCU tiles and each tile leaves the batch once it is done:
the cost follows the hard parts of the image, not its size.
"""

import functools
import math

import torch

from . import sampling
from .codec import component_tables, encode
from .color import YCC_OFFSET, rgb_to_gray, rgb_to_ycbcr, ycbcr_to_rgb, ycc_to_rgb_rows
from .dct import BLOCK, dct_matrix, unblockify


class Intervals:
    """Quantization intervals for a batch of same-sized images (or tiles): per component, the
    stored coefficients [K, hb, wb, 8, 8] and tables [K, 1, 1, 8, 8]."""

    def __init__(self, coefficients: list[torch.Tensor], tables: list[torch.Tensor], mode: str, size):
        self.coefficients = coefficients
        self.tables = tables
        self.mode = mode
        self.size = tuple(size)

    def subset(self, index: torch.Tensor) -> "Intervals":
        return Intervals([c[index] for c in self.coefficients], [t[index] for t in self.tables], self.mode, self.size)

    def bounds(self, margins: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per component, (low, high) of the un-shifted DCT in plane layout [K, 8 hb, 8 wb]: each
        interval shrunk by its margin (DCT units; half the step pins the centre), DC moved by the
        level shift (a block's DC of samples s is the DC of s - 128 plus 1024), so that a pass
        needs neither the shift nor a reshuffle into blocks."""
        result = []
        for stored, table, margin in zip(self.coefficients, self.tables, margins):
            centre = stored.float() * table
            centre[..., 0, 0] += 128.0 * BLOCK
            reach = (0.5 * table - margin).clamp(min=0.0)
            result.append((unblockify(centre - reach), unblockify(centre + reach)))
        return result


@functools.lru_cache(maxsize=None)
def _block_diagonal_dct(blocks: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The DCT of `blocks` consecutive 8-sample runs as one matrix: tile-sized planes transform with
    two small matmuls, no reshuffling into blocks."""
    return torch.block_diag(*[dct_matrix(dtype, device)] * blocks)


def interval_projection(
    ycc: torch.Tensor, mode: str, bounds: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal projection of [K, 3, H, W] YCbCr tiles (or [K, 1, H, W] Y of a grayscale file)
    onto the intervals (`Intervals.bounds`).

    Chroma is changed by spreading its block-domain change over the pixels it averages (the
    least-squares inverse of the averaging). Returns the projection and, per tile, how far (DCT
    units) the input lay outside its intervals."""
    height, width = ycc.shape[-2:]
    planes = list(ycc.unbind(1))
    outside = torch.zeros(ycc.shape[0], dtype=ycc.dtype, device=ycc.device)
    for c, (low, high) in enumerate(bounds):
        factors = sampling.component_factors(mode, c)
        plane = sampling.downsample(planes[c], factors, libjpeg_rounding=False)
        padded = sampling.pad_replicate(plane, *low.shape[1:])
        rows = _block_diagonal_dct(low.shape[1] // BLOCK, ycc.dtype, ycc.device)
        cols = _block_diagonal_dct(low.shape[2] // BLOCK, ycc.dtype, ycc.device)
        dct = rows @ padded @ cols.T
        change = dct.clamp(low, high) - dct
        outside = torch.maximum(outside, change.abs().flatten(1).amax(1))
        delta = sampling.fold_padding(rows.T @ change @ cols, *plane.shape[1:])
        planes[c] = planes[c] + sampling.fold_padding(sampling.spread(delta, factors), height, width)
    return torch.stack(planes, dim=1), outside


def gamut_projection(ycc: torch.Tensor) -> torch.Tensor:
    """Move [K, 3, H, W] YCbCr towards the colours whose R, G and B lie in 0..255.

    Each channel bound is a slab in YCbCr; one orthogonal projection onto each slab in turn (exact
    projections in the same metric as `interval_projection`, so alternating them converges). Only
    the pixels outside the cube are touched, which keeps this cheap on natural images. Gray [K, 1,
    H, W]: the cube is the range 0..255 itself."""
    if ycc.shape[1] == 1:
        return ycc.clamp(0.0, 255.0)
    rgb = ycbcr_to_rgb(ycc)
    outside = ((rgb < 0.0) | (rgb > 255.0)).any(dim=1)
    if not outside.any():
        return ycc
    offset = torch.tensor(YCC_OFFSET, dtype=ycc.dtype, device=ycc.device)
    channels_last = ycc.permute(0, 2, 3, 1).clone()
    pixels = channels_last[outside] - offset
    for row in torch.tensor(ycc_to_rgb_rows(), dtype=ycc.dtype, device=ycc.device):
        value = pixels @ row
        excess = (value - value.clamp(0.0, 255.0)) / row.dot(row)
        pixels = pixels - excess.unsqueeze(1) * row
    channels_last[outside] = pixels + offset
    return channels_last.permute(0, 3, 1, 2)


def _to_working(images: torch.Tensor) -> torch.Tensor:
    """Pixels (0..255) -> the space the projections work in: YCbCr, or Y itself for gray [K, 1, h, w]."""
    return images if images.shape[1] == 1 else rgb_to_ycbcr(images)


def _from_working(ycc: torch.Tensor) -> torch.Tensor:
    return ycc if ycc.shape[1] == 1 else ycbcr_to_rgb(ycc)


def inconsistent_coefficients(images_8bit: torch.Tensor, intervals: Intervals) -> list[torch.Tensor]:
    """Per component, a mask of the coefficients whose libjpeg re-encode differs from the stored ones."""
    qtables = torch.stack([t[:, 0, 0] for t in intervals.tables], dim=1)
    encoded = encode(images_8bit / 255.0, qtables, intervals.mode)
    return [e != c for e, c in zip(encoded, intervals.coefficients)]


def _spans(length: int, unit: int) -> list[tuple[int, int, int]]:
    """Split 0..length into runs of whole `unit`s and a remainder: (start, tile length, count)."""
    whole, rest = divmod(length, unit)
    spans = [(0, unit, whole)] if whole else []
    return spans + ([(whole * unit, rest, 1)] if rest else [])


def _tiles(images: torch.Tensor, jpeg) -> list[tuple[tuple, torch.Tensor, Intervals]]:
    """Cut [N, C, H, W] into MCU tiles, grouped by tile size (interior, right and bottom edges).

    Returns (region, tiles [K, C, th, tw], their intervals) per group; region locates the group."""
    n, channels = images.shape[:2]
    mode = jpeg.sampling
    mcu = [BLOCK * max(sampling.component_factors(mode, c)[i] for c in range(len(jpeg.coefficients))) for i in (0, 1)]
    stored = jpeg.coefficient_tensors(images.device)
    tables = component_tables(jpeg.qtable_tensor(images.device), 1, len(stored))
    groups = []
    for top, th, rows in _spans(jpeg.height, mcu[0]):
        for left, tw, cols in _spans(jpeg.width, mcu[1]):
            crop = images[:, :, top : top + rows * th, left : left + cols * tw]
            tiles = crop.reshape(n, channels, rows, th, cols, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, channels, th, tw)
            coefficients, tile_tables = [], []
            for c, blocks in enumerate(stored):
                fv, fh = sampling.component_factors(mode, c)
                bh, bw = sampling.block_grid(sampling.component_size(th, tw, (fv, fh)))
                r0, c0 = top // (BLOCK * fv), left // (BLOCK * fh)
                part = blocks[:, r0 : r0 + rows * bh, c0 : c0 + cols * bw].to(torch.int32)
                part = part.reshape(1, rows, bh, cols, bw, BLOCK, BLOCK).permute(0, 1, 3, 2, 4, 5, 6)
                part = part.expand(n, -1, -1, -1, -1, -1, -1).reshape(-1, bh, bw, BLOCK, BLOCK)
                coefficients.append(part)
                tile_tables.append(tables[:, c, None, None].expand(part.shape[0], -1, -1, -1, -1))
            region = (top, th, rows, left, tw, cols)
            groups.append((region, tiles, Intervals(coefficients, tile_tables, mode, (th, tw))))
    return groups


def _untile(out: torch.Tensor, region: tuple, tiles: torch.Tensor) -> None:
    top, th, rows, left, tw, cols = region
    n, channels = out.shape[:2]
    crop = tiles.reshape(n, rows, cols, channels, th, tw).permute(0, 3, 1, 4, 2, 5)
    crop = crop.reshape(n, channels, rows * th, cols * tw)
    out[:, :, top : top + rows * th, left : left + cols * tw] = crop


def _bayer(size: int) -> torch.Tensor:
    """Ordered-dither thresholds in [0, 1): the Bayer matrix of a power-of-two size."""
    matrix = torch.zeros(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([4 * matrix, 4 * matrix + 2], 1), torch.cat([4 * matrix + 3, 4 * matrix + 1], 1)])
    return (matrix + 0.5) / matrix.numel()


def dithered_round(images: torch.Tensor) -> torch.Tensor:
    """Round [K, C, h, w] to integers with an 8x8 ordered dither, so that block means survive.

    Plain rounding of a nearly flat area moves every pixel the same way, shifting a block's DC (and
    chroma DC most) by up to half a level, which a float correction smaller than that cannot undo."""
    h, w = images.shape[-2:]
    threshold = _bayer(BLOCK).to(images).repeat(math.ceil(h / BLOCK), math.ceil(w / BLOCK))[:h, :w]
    return torch.floor(images + 1.0 - threshold).clamp(0.0, 255.0)


_STALL_WINDOW = 25  # passes between checks that a tile is still converging


def _failures(images_8bit: torch.Tensor, intervals: Intervals) -> torch.Tensor:
    """Per image, how many coefficients of its libjpeg re-encode differ from the stored ones."""
    return sum(f.flatten(1).sum(1) for f in inconsistent_coefficients(images_8bit, intervals))


def _solve(tiles: torch.Tensor, intervals: Intervals, settings: dict) -> torch.Tensor:
    """Rounds of float projection, 8-bit rounding and exact checking on [K, C, h, w] tiles (0..255).

    Tiles that are consistent once rounded are left as they are; for the others the best 8-bit
    state seen (fewest differing coefficients) is returned, so no tile ends worse than it began."""
    state = tiles.clamp(0.0, 255.0).round()
    best = state.clone()
    best_failures = _failures(best, intervals)
    margins = [torch.full(c.shape, settings["margin"], device=tiles.device) for c in intervals.coefficients]
    active = (best_failures > 0).nonzero().flatten()
    for round_index in range(settings["max_rounds"]):
        if active.numel() == 0:
            break
        target = intervals.subset(active)
        ycc = _to_working(state[active])
        # alternate the projections; a tile leaves the working set once its intervals hold, or once
        # it stops getting closer (margins can leave no room inside the RGB cube)
        moving = torch.arange(active.numel(), device=tiles.device)
        work, bounds = ycc, target.bounds([m[active] for m in margins])
        earlier = None
        for index in range(settings["float_passes"]):
            projected, outside = interval_projection(work, target.mode, bounds)
            work = work + settings["relaxation"] * (gamut_projection(projected) - work)
            keep = outside >= 1e-3
            if index % _STALL_WINDOW == 0:
                if earlier is not None:
                    keep &= outside < 0.8 * earlier
                earlier = outside
            if not keep.all():
                ycc[moving[~keep]] = work[~keep]
                moving, work, earlier = moving[keep], work[keep], earlier[keep]
                bounds = [(lo[keep], hi[keep]) for lo, hi in bounds]
            if moving.numel() == 0:
                break
        ycc[moving] = work
        rounded = _from_working(ycc).clamp(0.0, 255.0)
        rounded = dithered_round(rounded) if round_index else rounded.round()
        state[active] = rounded
        failing = inconsistent_coefficients(rounded, target)
        for m, f in zip(margins, failing):
            m[active] += settings["margin_step"] * f
        failures = sum(f.flatten(1).sum(1) for f in failing)
        better = failures < best_failures[active]
        best[active[better]] = rounded[better]
        best_failures[active[better]] = failures[better]
        active = active[failures > 0]
    return best


def project(
    images: torch.Tensor,
    jpeg,
    margin: float = 0.5,
    margin_step: float = 0.5,
    max_rounds: int = 12,
    float_passes: int = 300,
    relaxation: float = 1.5,
) -> torch.Tensor:
    """Make candidates [N, 3, H, W] (or [3, H, W]) in [0, 1] consistent with `jpeg` (a JpegFile).
    A grayscale file's candidates may have one channel; either way they are projected as one
    channel (libjpeg's luma of RGB ones) and come back with the channels they had, gray.

    Returns images on the 8-bit grid (k / 255), so saving them as 8-bit files loses nothing: their
    libjpeg re-encode with the file's tables and sampling reproduces the file's coefficients. Each
    round alternates the interval and RGB-cube projections in float (up to `float_passes` times,
    over-relaxed by `relaxation` to speed up convergence, until the intervals hold), rounds to 8
    bits and checks every coefficient with libjpeg's exact arithmetic; coefficients that still
    differ get `margin_step` more margin (DCT units) against rounding. What still differs after
    `max_rounds` (mostly with quantization steps of 1-2, quality ~95) stays as close as reached.
    """
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    gray = jpeg.sampling == sampling.GRAY
    channels = (1, 3) if gray else (3,)
    if batch.dim() != 4 or batch.shape[1] not in channels or tuple(batch.shape[-2:]) != tuple(jpeg.size):
        raise ValueError(
            f"candidates must be [N, {' or '.join(map(str, channels))}, {jpeg.height}, {jpeg.width}] to match "
            f"{jpeg.source}, got {tuple(images.shape)}"
        )
    settings = dict(
        margin=margin, margin_step=margin_step, max_rounds=max_rounds, float_passes=float_passes, relaxation=relaxation
    )
    with torch.no_grad():
        source = batch.float() * 255.0
        if gray and source.shape[1] == 3:  # a grayscale file's outputs are gray
            source = rgb_to_gray(source)
        out = torch.empty_like(source)
        for region, tiles, intervals in _tiles(source, jpeg):
            _untile(out, region, _solve(tiles, intervals, settings))
    result = (out / 255.0).to(images.dtype).expand(-1, batch.shape[1], -1, -1).contiguous()
    return result[0] if single else result
