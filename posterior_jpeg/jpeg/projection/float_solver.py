"""Float consistency: a float image whose exact DCT lies inside every quantization interval.

We alternate, in YCbCr, orthogonal projections onto the intervals (shrunk by a margin) and onto the
RGB cube, over-relaxed, and always end on the interval projection, so the float result meets every
interval by construction. Where the file's own colours lie outside the RGB cube (cameras encode
YCbCr from the sensor, not from RGB) the two sets do not meet; such tiles stop when the alternation
stalls, and their float result leaves [0, 255] there. In blocks that libjpeg pads the interval step
is a least-squares one; tiles that stall there go to an L-BFGS descent on their distance to the
intervals, which reaches them unless the padding puts them out of every image's reach (seen at
steps of 1-3, by under a DCT unit). Tiles whose intervals and the cube do not meet give up
coefficients (`widen`), and the 8-bit search then aims at the widened ranges.
"""

import functools
from dataclasses import replace

import torch

from .. import subsampling
from ..color import rgb_to_ycbcr, ycbcr_to_rgb, ycc_offset, ycc_to_rgb_matrix
from ..dct import BLOCK, blockify, dct_matrix, unblockify
from .intervals import Intervals, has_padding
from .settings import CHECK_EVERY, Settings


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


_STALL = 0.97  # a tile whose distance to the sets fell by less than this factor since the last check stalls
CUBE_TOLERANCE = 1e-3  # gray levels outside the cube that count as inside
_INTERVAL_SLACK = 0.1  # DCT units beyond the shrunk intervals that count as inside (less than any shrink)
WIDEN_ABOVE = 0.5  # gray levels outside the cube from which a stalled tile gives up coefficients
_DESCENT_MARGIN = 0.05  # DCT units kept inside the intervals by `_interval_descent` (16-bit rounding: 0.016)
_WIDEN_INSET = 0.5  # gray levels a tile that gives up coefficients keeps from the cube's faces: its
#                     colours are saturated, and rounding must not clip nor 8-bit moves lack room


def _interval_violation(ycc: torch.Tensor, mode: str, bounds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per tile, how far (DCT units) its coefficients lie outside `bounds`."""
    dcts = _plane_dcts(ycc, mode, [low.shape[1:] for low, _ in bounds])
    return torch.stack([(dct - dct.clamp(low, high)).abs().flatten(1).amax(1) for (_, dct), (low, high) in zip(dcts, bounds)]).amax(0)


def _interval_descent(ycc: torch.Tensor, intervals: Intervals, settings: Settings) -> torch.Tensor:
    """Padded tiles whose alternation stalled outside their intervals: minimise the squared distance
    of their coefficients to the intervals over the pixels, by L-BFGS with the exact gradient of the
    padding and averaging (a convex problem: it reaches the intervals wherever the padding lets them
    be met). The intervals keep only a thin margin: with few real samples in a padded block, the
    middles that `margin` asks for may be out of reach where the intervals are not. Ignores the cube."""
    bounds = intervals.bounds(_DESCENT_MARGIN, ycc.dtype)
    shapes = [low.shape[1:] for low, _ in bounds]
    work = ycc.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([work], max_iter=settings.float_passes, tolerance_grad=1e-9,
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


def float_solve(ycc: torch.Tensor, intervals: Intervals, settings: Settings, inset: float = 0.0,
                 descent: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Alternate the projections on [K, 3, h, w] YCbCr tiles; each tile leaves once the interval
    projection lands inside the cube (and, where padding makes that projection inexact, inside the
    intervals), or once it stalls. With `descent`, tiles that stall outside the intervals are then
    brought inside by `_interval_descent`. Returns the tiles (written over `ycc`, to spare memory)
    and how far (gray levels) each leaves the cube (with `inset`, its inner cube)."""
    bounds = intervals.bounds(settings.margin, ycc.dtype)
    padded = has_padding(intervals.mode, intervals.size, [low.shape[1:] for low, _ in bounds])
    out = ycc
    excess_out, violation_out = ycc.new_zeros(ycc.shape[0]), ycc.new_zeros(ycc.shape[0])
    index = torch.arange(ycc.shape[0], device=ycc.device)
    work, earlier = ycc, None
    for step in range(settings.float_passes):
        projected = interval_projection(work, intervals.mode, bounds)
        if step % CHECK_EVERY == 0 or step == settings.float_passes - 1:
            excess = _cube_excess(projected, inset)
            violation = _interval_violation(projected, intervals.mode, bounds) if padded else torch.zeros_like(excess)
            leave = (excess <= CUBE_TOLERANCE) & (violation <= _INTERVAL_SLACK)
            distance = excess + violation
            if earlier is not None:
                leave |= distance > _STALL * earlier
            if step == settings.float_passes - 1:
                leave[:] = True
            keep, done = (~leave).nonzero().flatten(), leave.nonzero().flatten()
            out[index[done]], excess_out[index[done]], violation_out[index[done]] = projected[done], excess[done], violation[done]
            if keep.numel() == 0:
                break
            index, projected, earlier = index[keep], projected[keep], distance[keep]
            bounds = [(low[keep], high[keep]) for low, high in bounds]
        work = projected + settings.relaxation * (gamut_projection(projected, inset) - projected)
    outside = (violation_out > _INTERVAL_SLACK).nonzero().flatten()
    if descent and outside.numel():
        out[outside] = _interval_descent(out[outside], intervals.subset(outside), settings)
        excess_out[outside] = _cube_excess(out[outside], inset)
    return out, excess_out


def unshrunk(ycc: torch.Tensor, intervals: Intervals, settings: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve tiles that stalled outside the cube again, on the whole intervals (no margin).

    A saved RGB image may sit on a face of the cube exactly where a coefficient sits on the edge of
    its interval: a white block at a DC step of 16 (quality 50) has DC 8 x 127 = 63.5 steps, the
    lowest value that rounds to the stored 64, and every lower pixel rounds it to 63. Shrunk by the
    margin, that interval and the cube do not meet, though the image itself is an exact answer; the
    widening would give up its coefficient. Returns the tiles and their cube excess (`float_solve`):
    those it brings inside the cube are taken; those it brings within `WIDEN_ABOVE` of it are searched
    both ways (it and the widening), keeping whichever differs less: such a white block converges
    slowly (one point of the cube meets its intervals), while where the file's colours leave the
    cube a solution without margin only leaves more coefficients on the edges of their intervals."""
    return float_solve(ycc, intervals, replace(settings, margin=0.0))


def widen(ycc: torch.Tensor, intervals: Intervals, settings: Settings) -> tuple[torch.Tensor, Intervals]:
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

    for _ in range(settings.widenings):
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
        solved, excess = float_solve(out[index], widened(index), settings, _WIDEN_INSET, descent=False)
        out[index] = solved
        index = index[excess > WIDEN_ABOVE]
        if index.numel() == 0:
            break
    return out, widened(torch.arange(ycc.shape[0], device=ycc.device))
