"""Projection onto a file: make candidates consistent with its coefficients, in float and in 8 bits.

Two levels of consistency (see `Projection`):
- float: the exact DCT of the float result lies inside every quantization interval of the file
  (`float_solver`: alternating projections onto the intervals and the RGB cube).
- 8-bit: the rounded image, re-encoded by libjpeg with the file's tables and sampling, gives back
  every stored coefficient (`lattice`: a search on libjpeg's integer samples, `samples` for how RGB
  moves them, `pixel_search` for what it alone cannot reach, `exact` for the bit-exact check).
Where the search leaves tiles failing, more steps serve:
- tiles whose float solution stalls outside the cube are solved again on the whole intervals
  (`float_solver.unshrunk`): the margin alone can keep the intervals from meeting the cube;
- colours outside the cube (`float_solver.widen`): the tile gives up, greedily, the coefficients
  that fight the cube most, one at a time, widening their target range until a float solution inside
  the cube exists; the search then aims at the widened ranges (`Projection.given_up_coefficients`);
- tiles that still fail start again from the middle half of every interval (their candidate's
  detail gives way to exactness there), keeping whichever result differs less;
- tiles that fail even so, in a corner of the RGB cube (saturated colours, where no component can
  move with the others kept), are searched on R, G and B themselves (`pixel_search.rgb_search`).
What cannot be met (a box with no lattice point at steps of 1) stays as close as the search reached.

The constraints of different MCUs (the 8x8 / 16x16 pixel units that libjpeg codes together) do not
interact, so all of the work runs on a batch of MCU tiles (`intervals`); a tile leaves the batch once
it is done (checked every few passes, not every pass: no host synchronisation per pass), so the cost
follows the hard parts of the image, not its size. The knobs are the fields of `Settings`.
"""

from dataclasses import dataclass, replace

import torch

from .. import subsampling
from ..color import rgb_to_gray, rgb_to_ycbcr, ycbcr_to_rgb
from .exact import counts, differences
from .float_solver import CUBE_TOLERANCE, WIDEN_ABOVE, float_solve, gamut_projection, interval_projection, unshrunk, widen
from .intervals import Intervals, cut_tiles, file_tensors, paste_tiles
from .lattice import lattice_search
from .pixel_search import rgb_search
from .settings import Settings, worth_escalating

__all__ = ["Intervals", "Projection", "Settings", "gamut_projection", "interval_projection", "project", "projection",
           "round_to_16_bits"]


@dataclass
class Projection:
    """The result of `projection` for N candidates.

    images: [N, 3, H, W] on the 8-bit grid (k / 255): what a PNG holds.
    floats: [N, 3, H, W] the float result before rounding; its exact DCT lies inside every interval
      (float consistency). It leaves [0, 1] only where the file's colours leave the RGB cube.
    failing_blocks, differing_coefficients: [N] int, how many 8x8 blocks and coefficients of each
      8-bit image's re-encode differ from the file (bit-exact model of libjpeg; 0 = 8-bit exact).
    given_up_coefficients: [N] int, coefficients whose target range the 8-bit search widened where
      the file's own colours leave the RGB cube (see `widen`): the part of the difference that the
      file itself imposes."""

    images: torch.Tensor
    floats: torch.Tensor
    failing_blocks: torch.Tensor
    differing_coefficients: torch.Tensor
    given_up_coefficients: torch.Tensor


