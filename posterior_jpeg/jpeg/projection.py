"""Projection onto a file: make candidates consistent with its coefficients, in float and in 8 bits.

Two levels of consistency (see `Projection`):
- float: the exact DCT of the float result lies inside every quantization interval of the file.
  We alternate, in YCbCr, orthogonal projections onto the intervals (shrunk by a margin) and onto
  the RGB cube, over-relaxed, and always end on the interval projection, so the float result meets
  every interval by construction. Where the file's own colours lie outside the RGB cube (cameras
  encode YCbCr from the sensor, not from RGB) the two sets do not meet; such tiles stop when the
  alternation stalls, and their float result leaves [0, 255] there. In blocks that libjpeg pads the
  interval step is a least-squares one; tiles that stall there go to an L-BFGS descent on their
  distance to the intervals, which reaches them unless the padding puts them out of every image's
  reach (seen at steps of 1-3, by under a DCT unit).
- 8-bit: the rounded image, re-encoded by libjpeg with the file's tables and sampling, gives back
  every stored coefficient. Rounding the float result moves each coefficient by about 0.35 DCT units
  (more than a step of 1-2 allows), so the blocks that still fail are repaired by a search on the
  8-bit lattice, described below.

The lattice search works on libjpeg's integer samples (Y per pixel, Cb and Cr after libjpeg's
integer downsampling), where the constraints of different blocks do not interact:
1. Every YCbCr integer triple whose float RGB lies in the cube is libjpeg's conversion of some
   8-bit RGB pixel (checked over all 2^24 colours), and RGB + (d, d, d) changes libjpeg's Y by
   exactly d and its Cb, Cr not at all. So a luma sample can move by d wherever the pixel's RGB
   leaves room, and a chroma sample by changing the chroma of the pixels it averages (keeping their
   Y and the other chroma exact), as far as the cube allows: each sample gets integer bounds. Where
   a pixel's colour leaves its luma no room (on a face of the cube) the luma still moves, anywhere
   in 0..255, and the colour gives way (`_with_luma`): a white block needs every pixel white, and a
   slightly coloured pixel beside white ones is no answer. That chroma change is the one way a
   component's move touches another; the next round's exact check sees it.
2. Per failing block, coordinate descent on its samples: the state is libjpeg's exact integer DCT,
   the objective the squared distance of each coefficient outside its interval; each step tries the
   `candidates` single-sample moves (+-1) that the gradient ranks first, predicts their effect with
   the float DCT, applies the best one if it lowers the objective, and stops when libjpeg's exact
   quantization gives back every stored coefficient, when no move helps, or after `search_steps`.
3. The changed samples are written back into RGB (Cb blocks, Cr blocks, then luma, each from the
   pixels as the previous step left them), and the exact check runs again, for `search_rounds`.
Edge blocks (the file's padding) are handled exactly: a sample's replicas move with it, and pixels
that libjpeg replicates into the padding are never changed by this search. More steps serve what
it alone cannot reach:
- blocks it leaves failing go to a greedy search on single pixels scored exactly by libjpeg's
  downsampling and integer DCT (`_pixel_search`): it moves the replicated edge pixels, and in edge
  tiles, where no move of one pixel helps, it tries sums of two and three, which is what blocks
  padded from one or two real columns or rows need (there many coefficients are multiples of one
  sum of samples, and the range they leave it can be narrower than any move of one sample);
- tiles whose float solution stalls outside the cube are solved again on the whole intervals
  (`_unshrunk`): the margin alone can keep the intervals from meeting the cube;
- colours outside the cube (`_widen`): the tile gives up, greedily, the coefficients that fight the
  cube most, one at a time, widening their target range until a float solution inside the cube
  exists; the search then aims at the widened ranges (`Projection.given_up_coefficients`);
- tiles that still fail start again from the middle half of every interval (their candidate's
  detail gives way to exactness there), keeping whichever result differs less.
What cannot be met (a box with no lattice point at steps of 1) stays as close as the search reached.

The constraints of different MCUs (the 8x8 / 16x16 pixel units that libjpeg codes together) do not
interact, so all of the work runs on a batch of MCU tiles; a tile leaves the batch once it is done
(checked every few passes, not every pass: no host synchronisation per pass), so the cost follows
the hard parts of the image, not its size.
"""

import functools
import itertools
from dataclasses import dataclass

import torch

from . import subsampling
from .codec import component_tables, plane_blocks
from .color import rgb_to_gray, rgb_to_ycbcr, round_ycbcr_like_libjpeg, ycbcr_to_rgb, ycc_offset, ycc_to_rgb_matrix
from .dct import BLOCK, block_dct_matrix, blockify, dct_matrix, islow_fdct, unblockify


@dataclass
class Projection:
    """The result of `projection` for N candidates.

    images: [N, 3, H, W] on the 8-bit grid (k / 255): what a PNG holds.
    floats: [N, 3, H, W] the float result before rounding; its exact DCT lies inside every interval
      (float consistency). It leaves [0, 1] only where the file's colours leave the RGB cube.
    failing_blocks, differing_coefficients: [N] int, how many 8x8 blocks and coefficients of each
      8-bit image's re-encode differ from the file (bit-exact model of libjpeg; 0 = 8-bit exact).
    given_up_coefficients: [N] int, coefficients whose target range the 8-bit search widened where
      the file's own colours leave the RGB cube (see `_widen`): the part of the difference that the
      file itself imposes."""

    images: torch.Tensor
    floats: torch.Tensor
    failing_blocks: torch.Tensor
    differing_coefficients: torch.Tensor
    given_up_coefficients: torch.Tensor


