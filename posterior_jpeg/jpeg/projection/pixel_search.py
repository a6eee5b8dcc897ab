"""The last resort of the 8-bit search: moves of single pixels (and sums of two or three in edge
tiles) scored exactly by libjpeg's downsampling and integer DCT, for the blocks that the search on
samples (`lattice`) leaves failing."""

import torch

from ..dct import BLOCK
from .exact import libjpeg_dct, libjpeg_ycc
from .intervals import Intervals, has_padding
from .samples import Component, with_component


_PIXEL_MOVES = (-2, -1, 1, 2)  # steps of one pixel's value in `pixel_search` (2: a pixel libjpeg counts twice)
_COMBINED = ((2, 64), (3, 32))  # (moves summed, among the best single moves) `pixel_search` tries where no move helps
_PIXEL_CHUNK = 64  # tiles whose single moves are scored at once (bounds the memory: about 3 MB a 16x16 tile)
_COMBINED_CHUNK = 8  # stuck tiles whose combinations are scored at once (about 60 MB a 16x16 tile)


def _exact_distance(
    plane: torch.Tensor, mode: str, c: int, low: torch.Tensor, high: torch.Tensor, divisor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """How far libjpeg's DCT of component c of integer planes [K, h, w] lies outside the integer range
    [K, hb, wb, 8, 8] of its output that quantizes into low..high: per tile a sum of squares in
    quantization steps (`divisor`: 8 x step; 0 exactly when every quantized coefficient lies in its
    target range), and the DCT itself."""
    value = libjpeg_dct(plane, mode, c)
    outside = ((value - high).clamp(min=0.0) + (low - value).clamp(min=0.0)) / divisor
    return outside.pow(2).flatten(1).sum(1), value


def pixel_search(rgb: torch.Tensor, intervals: Intervals, c: int, steps: int) -> torch.Tensor:
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
    padded = has_padding(intervals.mode, intervals.size, [(BLOCK * t.shape[1], BLOCK * t.shape[2]) for t in intervals.coefficients])
    for _ in range(steps):
        ycc = libjpeg_ycc(rgb)
        plane = ycc[:, c]
        current, value = _exact_distance(plane, intervals.mode, c, low, high, table)
        waiting = ((current > 0) & ~stopped).nonzero().flatten()
        if waiting.numel() == 0:
            break
        for start in range(0, waiting.numel(), _PIXEL_CHUNK):
            active = waiting[start : start + _PIXEL_CHUNK]
            up, down = (r.flatten(1) for r in Component(ycc[active], intervals.mode, c).pixel_room(rgb[active]))
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
            rgb[tiles] = with_component(rgb[tiles], ycc[tiles], c, plane[tiles] + change[better])
    return rgb


def _best_combination(
    size: int, pool: int, trials: torch.Tensor, score: torch.Tensor, moved: torch.Tensor, value: torch.Tensor,
    low: torch.Tensor, high: torch.Tensor, distances,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For T stuck tiles of `pixel_search`: the best sum of `size` moves on different pixels among
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