def projection(images: torch.Tensor, jpeg, **settings) -> Projection:
    """Make candidates [N, 3, H, W] (or [3, H, W]) in [0, 1] consistent with `jpeg` (a JpegFile).
    A grayscale file's candidates may have one channel; either way they are projected as gray (libjpeg's
    luma of RGB ones) and come back with the channels they had.

    The float result (`Projection.floats`) meets every interval, shrunk by `margin` DCT units so that
    rounding it keeps most coefficients; the 8-bit result (`Projection.images`) is its rounding,
    repaired by the lattice search: see the package docstring. `settings`: fields of `Settings`.
    Batch entries are independent."""
    single = images.dim() == 3
    batch = images.unsqueeze(0) if single else images
    gray = jpeg.sampling == subsampling.GRAY
    channels = (1, 3) if gray else (3,)
    if batch.dim() != 4 or batch.shape[1] not in channels or tuple(batch.shape[-2:]) != tuple(jpeg.size):
        raise ValueError(
            f"candidates must be [N, {' or '.join(map(str, channels))}, {jpeg.height}, {jpeg.width}] to match "
            f"{jpeg.source}, got {tuple(images.shape)}"
        )
    settings = Settings(**settings)
    stored, tables = file_tensors(jpeg, batch.device)  # on the candidates' device once, not per candidate
    # each candidate on its own: the search's choices never depend on the rest of a batch
    parts = [_project_one(candidate[None], jpeg, stored, tables, settings) for candidate in batch]
    fields = [torch.cat([getattr(part, name) for part in parts]) for name in Projection.__dataclass_fields__]
    return Projection(*(field[0] if single else field for field in fields))


def _project_one(batch: torch.Tensor, jpeg, stored: list[torch.Tensor], tables: torch.Tensor, settings: Settings) -> Projection:
    """`projection` of one candidate [1, C, H, W], given the file's coefficients and tables on its device."""
    gray = jpeg.sampling == subsampling.GRAY
    n = 1
    with torch.no_grad():
        source = batch.float() * 255.0
        if gray:  # a grayscale file's outputs are gray: worked on as R = G = B = libjpeg's luma
            source = (rgb_to_gray(source) if source.shape[1] == 3 else source).expand(-1, 3, -1, -1)
        floats, rounded = torch.empty_like(source), torch.empty_like(source)
        failing_blocks, differing, given_up = (torch.zeros(n, dtype=torch.long, device=source.device) for _ in range(3))
        groups = cut_tiles(source, jpeg, stored, tables)
        del source  # the tiles hold a copy, and each group goes once done: fewer image-sized tensors at the peak
        while groups:
            region, tiles, intervals = groups.pop(0)
            # tiles whose candidate is already 8-bit exact are kept as they are
            eight_bit = tiles.clamp(0.0, 255.0).round()
            pending = (counts(differences(eight_bit, intervals, targets=False))[0] > 0).nonzero().flatten()
            solved, excess = float_solve(rgb_to_ycbcr(tiles), intervals, settings)
            paste_tiles(floats, region, ycbcr_to_rgb(solved))
            stuck = pending[excess[pending] > WIDEN_ABOVE]
            stored_intervals, near = intervals, stuck[:0]
            if stuck.numel():  # the margin may be what keeps them out of the cube (see `unshrunk`)
                again, again_excess = unshrunk(solved[stuck].clone(), intervals.subset(stuck), settings)
                inside = again_excess <= CUBE_TOLERANCE
                solved[stuck[inside]] = again[inside]
                # nearly inside: it may be slow convergence (a white block: one point of the cube
                # meets its intervals) or colours the file takes out of the cube; both are tried below
                close = ~inside & (again_excess <= WIDEN_ABOVE)
                near, near_solved = stuck[close], again[close]
                stuck = stuck[~inside]
            given_up_tiles = torch.zeros(solved.shape[0], dtype=torch.long, device=solved.device)
            if stuck.numel():
                solved[stuck], widened = widen(solved[stuck], intervals.subset(stuck), settings)
                intervals = intervals.with_targets(stuck, widened)
                given_up_tiles[stuck] = sum(((lo != c) | (hi != c)).flatten(1).sum(1)
                                            for lo, hi, c in zip(widened.low, widened.high, widened.coefficients))
            eight_bit[pending] = _eight_bit(solved[pending])
            blocks, coefficients = lattice_search(eight_bit, intervals, pending, stuck, settings)
            if near.numel():  # the search from the solution without margin, on the stored intervals
                better = _keep_better(eight_bit, blocks, coefficients, near, near_solved, stored_intervals.subset(near),
                                      settings, ties=True)  # a tie: nothing given up
                given_up_tiles[near[better]] = 0
            given_up += given_up_tiles.view(n, -1).sum(1)
            # a last try for tiles that still fail in the file's own colours: start the search from
            # the middle half of every interval (the candidate's detail gives way to exactness there);
            # not where most tiles fail (steps of 1 all over), where it buys little at a high price
            retry = pending[coefficients[pending] > 0]
            retry = retry[~torch.isin(retry, stuck)]
            group_blocks = tiles.shape[0] * sum(c[0, ..., 0, 0].numel() for c in intervals.coefficients)
            if retry.numel() and worth_escalating(blocks[retry].sum(), group_blocks):
                target = intervals.subset(retry)
                centred, _ = float_solve(rgb_to_ycbcr(tiles[retry]), target, replace(settings, margin=float("inf")))
                _keep_better(eight_bit, blocks, coefficients, retry, centred, target, settings, ties=False)
            # and for tiles in a corner of the cube, where no component moves alone: moves of R, G, B
            corner = pending[coefficients[pending] > 0]
            corner = corner[~torch.isin(corner, stuck)]
            if corner.numel() and worth_escalating(blocks[corner].sum(), group_blocks):
                target = intervals.subset(corner)
                again = rgb_search(eight_bit[corner].clone(), target, settings.search_steps, settings.margin)
                again_blocks, again_coefficients = counts(differences(again, target, targets=False))
                better = again_coefficients < coefficients[corner]
                eight_bit[corner[better]] = again[better]
                blocks[corner[better]], coefficients[corner[better]] = again_blocks[better], again_coefficients[better]
            paste_tiles(rounded, region, eight_bit)
            failing_blocks += blocks.view(n, -1).sum(1)
            differing += coefficients.view(n, -1).sum(1)
    images_out, floats_out = rounded.div_(255.0).to(batch.dtype), floats.div_(255.0).to(batch.dtype)
    if batch.shape[1] == 1:  # back with the channel count they came with
        images_out, floats_out = images_out[:, :1].contiguous(), floats_out[:, :1].contiguous()
    return Projection(images_out, floats_out, failing_blocks, differing, given_up)


