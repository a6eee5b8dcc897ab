"""The last resorts of the 8-bit search, scored exactly by libjpeg's conversion, downsampling and
integer DCT: moves of one component of single pixels (and sums of two or three in edge tiles), for
the blocks that the search on samples (`lattice`) leaves failing (`pixel_search`); and moves of R, G
and B of single pixels on every component at once, for tiles in a corner of the RGB cube
(`rgb_search`)."""

import torch

from ..dct import BLOCK
from .exact import libjpeg_dct, libjpeg_ycc
from ..color import rgb_to_ycbcr
from .float_solver import _plane_dcts
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


def _output_range(intervals: Intervals, c: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Component c's range of libjpeg's integer DCT output that quantizes (rounding half away from
    zero) into the target range low..high, and its divisor 8 x step (each [K, hb, wb, 8, 8])."""
    table = 8.0 * intervals.tables[c].to(dtype)  # libjpeg divides its DCT output by 8 x step
    low, high = intervals.low[c].to(dtype), intervals.high[c].to(dtype)
    low = low * table - table / 2 + (low <= 0).to(dtype)
    high = high * table + table / 2 - (high >= 0).to(dtype)
    return low, high, table


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
    low, high, table = _output_range(intervals, c, rgb.dtype)
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





_RGB_CHUNK = 8  # tiles whose RGB moves are scored at once (every move of 8 16x16 tiles: about 40 MB of trials)
_RGB_POOL = 64  # moves scored exactly per step: those the float distance's gradient ranks first (all where none helps)
_RGB_MOVES_PER_STEP = 32  # best single moves on different pixels that `rgb_search` tries together


def _smooth_distance(rgb: torch.Tensor, mode: str, bounds: list) -> torch.Tensor:
    """Per tile of [K, 3, h, w] RGB, how far (squared DCT units) its float DCT lies outside `bounds`
    (`Intervals.bounds`, plane layout); its YCbCr clamped as libjpeg's is (pure red: Cr 255, not 255.5)."""
    dcts = _plane_dcts(rgb_to_ycbcr(rgb).clamp(0.0, 255.0), mode, [low.shape[1:] for low, _ in bounds])
    return sum((dct - dct.clamp(low, high)).pow(2).flatten(1).sum(1) for (_, dct), (low, high) in zip(dcts, bounds))


def rgb_search(rgb: torch.Tensor, intervals: Intervals, steps: int, margin: float) -> torch.Tensor:
    """Greedy descent on single RGB values of [K, 3, h, w] 8-bit tiles (+-1 of one channel of one
    pixel), scored exactly on every component at once: for tiles whose colours lie in a corner of
    the RGB cube, where moving one component with the others kept (the lattice search,
    `pixel_search`) has no room. A saturated red block whose Cr DC needs nearly every pixel's Cr at
    255 gets there only by raising R and letting Y follow inside its own interval; a saturated blue
    one whose Cb DC is short only by lowering R and G, its luma taking the change. One move of one
    pixel seldom changes libjpeg's rounded samples, so moves that leave the exact distance as it
    is are ranked by the float DCT's distance to the intervals shrunk by `margin`: the search walks
    that plateau towards the middles until the integers follow. Each step scores the `_RGB_POOL`
    moves that the float distance's gradient ranks first (every move where none of them helps) and
    tries the `_RGB_MOVES_PER_STEP` best (on different pixels) together, else the best one; up to
    `steps` steps. Returns the tiles."""
    _, _, h, w = rgb.shape
    ranges = [_output_range(intervals, c, rgb.dtype) for c in range(len(intervals.coefficients))]
    bounds = intervals.bounds(margin, rgb.dtype)
    moves = torch.eye(3 * h * w, dtype=rgb.dtype, device=rgb.device).view(-1, 3, h, w)
    moves = torch.cat([moves, -moves])  # [M, 3, h, w], M = 6 h w: (sign, channel, pixel)
    every_move = torch.arange(moves.shape[0], device=rgb.device)

    def scores(planes: torch.Tensor, which: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact and float distances of planes [P, 3, h, w] of tiles `which` [P] (indices into rgb)."""
        ycc = libjpeg_ycc(planes)
        exact = sum(_exact_distance(ycc[:, c], intervals.mode, c, *(t[which] for t in r))[0] for c, r in enumerate(ranges))
        return exact, _smooth_distance(planes, intervals.mode, [(low[which], high[which]) for low, high in bounds])

    def ahead(exact, smooth, exact_now, smooth_now) -> torch.Tensor:
        """Lexicographic order: the exact distance first, then the float one."""
        return (exact < exact_now) | ((exact == exact_now) & (smooth < smooth_now))

    def step(tiles, index, exact_now, smooth_now, pool):
        """One step for tiles [T, 3, h, w] (indices `index`) from `pool` [T, P] moves: (tiles, scores, moved)."""
        trials = tiles[:, None] + moves[pool]  # [T, P, 3, h, w]
        inside = ((trials >= 0.0) & (trials <= 255.0)).flatten(2).all(2)
        exact, smooth = (torch.where(inside, t.view(inside.shape), float("inf"))
                         for t in scores(trials.flatten(0, 1), index.repeat_interleave(pool.shape[1])))
        order = smooth.argsort(1)
        order = order.gather(1, exact.gather(1, order).argsort(dim=1, stable=True))  # [T, P] best first
        pixel = pool.gather(1, order) % (h * w)
        first = ~(pixel.unsqueeze(2) == pixel.unsqueeze(1)).tril(-1).any(2)  # each pixel's best move
        count = min(_RGB_MOVES_PER_STEP, pool.shape[1])
        picked = order.gather(1, torch.where(first, 0, 1).argsort(dim=1, stable=True)[:, :count])
        useful = ahead(exact.gather(1, picked), smooth.gather(1, picked), exact_now[:, None], smooth_now[:, None])
        together = tiles + (moves[pool.gather(1, picked)] * useful[..., None, None, None]).sum(1)
        together_exact, together_smooth = scores(together, index)
        best = order[:, :1]
        single_exact, single_smooth = exact.gather(1, best)[:, 0], smooth.gather(1, best)[:, 0]
        use = ~ahead(single_exact, single_smooth, together_exact, together_smooth)
        new = torch.where(use[:, None, None, None], together, tiles + moves[pool.gather(1, best)[:, 0]])
        new_exact, new_smooth = torch.where(use, together_exact, single_exact), torch.where(use, together_smooth, single_smooth)
        moved = ahead(new_exact, new_smooth, exact_now, smooth_now)
        keep = lambda new_value, old: torch.where(moved.view(-1, *[1] * (old.dim() - 1)), new_value, old)  # noqa: E731
        return keep(new, tiles), keep(new_exact, exact_now), keep(new_smooth, smooth_now), moved

    for start in range(0, rgb.shape[0], _RGB_CHUNK):
        index = torch.arange(start, min(start + _RGB_CHUNK, rgb.shape[0]), device=rgb.device)
        tiles = rgb[index]
        exact_now, smooth_now = scores(tiles, index)
        stopped = torch.zeros_like(exact_now, dtype=torch.bool)  # no move helped: nor will one later
        for _ in range(steps):
            active = ((exact_now > 0) & ~stopped).nonzero().flatten()
            if active.numel() == 0:
                break
            with torch.enable_grad():
                work = tiles[active].requires_grad_(True)
                _smooth_distance(work, intervals.mode, [(low[index[active]], high[index[active]]) for low, high in bounds]).sum().backward()
            gradient = torch.cat([work.grad.flatten(1), -work.grad.flatten(1)], 1)  # [T, M]: each move's first-order change
            pool = gradient.topk(min(_RGB_POOL, moves.shape[0]), dim=1, largest=False).indices
            tiles[active], exact_now[active], smooth_now[active], moved = step(
                tiles[active], index[active], exact_now[active], smooth_now[active], pool)
            stuck = active[~moved]
            if stuck.numel():  # where the gradient's choice did not help: every move
                pool = every_move.expand(stuck.numel(), -1)
                tiles[stuck], exact_now[stuck], smooth_now[stuck], again = step(
                    tiles[stuck], index[stuck], exact_now[stuck], smooth_now[stuck], pool)
                stopped[stuck[~again]] = True
        rgb[index] = tiles
    return rgb