class Intervals:
    """Quantization intervals for a batch of same-sized images (or tiles): per component, the
    stored coefficients [K, hb, wb, 8, 8] and tables [K, 1, 1, 8, 8], and the quantized values the
    projection aims at, low..high (the stored ones, unless widened where the cube leaves no room)."""

    def __init__(self, coefficients, tables, mode: str, size, low=None, high=None):
        self.coefficients = coefficients
        self.tables = tables
        self.mode = mode
        self.size = tuple(size)
        self.low = coefficients if low is None else low
        self.high = coefficients if high is None else high

    def subset(self, index: torch.Tensor) -> "Intervals":
        pick = lambda tensors: [t[index] for t in tensors]  # noqa: E731
        return Intervals(pick(self.coefficients), pick(self.tables), self.mode, self.size, pick(self.low), pick(self.high))

    def bounds(self, margin: float, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per component, (low, high) of the un-shifted DCT in plane layout [K, 8 hb, 8 wb]: each
        interval shrunk at both ends by `margin` (DCT units), or by a quarter step where the step is
        below four margins (so that every interval keeps room: a point target may be out of reach
        for blocks that libjpeg pads), DC moved by the level shift (a block's DC of samples s is the
        DC of s - 128 plus 1024), so that a pass needs neither the shift nor a reshuffle into blocks."""
        result = []
        for low, high, table in zip(self.low, self.high, self.tables):
            table = table.to(dtype)
            reach = 0.5 * table - torch.clamp(0.25 * table, max=margin)
            shift = torch.zeros_like(table)
            shift[..., 0, 0] = 128.0 * BLOCK
            result.append((unblockify(low.to(dtype) * table + shift - reach), unblockify(high.to(dtype) * table + shift + reach)))
        return result

    def with_targets(self, index: torch.Tensor, other: "Intervals") -> "Intervals":
        """These intervals, with the target ranges of tiles `index` taken from `other`."""
        low, high = [t.clone() for t in self.low], [t.clone() for t in self.high]
        for c in range(len(low)):
            low[c][index], high[c][index] = other.low[c], other.high[c]
        return Intervals(self.coefficients, self.tables, self.mode, self.size, low, high)

    def table_planes(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Per component, each coefficient's step in plane layout [K, 8 hb, 8 wb]."""
        return [unblockify(t.to(dtype).expand_as(c)) for t, c in zip(self.tables, self.coefficients)]


@functools.lru_cache(maxsize=None)
def _block_diagonal_dct(blocks: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The DCT of `blocks` consecutive 8-sample runs as one matrix: tile-sized planes transform with
    two small matmuls, no reshuffling into blocks."""
    return torch.block_diag(*[dct_matrix(dtype, device)] * blocks)


@functools.lru_cache(maxsize=None)
def _gamut_steps(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of YCbCr -> RGB [3, 3] and the same rows over their squared norms, as [3, 3, 1, 1]
    (the step of an orthogonal projection onto one RGB slab, in the YCbCr metric)."""
    rows = ycc_to_rgb_matrix(torch.float64)
    steps = rows / rows.pow(2).sum(1, keepdim=True)
    return rows.to(dtype=dtype, device=device), steps[..., None, None].to(dtype=dtype, device=device)


def _plane_dcts(ycc: torch.Tensor, mode: str, shapes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per component of [K, 3, H, W] YCbCr tiles: the float samples (chroma averaged, not rounded)
    and their DCT in plane layout (blocks of `shapes` size, padding replicated as libjpeg pads)."""
    result = []
    for c, shape in enumerate(shapes):
        plane = subsampling.downsample(ycc[:, c], subsampling.component_factors(mode, c), libjpeg_rounding=False)
        rows = _block_diagonal_dct(shape[0] // BLOCK, ycc.dtype, ycc.device)
        cols = _block_diagonal_dct(shape[1] // BLOCK, ycc.dtype, ycc.device)
        result.append((plane, rows @ subsampling.pad_replicate(plane, *shape) @ cols.T))
    return result


def interval_projection(ycc: torch.Tensor, mode: str, bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Orthogonal projection of [K, 3, H, W] YCbCr tiles onto the intervals (`Intervals.bounds`).

    Chroma is changed by spreading its block-domain change over the pixels it averages (the
    least-squares inverse of the averaging)."""
    height, width = ycc.shape[-2:]
    planes = list(ycc.unbind(1))
    for c, (plane, dct) in enumerate(_plane_dcts(ycc, mode, [low.shape[1:] for low, _ in bounds])):
        low, high = bounds[c]
        rows = _block_diagonal_dct(low.shape[1] // BLOCK, ycc.dtype, ycc.device)
        cols = _block_diagonal_dct(low.shape[2] // BLOCK, ycc.dtype, ycc.device)
        delta = subsampling.fold_padding(rows.T @ (dct.clamp(low, high) - dct) @ cols, *plane.shape[1:])
        planes[c] = planes[c] + subsampling.fold_padding(subsampling.spread(delta, subsampling.component_factors(mode, c)), height, width)
    if mode == subsampling.GRAY:
        planes[1:] = [torch.full_like(planes[0], 128.0)] * 2
    return torch.stack(planes, dim=1)


def gamut_projection(ycc: torch.Tensor, inset: float = 0.0) -> torch.Tensor:
    """Move [K, 3, H, W] YCbCr towards the colours whose R, G and B lie in inset..255 - inset: one orthogonal
    projection onto each channel's slab in turn (exact projections in the metric of
    `interval_projection`, so alternating them converges). Dense, no indexing: cheap every pass."""
    rows, steps = _gamut_steps(ycc.dtype, ycc.device)
    offset = ycc_offset(ycc)
    centred = ycc - offset
    for row, step in zip(rows, steps):
        value = torch.einsum("c,nchw->nhw", row, centred)
        excess = value - value.clamp(inset, 255.0 - inset)
        centred = centred - excess.unsqueeze(1) * step
    return centred + offset


def _cube_excess(ycc: torch.Tensor, inset: float = 0.0) -> torch.Tensor:
    """Per tile, how far (gray levels) its RGB leaves inset..255 - inset."""
    low, high = torch.aminmax(ycbcr_to_rgb(ycc).flatten(1), dim=1)
    return torch.maximum(inset - low, high - (255.0 - inset)).clamp(min=0.0)


_CHECK_EVERY = 4  # passes between convergence checks (each check is one host synchronisation)
_STALL = 0.97  # a tile whose distance to the sets fell by less than this factor since the last check stalls
_CUBE_TOLERANCE = 1e-3  # gray levels outside the cube that count as inside
_INTERVAL_SLACK = 0.1  # DCT units beyond the shrunk intervals that count as inside (less than any shrink)
_WIDEN_ABOVE = 0.5  # gray levels outside the cube from which a stalled tile gives up coefficients
_DESCENT_MARGIN = 0.05  # DCT units kept inside the intervals by `_interval_descent` (16-bit rounding: 0.016)
_WIDEN_INSET = 0.5  # gray levels a tile that gives up coefficients keeps from the cube's faces: its
#                     colours are saturated, and rounding must not clip nor 8-bit moves lack room


def _has_padding(mode: str, size: tuple[int, int], shapes: list[tuple[int, int]]) -> bool:
    """Whether some component of tiles of `size` pixels is padded (edge tiles): there the interval
    projection is a least-squares step, not exact, and needs checking."""
    for c, shape in enumerate(shapes):
        factors = subsampling.component_factors(mode, c)
        if factors == (1, 1):
            cells = size
        else:  # subsampling.downsample extends rows to whole cells, columns to whole blocks of samples
            out_h, out_w = subsampling.component_size(*size, factors)
            cells = (out_h * factors[0], BLOCK * -(-out_w // BLOCK) * factors[1])
            if (out_h, cells[1] // factors[1]) != tuple(shape):
                return True
        if tuple(cells) != tuple(size) or (factors == (1, 1) and tuple(size) != tuple(shape)):
            return True
    return False


def _interval_violation(ycc: torch.Tensor, mode: str, bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per tile, how far (DCT units) its coefficients lie outside `bounds`."""
    dcts = _plane_dcts(ycc, mode, [low.shape[1:] for low, _ in bounds])
    return torch.stack([(dct - dct.clamp(low, high)).abs().flatten(1).amax(1) for (_, dct), (low, high) in zip(dcts, bounds)]).amax(0)


def _interval_descent(ycc: torch.Tensor, intervals: Intervals, settings: dict) -> torch.Tensor:
    """Padded tiles whose alternation stalled outside their intervals: minimise the squared distance
    of their coefficients to the intervals over the pixels, by L-BFGS with the exact gradient of the
    padding and averaging (a convex problem: it reaches the intervals wherever the padding lets them
    be met). The intervals keep only a thin margin: with few real samples in a padded block, the
    middles that `margin` asks for may be out of reach where the intervals are not. Ignores the cube."""
    bounds = intervals.bounds(_DESCENT_MARGIN, ycc.dtype)
    shapes = [low.shape[1:] for low, _ in bounds]
    work = ycc.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([work], max_iter=settings["float_passes"], tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def distance() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum((dct - dct.clamp(low, high)).pow(2).sum()
                   for (_, dct), (low, high) in zip(_plane_dcts(work, intervals.mode, shapes), bounds))
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(distance)
    # the descent stops on the sum over all tiles; one interval step puts every block that is not
    # padded (its projection is exact) inside, whatever the padded ones left over
    return interval_projection(work.detach(), intervals.mode, bounds)


def _float_solve(ycc: torch.Tensor, intervals: Intervals, settings: dict, inset: float = 0.0,
                 descent: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternate the projections on [K, 3, h, w] YCbCr tiles; each tile leaves once the interval
    projection lands inside the cube (and, where padding makes that projection inexact, inside the
    intervals), or once it stalls. With `descent`, tiles that stall outside the intervals are then
    brought inside by `_interval_descent`. Returns the tiles (written over `ycc`, to spare memory)
    and how far (gray levels) each leaves the cube (with `inset`, its inner cube)."""
    bounds = intervals.bounds(settings["margin"], ycc.dtype)
    padded = _has_padding(intervals.mode, intervals.size, [low.shape[1:] for low, _ in bounds])
    out = ycc
    excess_out, violation_out = ycc.new_zeros(ycc.shape[0]), ycc.new_zeros(ycc.shape[0])
    index = torch.arange(ycc.shape[0], device=ycc.device)
    work, earlier = ycc, None
    for step in range(settings["float_passes"]):
        projected = interval_projection(work, intervals.mode, bounds)
        if step % _CHECK_EVERY == 0 or step == settings["float_passes"] - 1:
            excess = _cube_excess(projected, inset)
            violation = _interval_violation(projected, intervals.mode, bounds) if padded else torch.zeros_like(excess)
            leave = (excess <= _CUBE_TOLERANCE) & (violation <= _INTERVAL_SLACK)
            distance = excess + violation
            if earlier is not None:
                leave |= distance > _STALL * earlier
            if step == settings["float_passes"] - 1:
                leave[:] = True
            keep, done = (~leave).nonzero().flatten(), leave.nonzero().flatten()
            out[index[done]], excess_out[index[done]], violation_out[index[done]] = projected[done], excess[done], violation[done]
            if keep.numel() == 0:
                break
            index, projected, earlier = index[keep], projected[keep], distance[keep]
            bounds = [(low[keep], high[keep]) for low, high in bounds]
        work = projected + settings["relaxation"] * (gamut_projection(projected, inset) - projected)
    outside = (violation_out > _INTERVAL_SLACK).nonzero().flatten()
    if descent and outside.numel():
        out[outside] = _interval_descent(out[outside], intervals.subset(outside), settings)
        excess_out[outside] = _cube_excess(out[outside], inset)
    return out, excess_out


def _unshrunk(ycc: torch.Tensor, intervals: Intervals, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve tiles that stalled outside the cube again, on the whole intervals (no margin).

    A saved RGB image may sit on a face of the cube exactly where a coefficient sits on the edge of
    its interval: a white block at a DC step of 16 (quality 50) has DC 8 x 127 = 63.5 steps, the
    lowest value that rounds to the stored 64, and every lower pixel rounds it to 63. Shrunk by the
    margin, that interval and the cube do not meet, though the image itself is an exact answer; the
    widening would give up its coefficient. Returns the tiles and their cube excess (`_float_solve`):
    those it brings inside the cube are taken; those it brings within `_WIDEN_ABOVE` of it are searched
    both ways (it and the widening), keeping whichever differs less: such a white block converges
    slowly (one point of the cube meets its intervals), while where the file's colours leave the
    cube a solution without margin only leaves more coefficients on the edges of their intervals."""
    return _float_solve(ycc, intervals, dict(settings, margin=0.0))


def _widen(ycc: torch.Tensor, intervals: Intervals, settings: dict) -> tuple[torch.Tensor, Intervals]:
    """Tiles whose intervals and the RGB cube do not meet: give up as few coefficients as we can.

    Greedy: clamp the tile into the cube, take the coefficient that then lies furthest outside its
    target range (DCT units; one already given up first, since growing it costs nothing), widen the
    range by the steps that reach that value, and solve again; up to `widenings` times. Returns the
    tiles (in the cube where it worked) and the widened intervals."""
    stored = [unblockify(c.to(ycc.dtype)) for c in intervals.coefficients]  # plane layout
    low, high = [c.clone() for c in stored], [c.clone() for c in stored]
    steps = intervals.table_planes(ycc.dtype)
    out, index = ycc.clone(), torch.arange(ycc.shape[0], device=ycc.device)

    def widened(tiles: torch.Tensor) -> Intervals:
        blocks = lambda planes: [blockify(p[tiles]).to(torch.int32) for p in planes]  # noqa: E731
        return Intervals(*(p for p in (intervals.subset(tiles).coefficients, intervals.subset(tiles).tables)),
                         intervals.mode, intervals.size, blocks(low), blocks(high))

    for _ in range(settings["widenings"]):
        current = widened(index)
        bounds = current.bounds(0.0, ycc.dtype)
        clamped = rgb_to_ycbcr(ycbcr_to_rgb(out[index]).clamp(_WIDEN_INSET, 255.0 - _WIDEN_INSET))
        dcts = _plane_dcts(clamped, current.mode, [lo.shape[1:] for lo, _ in bounds])
        outside = torch.cat([((dct - hi).clamp(min=0.0) - (lo - dct).clamp(min=0.0)).flatten(1)
                             for (_, dct), (lo, hi) in zip(dcts, bounds)], 1)
        given_up = torch.cat([((lo[index] != c[index]) | (hi[index] != c[index])).flatten(1)
                              for lo, hi, c in zip(low, high, stored)], 1)
        worst = (outside.abs() * (1.0 + given_up)).argmax(1, keepdim=True)
        excess = outside.gather(1, worst)[:, 0]
        step = torch.cat([t[index].flatten(1) for t in steps], 1).gather(1, worst)[:, 0]
        amount = torch.ceil(excess.abs() / step) * excess.sign()
        start = 0
        for c, plane in enumerate(stored):
            size = plane[0].numel()
            mine = ((worst[:, 0] >= start) & (worst[:, 0] < start + size)).nonzero().flatten()
            where = (index[mine], (worst[mine, 0] - start) // plane.shape[2], (worst[mine, 0] - start) % plane.shape[2])
            low[c][where] += amount[mine].clamp(max=0.0)
            high[c][where] += amount[mine].clamp(min=0.0)
            start += size
        solved, excess = _float_solve(out[index], widened(index), settings, _WIDEN_INSET, descent=False)
        out[index] = solved
        index = index[excess > _WIDEN_ABOVE]
        if index.numel() == 0:
            break
    return out, widened(torch.arange(ycc.shape[0], device=ycc.device))


def _spans(length: int, unit: int) -> list[tuple[int, int, int]]:
    """Split 0..length into runs of whole `unit`s and a remainder: (start, tile length, count)."""
    whole, rest = divmod(length, unit)
    spans = [(0, unit, whole)] if whole else []
    return spans + ([(whole * unit, rest, 1)] if rest else [])


def _tiles(images: torch.Tensor, jpeg, stored: list[torch.Tensor], tables: torch.Tensor) -> list[tuple[tuple, torch.Tensor, Intervals]]:
    """Cut [N, 3, H, W] into MCU tiles, grouped by tile size (interior, right and bottom edges);
    `stored` and `tables`: the file's coefficients [1, hb, wb, 8, 8] and tables [1, C, 8, 8].

    Returns (region, tiles [K, 3, th, tw], their intervals) per group; region locates the group.
    Tiles are image-major: tile k belongs to image k // (K / N)."""
    n = images.shape[0]
    mode = jpeg.sampling
    mcu = [BLOCK * max(subsampling.component_factors(mode, c)[i] for c in range(len(jpeg.coefficients))) for i in (0, 1)]
    groups = []
    for top, th, rows in _spans(jpeg.height, mcu[0]):
        for left, tw, cols in _spans(jpeg.width, mcu[1]):
            crop = images[:, :, top : top + rows * th, left : left + cols * tw]
            tiles = crop.reshape(n, 3, rows, th, cols, tw).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, th, tw)
            coefficients, tile_tables = [], []
            for c, blocks in enumerate(stored):
                fv, fh = subsampling.component_factors(mode, c)
                bh, bw = subsampling.block_grid(subsampling.component_size(th, tw, (fv, fh)))
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
    n = out.shape[0]
    crop = tiles.reshape(n, rows, cols, 3, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, rows * th, cols * tw)
    out[:, :, top : top + rows * th, left : left + cols * tw] = crop


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _libjpeg_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """libjpeg's integer YCbCr of [K, 3, h, w] 8-bit RGB (0..255)."""
    return round_ycbcr_like_libjpeg(rgb_to_ycbcr(rgb))


def _quantized(ycc: torch.Tensor, mode: str, c: int, table: torch.Tensor) -> torch.Tensor:
    """libjpeg's quantized coefficients [K, hb, wb, 8, 8] of component c, from its integer YCbCr."""
    samples = plane_blocks(subsampling.downsample(ycc[:, c], subsampling.component_factors(mode, c), libjpeg_rounding=True))
    return _round_half_away(islow_fdct(samples.to(torch.int32) - 128).to(table.dtype) / (8 * table))


class _Component:
    """libjpeg's integer samples of one component of [K, 3, h, w] tiles (from their integer YCbCr),
    and how each sample can move: its cell sums S over the (padded) pixels it averages, libjpeg's
    rounding bias, and per pixel whether it is free (counted once, not replicated into the padding)."""

    def __init__(self, ycc: torch.Tensor, mode: str, c: int):
        self.c = c
        self.factors = subsampling.component_factors(mode, c)
        self.ycc = ycc
        fv, fh = self.factors
        height, width = ycc.shape[-2:]
        if self.factors == (1, 1):
            self.out = (height, width)
        else:  # libjpeg extends columns to whole output blocks, rows to whole cells (subsampling.downsample)
            out_h, cw = subsampling.component_size(height, width, self.factors)
            self.out = (out_h, BLOCK * -(-cw // BLOCK))
        cell_h, cell_w = self.out[0] * fv, self.out[1] * fh
        pixels = subsampling.pad_replicate(self.ycc[:, c], cell_h, cell_w)
        self.count = fv * fh
        self.sums = self._cells(pixels).sum(-1)
        if self.factors == (1, 1):
            self.bias = torch.zeros(self.out, dtype=ycc.dtype, device=ycc.device)
        else:
            self.bias = subsampling._round_bias(*self.out, self.factors, ycc)[0]
        self.samples = torch.floor((self.sums + self.bias) / self.count)
        free = torch.zeros(cell_h, cell_w, dtype=torch.bool, device=ycc.device)
        free[: height - (cell_h > height), : width - (cell_w > width)] = True
        self.free = self._cells(free[None])[0]

    def _cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """[K, out_h * fv, out_w * fh] -> [K, out_h, out_w, fv * fh]: the pixels each sample averages."""
        fv, fh = self.factors
        k, out_h, out_w = pixels.shape[0], *self.out
        return pixels.reshape(k, out_h, fv, out_w, fh).permute(0, 1, 3, 2, 4).reshape(k, out_h, out_w, fv * fh)

    def _uncells(self, cells: torch.Tensor, height: int, width: int) -> torch.Tensor:
        fv, fh = self.factors
        k, out_h, out_w = cells.shape[:3]
        plane = cells.reshape(k, out_h, out_w, fv, fh).permute(0, 1, 3, 2, 4).reshape(k, out_h * fv, out_w * fh)
        return plane[:, :height, :width]

    def pixel_room(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How far (up, down) each pixel's integer value of this component can move: chroma with
        the other two components kept and its RGB staying in the cube (so that some 8-bit RGB pixel
        has it; a margin of 1e-3 keeps float error on the safe side); luma anywhere in 0..255."""
        if self.c == 0:  # any luma has an 8-bit pixel (gray at least): see `_with_luma`
            luma = self.ycc[:, 0]
            return 255.0 - luma, luma
        own = self.ycc[:, self.c]
        up, down = 255.0 - own, own.clone()
        colour = ycbcr_to_rgb(self.ycc)
        for weight, channel in zip(ycc_to_rgb_matrix(torch.float64)[:, self.c].tolist(), colour.unbind(1)):
            if abs(weight) < 1e-3:  # R does not depend on Cb: it must already lie in the cube
                inside = ((channel >= 0.0) & (channel <= 255.0)).to(own.dtype)
                up, down = up * inside, down * inside
                continue
            rise, fall = (255.0 - channel, channel) if weight > 0 else (channel, 255.0 - channel)
            up = torch.minimum(up, rise / abs(weight) - 1e-3)
            down = torch.minimum(down, fall / abs(weight) - 1e-3)
        return up.floor().clamp(min=0.0), down.floor().clamp(min=0.0)

    def sample_bounds(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample, the lowest and highest change (integers, [K, out_h, out_w]) its free pixels allow."""
        up, down = self._pixel_capacity(rgb)
        high = torch.floor((self.sums + up.sum(-1) + self.bias) / self.count) - self.samples
        low = torch.floor((self.sums - down.sum(-1) + self.bias) / self.count) - self.samples
        return low, high

    def _pixel_capacity(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cell_h, cell_w = self.out[0] * self.factors[0], self.out[1] * self.factors[1]
        up, down = (self._cells(subsampling.pad_replicate(r, cell_h, cell_w)) * self.free for r in self.pixel_room(rgb))
        return up, down

    def pixel_change(self, rgb: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """The change of this component per pixel [K, h, w] that moves the samples by `change`
        (within `sample_bounds`): each cell sum moves to the nearest value libjpeg rounds to the new
        sample, spread over the cell's free pixels in order, each within its room."""
        target = self.samples + change
        low = target * self.count - self.bias
        need = torch.minimum(torch.maximum(self.sums, low), low + self.count - 1) - self.sums
        up, down = self._pixel_capacity(rgb)
        moves = []
        for capacity, amount in ((up, need.clamp(min=0.0)), (down, (-need).clamp(min=0.0))):
            before = capacity.cumsum(-1) - capacity
            moves.append((amount.unsqueeze(-1) - before).clamp(min=0.0).minimum(capacity))
        return self._uncells(moves[0] - moves[1], *rgb.shape[-2:])


@functools.lru_cache(maxsize=None)
def _rgb_offsets(device: torch.device) -> torch.Tensor:
    """The 125 RGB steps of -2..2 per channel [125, 3] (float64), once per device."""
    return torch.tensor(list(itertools.product(range(-2, 3), repeat=3)), dtype=torch.float64, device=device)


def _rgb_for(ycc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit RGB pixels [P, 3] whose libjpeg YCbCr is exactly `ycc` [P, 3] (integers): searched among
    the 125 neighbours of the float inverse. Returns (rgb, found)."""
    base = ycbcr_to_rgb(ycc.T[None, :, :, None].double())[0, :, :, 0].T.round()
    candidates = (base[:, None] + _rgb_offsets(ycc.device)).clamp(0.0, 255.0)  # [P, 125, 3]
    converted = round_ycbcr_like_libjpeg(rgb_to_ycbcr(candidates.permute(2, 0, 1)[None]))[0].permute(1, 2, 0)
    match = (converted == ycc[:, None].double()).all(-1)
    choice = match.float().argmax(1)
    return candidates[torch.arange(len(ycc), device=ycc.device), choice].to(ycc.dtype), match.any(1)


def _in_cube(ycc: torch.Tensor) -> torch.Tensor:
    """Float RGB of [K, 3, ...] YCbCr with the luma clamped to 0..255 and the chroma scaled towards
    gray until R, G and B lie in 0..255."""
    luma = ycc[:, :1].clamp(0.0, 255.0)
    chroma = ycbcr_to_rgb(ycc) - ycc[:, :1]  # the chroma's part of R, G, B (Y's column is all ones)
    room = torch.where(chroma > 0, 255.0 - luma, luma)
    scale = (room / chroma.abs().clamp(min=1e-9)).amin(1, keepdim=True).clamp(max=1.0)
    return luma + scale * chroma


def _with_luma(rgb: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """[K, 3, h, w] 8-bit RGB with libjpeg's luma moved to `luma` [K, h, w] (integers). RGB + (d, d, d)
    moves libjpeg's Y by exactly d and keeps its chroma; where that leaves the cube (a pixel on one of
    its faces: its colour leaves its luma no room), the colour gives way instead: the pixel nearest
    to its colour scaled towards gray around the new luma, among the 125 neighbours of that
    colour that have the luma exactly, else gray (luma, luma, luma), which always has it."""
    shifted = rgb + (luma - _libjpeg_ycc(rgb)[:, 0]).unsqueeze(1)
    inside = ((shifted >= 0.0) & (shifted <= 255.0)).all(1)
    if inside.all():
        return shifted
    where = (~inside).nonzero(as_tuple=True)
    ycc = rgb_to_ycbcr(rgb).permute(0, 2, 3, 1)[where]  # [P, 3]
    ycc[:, 0] = luma[where]
    target = _in_cube(ycc.T[None, :, :, None])[0, :, :, 0].T  # [P, 3] float RGB
    candidates = (target.round()[:, None] + _rgb_offsets(rgb.device).to(rgb.dtype)).clamp(0.0, 255.0)  # [P, 125, 3]
    converted = _libjpeg_ycc(candidates.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    distance = (candidates - target[:, None]).pow(2).sum(-1)
    distance = torch.where(converted[..., 0] == ycc[:, None, 0], distance, float("inf"))
    best, choice = distance.min(1)
    found = candidates[torch.arange(len(ycc), device=rgb.device), choice]
    gray = ycc[:, :1].expand(-1, 3)
    out = shifted.permute(0, 2, 3, 1).clone()
    out[where] = torch.where(torch.isfinite(best)[:, None], found, gray)
    return out.permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _block_replicas(out: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a plane of `out` samples padded to whole blocks: per block [nb, 64], the in-block index
    each padded position copies (itself for real samples), and whether the position is real. Built
    on the host (a lookup per block) once per (size, device): tiles come in a few sizes only."""
    height, width = out
    index = torch.arange(height * width, dtype=torch.float64).view(1, height, width)
    blocks = plane_blocks(index)[0].flatten(0, 1).flatten(1).long()  # [nb, 64] plane index per position
    hb, wb = subsampling.block_grid(out)
    rows = torch.arange(hb * BLOCK).view(hb, 1, BLOCK, 1).expand(hb, wb, BLOCK, BLOCK)
    cols = torch.arange(wb * BLOCK).view(1, wb, 1, BLOCK).expand(hb, wb, BLOCK, BLOCK)
    own = (rows * width + cols).flatten(0, 1).flatten(1)
    real = (rows < height).flatten(0, 1).flatten(1) & (cols < width).flatten(0, 1).flatten(1)
    local = torch.zeros_like(blocks)
    for b in range(blocks.shape[0]):  # at most 4 blocks per tile
        lookup = {int(p): i for i, p in enumerate(own[b].tolist()) if real[b, i]}
        local[b] = torch.tensor([lookup[int(p)] for p in blocks[b].tolist()])
    return local.to(device), real.to(device)


def _islow(samples: torch.Tensor) -> torch.Tensor:
    """libjpeg's DCT of integer sample blocks [B, 64] (flattened 8x8), in DCT units (its output / 8)."""
    return islow_fdct(samples.reshape(-1, BLOCK, BLOCK).to(torch.int32) - 128).to(samples.dtype).reshape(-1, 64) / 8


def _descend(samples, replicas, low, high, target_low, target_high, table, settings) -> torch.Tensor:
    """Coordinate descent on the integer samples of B blocks (see the module docstring, step 2).

    samples [B, 64] padded block (replicas equal their source), replicas [64] the in-block source of
    each position, low/high [B, 64] bounds of each source sample's change; target_low/target_high
    [B, 64] the quantized values to reach, table [B, 64]. Between exact checks (libjpeg's integer
    DCT, every few steps) the coefficients follow each move through the float DCT, which is linear
    and differs from libjpeg's by under 0.2. Returns each source sample's change [B, 64]."""
    dtype = samples.dtype
    moves = (replicas.view(64, 1) == torch.arange(64, device=samples.device)).to(dtype)  # [position, source]
    effect = (block_dct_matrix(dtype, samples.device) @ moves).T  # [source, coefficient]
    result = torch.zeros_like(samples)
    index = torch.arange(samples.shape[0], device=samples.device)
    change = torch.zeros_like(samples)
    inset = torch.clamp(0.25 * table, min=1 / 16, max=settings["search_inset"])  # aim inside: room for later moves
    lo = (target_low - 0.5) * table + inset
    hi = (target_high + 0.5) * table - inset
    for step in range(settings["search_steps"] + 1):
        if step % _CHECK_EVERY == 0:  # exact check; blocks that are done or stuck leave
            value = _islow(samples + change @ moves.T)
            if step:
                quantized = _round_half_away(value / table)
                keep = ~((quantized >= target_low) & (quantized <= target_high)).all(1) & moved
                result[index] = change
                if step == settings["search_steps"] or not keep.any():
                    break
                index, samples, change, value = index[keep], samples[keep], change[keep], value[keep]
                low, high, target_low, target_high, table, lo, hi = (
                    t[keep] for t in (low, high, target_low, target_high, table, lo, hi)
                )
            moved = torch.zeros(index.shape[0], dtype=torch.bool, device=samples.device)
        excess = value - value.clamp(lo, hi)
        gradient = excess @ effect.T
        direction = -torch.sign(gradient)
        allowed = (change + direction >= low) & (change + direction <= high) & (direction != 0)
        score, chosen = torch.where(allowed, gradient.abs(), -1.0).topk(settings["candidates"], dim=1)
        steps = direction.gather(1, chosen)
        trial = value.unsqueeze(1) + steps.unsqueeze(-1) * effect[chosen]
        outside = trial - trial.clamp(lo.unsqueeze(1), hi.unsqueeze(1))
        gain = outside.pow(2).sum(-1) - excess.pow(2).sum(1, keepdim=True)
        best, pick = torch.where(score >= 0, gain, float("inf")).min(1)
        improve = best < -1e-6
        picked = chosen.gather(1, pick[:, None])[:, 0]
        amount = torch.where(improve, steps.gather(1, pick[:, None])[:, 0], 0.0)
        change[torch.arange(change.shape[0], device=change.device), picked] += amount
        value = value + amount[:, None] * effect[picked]
        moved |= improve
    return result


def _differences(rgb: torch.Tensor, intervals: Intervals, targets: bool) -> list[torch.Tensor]:
    """Per component, which coefficients [K, hb, wb, 8, 8] of the tiles' libjpeg re-encode (bit-exact
    model) differ from the stored ones, or with `targets` fall outside the target range low..high."""
    ycc = _libjpeg_ycc(rgb)
    masks = []
    for c in range(len(intervals.coefficients)):
        quantized = _quantized(ycc, intervals.mode, c, intervals.tables[c].to(rgb.dtype))
        if targets:
            masks.append((quantized < intervals.low[c]) | (quantized > intervals.high[c]))
        else:
            masks.append(quantized != intervals.coefficients[c])
    return masks


def _counts(masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile, the failing blocks and differing coefficients of `_differences`."""
    blocks = sum(m.flatten(-2).any(-1).flatten(1).sum(1) for m in masks)
    return blocks, sum(m.flatten(1).sum(1) for m in masks)


def _repair_component(rgb: torch.Tensor, intervals: Intervals, c: int, failing: torch.Tensor, settings: dict) -> torch.Tensor:
    """The lattice search over component c's failing blocks [K, hb, wb] of [K, 3, h, w] 8-bit tiles."""
    tiles = failing.flatten(1).any(1).nonzero().flatten()
    if tiles.numel() == 0:
        return rgb
    failing, part = failing[tiles], rgb[tiles]
    component = _Component(_libjpeg_ycc(part), intervals.mode, c)
    blocks = plane_blocks(component.samples).flatten(-2)
    low, high = (plane_blocks(bound).flatten(-2) for bound in component.sample_bounds(part))
    target_low, target_high = (t[tiles].flatten(-2).to(rgb.dtype) for t in (intervals.low[c], intervals.high[c]))
    steps = intervals.tables[c][tiles].flatten(-2).to(rgb.dtype)
    replicas, real = _block_replicas(component.out, rgb.device)
    change_blocks = torch.zeros_like(blocks)
    wb = failing.shape[2]
    for b in range(replicas.shape[0]):
        i, j = divmod(b, wb)
        which = failing[:, i, j].nonzero().flatten()
        if which.numel() == 0:
            continue
        keep = real[b].to(rgb.dtype)
        change_blocks[which, i, j] = keep * _descend(
            blocks[which, i, j], replicas[b], low[which, i, j] * keep, high[which, i, j] * keep,
            target_low[which, i, j], target_high[which, i, j], steps[which, 0, 0].expand(-1, 64), settings,
        )
    change = unblockify(change_blocks.unflatten(-1, (BLOCK, BLOCK)))[:, : component.out[0], : component.out[1]]
    pixel = component.pixel_change(part, change)
    if c == 0:
        part = _with_luma(part, component.ycc[:, 0] + pixel)
    else:
        where = (pixel != 0).nonzero(as_tuple=True)
        target = component.ycc.permute(0, 2, 3, 1)[where]
        target[:, c] += pixel[where]
        found_rgb, found = _rgb_for(target)
        channels_last = part.permute(0, 2, 3, 1).clone()
        channels_last[where] = torch.where(found[:, None], found_rgb, channels_last[where])
        part = channels_last.permute(0, 3, 1, 2)
    out = rgb.clone()
    out[tiles] = part
    return out


_PIXEL_MOVES = (-2, -1, 1, 2)  # steps of one pixel's value in `_pixel_search` (2: a pixel libjpeg counts twice)
_COMBINED = ((2, 64), (3, 32))  # (moves summed, among the best single moves) `_pixel_search` tries where no move helps
_PIXEL_CHUNK = 64  # tiles whose single moves are scored at once (bounds the memory: about 3 MB a 16x16 tile)
_COMBINED_CHUNK = 8  # stuck tiles whose combinations are scored at once (about 60 MB a 16x16 tile)


def _exact_distance(
    plane: torch.Tensor, mode: str, c: int, low: torch.Tensor, high: torch.Tensor, divisor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far libjpeg's DCT of component c of integer planes [K, h, w] lies outside the integer range
    [K, hb, wb, 8, 8] of its output that quantizes into low..high: per tile a sum of squares in
    quantization steps (`divisor`: 8 x step; 0 exactly when every quantized coefficient lies in its
    target range), and the DCT itself."""
    samples = plane_blocks(subsampling.downsample(plane, subsampling.component_factors(mode, c), libjpeg_rounding=True))
    value = islow_fdct(samples.to(torch.int32) - 128).to(plane.dtype)
    outside = ((value - high).clamp(min=0.0) + (low - value).clamp(min=0.0)) / divisor
    return outside.pow(2).flatten(1).sum(1), value


def _pixel_search(rgb: torch.Tensor, intervals: Intervals, c: int, steps: int) -> torch.Tensor:
    """Greedy descent on the value of component c of single pixels of [K, 3, h, w] 8-bit tiles,
    scored exactly (libjpeg's downsampling and integer DCT of every candidate move): for the blocks
    the lattice search leaves failing. It reaches what the sample-level search cannot: the last
    pixel row or column where libjpeg's downsampling counts a pixel twice and copies it into the
    padding (the search keeps those pixels fixed), and coefficients that only libjpeg's integer
    rounding brings into range. Each step applies each tile's best move (`_PIXEL_MOVES`, within the
    pixel's room) if it lowers `_exact_distance`, else, in edge tiles, its best sum of moves
    (`_COMBINED`): in a block that libjpeg pads from two real columns, every coefficient of a row of
    horizontal frequencies is a multiple of one difference of the two columns, and the range that
    the seven of them leave it can be narrower than any move of one pixel (interior blocks, 64 free
    samples, were not seen to need them, and they cost). Up to `steps` steps."""
    k, _, h, w = rgb.shape
    table = 8.0 * intervals.tables[c].to(rgb.dtype)  # libjpeg divides its DCT output by 8 x step
    low, high = intervals.low[c].to(rgb.dtype), intervals.high[c].to(rgb.dtype)
    # the integer outputs that quantize (rounding half away from zero) to low..high
    low = low * table - table / 2 + (low <= 0).to(rgb.dtype)
    high = high * table + table / 2 - (high >= 0).to(rgb.dtype)
    moves = torch.tensor(_PIXEL_MOVES, dtype=rgb.dtype, device=rgb.device)
    pixel = torch.eye(h * w, dtype=rgb.dtype, device=rgb.device).view(h * w, h, w)
    trials = (moves.view(-1, 1, 1, 1) * pixel).flatten(0, 1)  # [M, h, w]: each move's change of the plane
    amounts = moves.repeat_interleave(h * w)

    def distances(planes: torch.Tensor, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, P, h, w] -> their distances [T, P] and DCTs [T, P, hb, wb, 8, 8]."""
        repeat = lambda t: t[tiles].repeat_interleave(planes.shape[1], 0)  # noqa: E731
        flat = planes.flatten(0, 1)
        distance, value = _exact_distance(flat, intervals.mode, c, repeat(low), repeat(high), repeat(table))
        return distance.view(planes.shape[:2]), value.view(*planes.shape[:2], *value.shape[1:])

    stopped = torch.zeros(k, dtype=torch.bool, device=rgb.device)  # no move helped: nor will one later
    padded = _has_padding(intervals.mode, intervals.size, [(BLOCK * t.shape[1], BLOCK * t.shape[2]) for t in intervals.coefficients])
    for _ in range(steps):
        ycc = _libjpeg_ycc(rgb)
        plane = ycc[:, c]
        current, value = _exact_distance(plane, intervals.mode, c, low, high, table)
        waiting = ((current > 0) & ~stopped).nonzero().flatten()
        if waiting.numel() == 0:
            break
        for start in range(0, waiting.numel(), _PIXEL_CHUNK):
            active = waiting[start : start + _PIXEL_CHUNK]
            up, down = (r.flatten(1) for r in _Component(ycc[active], intervals.mode, c).pixel_room(rgb[active]))
            room = torch.where(amounts > 0, up.repeat(1, len(_PIXEL_MOVES)), down.repeat(1, len(_PIXEL_MOVES)))
            score, moved = distances(plane[active, None] + trials, active)
            score = torch.where(amounts.abs() <= room, score, float("inf"))
            best, choice = score.min(1)
            change = trials[choice]
            for size, pool in _COMBINED if padded else ():  # where no move helps: sums of 2, then 3 moves
                stuck = (best >= current[active]).nonzero().flatten()
                for first in range(0, stuck.numel(), _COMBINED_CHUNK):
                    part = stuck[first : first + _COMBINED_CHUNK]
                    tiles = active[part]
                    best[part], change[part] = _best_combination(
                        size, min(pool, trials.shape[0]), trials, score[part], moved[part], value[tiles], low[tiles],
                        high[tiles], lambda planes: distances(plane[tiles, None] + planes, tiles)[0],  # noqa: B023
                    )
            better = best < current[active]
            stopped[active[~better]] = True
            tiles = active[better]
            rgb[tiles] = _with_component(rgb[tiles], ycc[tiles], c, plane[tiles] + change[better])
    return rgb


def _best_combination(
    size: int, pool: int, trials: torch.Tensor, score: torch.Tensor, moved: torch.Tensor, value: torch.Tensor,
    low: torch.Tensor, high: torch.Tensor, distances,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For T stuck tiles of `_pixel_search`: the best sum of `size` moves on different pixels among
    the `pool` best single moves that change a failing block (a move elsewhere leaves its block met
    or breaks it). score [T, M] the single moves' distances (inf: out of room), moved [T, M, hb, wb,
    8, 8] their DCTs, value the tiles' DCT, low/high its range, distances scores changes [T, C, h, w].
    Returns (distance [T], change [T, h, w])."""
    pixels = trials.shape[-2] * trials.shape[-1]
    failing = (value - value.clamp(low, high)).flatten(-2).ne(0).any(-1)  # [T, hb, wb]
    touching = ((moved != value[:, None]).flatten(-2).any(-1) & failing[:, None]).flatten(2).any(2)
    touching = torch.where(touching, score, float("inf"))
    top = (-touching).topk(pool, dim=1).indices  # [T, pool]
    combos = torch.combinations(torch.arange(pool, device=trials.device), size)  # [C, size]
    chosen = top[:, combos]  # [T, C, size]
    changes = trials[chosen].sum(2)  # [T, C, h, w]
    on = (chosen % pixels).sort(-1).values
    allowed = torch.isfinite(touching.gather(1, chosen.flatten(1)).view(chosen.shape)).all(-1)
    allowed &= (on[..., 1:] != on[..., :-1]).all(-1)
    distance = torch.where(allowed, distances(changes), float("inf"))
    best, pick = distance.min(1)
    return best, changes[torch.arange(len(best), device=trials.device), pick]


def _with_component(rgb: torch.Tensor, ycc: torch.Tensor, c: int, plane: torch.Tensor) -> torch.Tensor:
    """[K, 3, h, w] 8-bit RGB whose libjpeg integer `ycc` has component c replaced by `plane` [K, h, w]:
    luma by `_with_luma`; chroma by `_rgb_for`, the other two components kept (pixels with no such
    RGB, outside the room the moves keep to, stay as they were)."""
    if c == 0:
        return _with_luma(rgb, plane)
    where = (plane != ycc[:, c]).nonzero(as_tuple=True)
    triple = ycc.permute(0, 2, 3, 1)[where]
    triple[:, c] = plane[where]
    found_rgb, found = _rgb_for(triple)
    out = rgb.permute(0, 2, 3, 1).clone()
    out[where] = torch.where(found[:, None], found_rgb, out[where])
    return out.permute(0, 3, 1, 2)


_SEARCH_CHUNK = 4096  # tiles searched at once (bounds the memory of the search)
_ESCALATE_SHARE = 0.1  # share of the blocks still failing above which no further round (nor retry) runs
_FEW_BLOCKS = 256  # ... unless they are this few


def _lattice_search(rgb: torch.Tensor, intervals: Intervals, tiles: torch.Tensor, widened: torch.Tensor, settings: dict):
    """Rounds of the lattice search on `tiles` (indices) of [K, 3, h, w] 8-bit tiles (chroma
    components, then luma), in place. Returns per tile the failing blocks and differing
    coefficients against the stored ones (measured only where they can differ: tiles the search
    worked on and tiles with widened targets).

    A chroma change keeps each pixel's libjpeg Y and other chroma exactly, a luma change keeps its
    chroma: one check per round tells every component's failing blocks."""
    order = list(range(1, len(intervals.coefficients))) + [0]
    blocks, _ = _counts(_differences(rgb[tiles], intervals.subset(tiles), targets=True))
    failing_tiles = tiles[blocks > 0]
    measure = torch.cat([failing_tiles, widened]).unique()
    blocks_per_tile = sum(c[0, ..., 0, 0].numel() for c in intervals.coefficients)
    for start in range(0, failing_tiles.numel(), _SEARCH_CHUNK):
        active = failing_tiles[start : start + _SEARCH_CHUNK]
        total_blocks = active.numel() * blocks_per_tile
        for round_index in range(settings["search_rounds"]):
            tiles, target = rgb[active], intervals.subset(active)
            masks = _differences(tiles, target, targets=True)
            blocks = _counts(masks)[0]
            still = blocks > 0
            # later rounds are for the few hard blocks; where most blocks still fail (steps of 1 all
            # over: quality 98-100) more moves buy little at a high price
            if not still.any() or (round_index and blocks.sum() > max(_ESCALATE_SHARE * total_blocks, _FEW_BLOCKS)):
                break
            active, tiles, target = active[still], tiles[still], target.subset(still.nonzero().flatten())
            # they weigh 4x as many moves each round
            candidates = min(64, settings["candidates"] << (2 * round_index))
            for c in order:
                failing = masks[c][still].flatten(-2).any(-1)
                tiles = _repair_component(tiles, target, c, failing, dict(settings, candidates=candidates))
            rgb[active] = tiles
        tiles, target = rgb[active], intervals.subset(active)
        masks = _differences(tiles, target, targets=True)
        blocks = _counts(masks)[0]
        if blocks.any() and blocks.sum() <= max(_ESCALATE_SHARE * total_blocks, _FEW_BLOCKS):
            for c in order:
                which = masks[c].flatten(1).any(1).nonzero().flatten()
                if which.numel():
                    tiles[which] = _pixel_search(tiles[which], target.subset(which), c, settings["search_steps"])
            rgb[active] = tiles
    failing_blocks = torch.zeros(rgb.shape[0], dtype=torch.long, device=rgb.device)
    differing = torch.zeros_like(failing_blocks)
    for start in range(0, measure.numel(), _SEARCH_CHUNK):
        part = measure[start : start + _SEARCH_CHUNK]
        failing_blocks[part], differing[part] = _counts(_differences(rgb[part], intervals.subset(part), targets=False))
    return failing_blocks, differing


def projection(
    images: torch.Tensor,
    jpeg,
    margin: float = 2.0,
    float_passes: int = 200,
    relaxation: float = 1.5,
    widenings: int = 32,
    search_rounds: int = 3,
    search_steps: int = 32,
    candidates: int = 8,
    search_inset: float = 1.0,
) -> Projection:
    """Make candidates [N, 3, H, W] (or [3, H, W]) in [0, 1] consistent with `jpeg` (a JpegFile).
    A grayscale file's candidates may have one channel; either way they are projected as gray (libjpeg's
    luma of RGB ones) and come back with the channels they had.

    The float result (`Projection.floats`) meets every interval, shrunk by `margin` DCT units so that
    rounding it keeps most coefficients; it is found by up to `float_passes` alternating projections,
    over-relaxed by `relaxation`. The 8-bit result (`Projection.images`) is its rounding, repaired by
    the lattice search (`search_rounds` rounds of up to `search_steps` moves per block, each choosing
    among `candidates` moves): see the module docstring. Batch entries are independent."""
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    gray = jpeg.sampling == subsampling.GRAY
    channels = (1, 3) if gray else (3,)
    if batch.dim() != 4 or batch.shape[1] not in channels or tuple(batch.shape[-2:]) != tuple(jpeg.size):
        raise ValueError(
            f"candidates must be [N, {' or '.join(map(str, channels))}, {jpeg.height}, {jpeg.width}] to match "
            f"{jpeg.source}, got {tuple(images.shape)}"
        )
    settings = dict(
        margin=margin, float_passes=float_passes, relaxation=relaxation, widenings=widenings, search_rounds=search_rounds,
        search_steps=search_steps, candidates=candidates, search_inset=search_inset,
    )
    stored, tables = _file_tensors(jpeg, batch.device)  # on the candidates' device once, not per candidate
    # each candidate on its own: the search's choices never depend on the rest of a batch
    parts = [_project_one(candidate[None], jpeg, stored, tables, settings) for candidate in batch]
    fields = [torch.cat([getattr(part, name) for part in parts]) for name in Projection.__dataclass_fields__]
    return Projection(*(field[0] if single else field for field in fields))


def _file_tensors(jpeg, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The file's coefficients (per component [1, hb, wb, 8, 8]) and tables [1, C, 8, 8] on `device`."""
    stored = jpeg.coefficient_tensors(device)
    return stored, component_tables(jpeg.qtable_tensor(device), 1, len(stored))


def _project_one(batch: torch.Tensor, jpeg, stored: list[torch.Tensor], tables: torch.Tensor, settings: dict) -> Projection:
    """`projection` of one candidate [1, C, H, W], given the file's coefficients and tables on its device."""
    gray = jpeg.sampling == subsampling.GRAY
    n = 1
    with torch.no_grad():
        source = batch.float() * 255.0
        if gray:  # a grayscale file's outputs are gray: worked on as R = G = B = libjpeg's luma
            source = (rgb_to_gray(source) if source.shape[1] == 3 else source).expand(-1, 3, -1, -1)
        floats, rounded = torch.empty_like(source), torch.empty_like(source)
        failing_blocks, differing, given_up = (torch.zeros(n, dtype=torch.long, device=source.device) for _ in range(3))
        groups = _tiles(source, jpeg, stored, tables)
        del source  # the tiles hold a copy, and each group goes once done: fewer image-sized tensors at the peak
        while groups:
            region, tiles, intervals = groups.pop(0)
            # tiles whose candidate is already 8-bit exact are kept as they are
            eight_bit = tiles.clamp(0.0, 255.0).round()
            pending = (_counts(_differences(eight_bit, intervals, targets=False))[0] > 0).nonzero().flatten()
            solved, excess = _float_solve(rgb_to_ycbcr(tiles), intervals, settings)
            _untile(floats, region, ycbcr_to_rgb(solved))
            stuck = pending[excess[pending] > _WIDEN_ABOVE]
            stored_intervals, near = intervals, stuck[:0]
            if stuck.numel():  # the margin may be what keeps them out of the cube (see `_unshrunk`)
                again, again_excess = _unshrunk(solved[stuck].clone(), intervals.subset(stuck), settings)
                inside = again_excess <= _CUBE_TOLERANCE
                solved[stuck[inside]], excess[stuck[inside]] = again[inside], again_excess[inside]
                # nearly inside: it may be slow convergence (a white block: one point of the cube
                # meets its intervals) or colours the file takes out of the cube; both are tried below
                close = ~inside & (again_excess <= _WIDEN_ABOVE)
                near, near_solved = stuck[close], again[close]
                stuck = stuck[~inside]
            given_up_tiles = torch.zeros(solved.shape[0], dtype=torch.long, device=solved.device)
            if stuck.numel():
                solved[stuck], widened = _widen(solved[stuck], intervals.subset(stuck), settings)
                intervals = intervals.with_targets(stuck, widened)
                given_up_tiles[stuck] = sum(((lo != c) | (hi != c)).flatten(1).sum(1)
                                            for lo, hi, c in zip(widened.low, widened.high, widened.coefficients))
            eight_bit[pending] = ycbcr_to_rgb(solved[pending]).clamp(0.0, 255.0).round()
            blocks, coefficients = _lattice_search(eight_bit, intervals, pending, stuck, settings)
            if near.numel():  # the search from the solution without margin, on the stored intervals
                plain = ycbcr_to_rgb(near_solved).clamp(0.0, 255.0).round()
                everything = torch.arange(near.numel(), device=near.device)
                plain_blocks, plain_coefficients = _lattice_search(plain, stored_intervals.subset(near), everything,
                                                                   everything[:0], settings)
                better = plain_coefficients <= coefficients[near]  # a tie: nothing given up
                eight_bit[near[better]] = plain[better]
                blocks[near[better]], coefficients[near[better]] = plain_blocks[better], plain_coefficients[better]
                given_up_tiles[near[better]] = 0
            given_up += given_up_tiles.view(n, -1).sum(1)
            # a last try for tiles that still fail in the file's own colours: start the search from
            # the middle half of every interval (the candidate's detail gives way to exactness there);
            # not where most tiles fail (steps of 1 all over), where it buys little at a high price
            retry = pending[coefficients[pending] > 0]
            retry = retry[~torch.isin(retry, stuck)]
            group_blocks = tiles.shape[0] * sum(c[0, ..., 0, 0].numel() for c in intervals.coefficients)
            if retry.numel() and blocks[retry].sum() <= max(_ESCALATE_SHARE * group_blocks, _FEW_BLOCKS):
                target = intervals.subset(retry)
                centred, _ = _float_solve(rgb_to_ycbcr(tiles[retry]), target, dict(settings, margin=float("inf")))
                again = ycbcr_to_rgb(centred).clamp(0.0, 255.0).round()
                everything = torch.arange(retry.numel(), device=retry.device)
                again_blocks, again_coefficients = _lattice_search(again, target, everything, everything[:0], settings)
                better = again_coefficients < coefficients[retry]
                eight_bit[retry[better]] = again[better]
                blocks[retry[better]], coefficients[retry[better]] = again_blocks[better], again_coefficients[better]
            _untile(rounded, region, eight_bit)
            failing_blocks += blocks.view(n, -1).sum(1)
            differing += coefficients.view(n, -1).sum(1)
    images_out, floats_out = rounded.div_(255.0).to(batch.dtype), floats.div_(255.0).to(batch.dtype)
    if batch.shape[1] == 1:  # back with the channel count they came with
        images_out, floats_out = images_out[:, :1].contiguous(), floats_out[:, :1].contiguous()
    return Projection(images_out, floats_out, failing_blocks, differing, given_up)


def project(images: torch.Tensor, jpeg, **settings) -> torch.Tensor:
    """The 8-bit images of `projection` (k / 255): saved as 8-bit files they lose nothing."""
    return projection(images, jpeg, **settings).images


def round_to_16_bits(floats: torch.Tensor) -> torch.Tensor:
    """The float result on the 16-bit grid (k / 65535), clamped to [0, 1]. The rounding moves a
    coefficient by at most 8 x 0.5 / 65535 x 255 = 0.016 DCT units, inside any margin of
    `projection`, so float consistency holds wherever the float result lies in the cube."""
    return (floats.clamp(0.0, 1.0) * 65535.0).round() / 65535.0