def _eight_bit(ycc: torch.Tensor) -> torch.Tensor:
    """The 8-bit RGB (0..255) that the search starts from: float YCbCr converted, clamped, rounded."""
    return ycbcr_to_rgb(ycc).clamp(0.0, 255.0).round()


def _keep_better(eight_bit, blocks, coefficients, tiles, start, intervals, settings, ties: bool) -> torch.Tensor:
    """Search `tiles` (indices into the group) again from other float solutions `start` (YCbCr) on
    `intervals` (theirs), and where that leaves fewer differing coefficients (or, with `ties`, as
    few) take its result into `eight_bit`, `blocks` and `coefficients`. Returns which tiles took it."""
    again = _eight_bit(start)
    everything = torch.arange(tiles.numel(), device=tiles.device)
    again_blocks, again_coefficients = lattice_search(again, intervals, everything, everything[:0], settings)
    better = again_coefficients <= coefficients[tiles] if ties else again_coefficients < coefficients[tiles]
    eight_bit[tiles[better]] = again[better]
    blocks[tiles[better]], coefficients[tiles[better]] = again_blocks[better], again_coefficients[better]
    return better


def project(images: torch.Tensor, jpeg, **settings) -> torch.Tensor:
    """The 8-bit images of `projection` (k / 255): saved as 8-bit files they lose nothing."""
    return projection(images, jpeg, **settings).images


def round_to_16_bits(floats: torch.Tensor) -> torch.Tensor:
    """The float result on the 16-bit grid (k / 65535), clamped to [0, 1]. The rounding moves a
    coefficient by at most 8 x 0.5 / 65535 x 255 = 0.016 DCT units, inside any margin of
    `projection`, so float consistency holds wherever the float result lies in the cube."""
    return (floats.clamp(0.0, 1.0) * 65535.0).round() / 65535.0
