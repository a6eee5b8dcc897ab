"""8-bit consistency: the rounded image, re-encoded by libjpeg with the file's tables and sampling,
gives back every stored coefficient. Rounding the float result moves each coefficient by about 0.35
DCT units (more than a step of 1-2 allows), so the blocks that still fail are repaired by a search
on the 8-bit lattice.

The search works on libjpeg's integer samples (Y per pixel, Cb and Cr after libjpeg's integer
downsampling), where the constraints of different blocks do not interact; each sample moves within
the integer bounds that its pixels' RGB leaves it (`samples`).
1. Per failing block, coordinate descent on its samples: the state is libjpeg's exact integer DCT,
   the objective the squared distance of each coefficient outside its interval; each step tries the
   `candidates` single-sample moves (+-1) that the gradient ranks first, predicts their effect with
   the float DCT, applies the best one if it lowers the objective, and stops when libjpeg's exact
   quantization gives back every stored coefficient, when no move helps, or after `search_steps`.
2. The changed samples are written back into RGB (Cb blocks, Cr blocks, then luma, each from the
   pixels as the previous step left them), and the exact check runs again, for `search_rounds`.
Edge blocks (the file's padding) are handled exactly: a sample's replicas move with it, and pixels
that libjpeg replicates into the padding are never changed by this search; blocks it leaves failing
go to `pixel_search`, which moves those too.
"""

import functools
from dataclasses import replace

import torch

from .. import subsampling
from ..codec import plane_blocks
from ..dct import BLOCK, block_dct_matrix, islow_fdct, unblockify
from .exact import counts, differences, libjpeg_ycc, round_half_away
from .intervals import Intervals
from .pixel_search import pixel_search
from .samples import Component, with_component
from .settings import CHECK_EVERY, Settings, worth_escalating


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
    """Coordinate descent on the integer samples of B blocks (see the module docstring, step 1).

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
    inset = torch.clamp(0.25 * table, min=1 / 16, max=settings.search_inset)  # aim inside: room for later moves
    lo = (target_low - 0.5) * table + inset
    hi = (target_high + 0.5) * table - inset
    for step in range(settings.search_steps + 1):
        if step % CHECK_EVERY == 0:  # exact check; blocks that are done or stuck leave
            value = _islow(samples + change @ moves.T)
            if step:
                quantized = round_half_away(value / table)
                keep = ~((quantized >= target_low) & (quantized <= target_high)).all(1) & moved
                result[index] = change
                if step == settings.search_steps or not keep.any():
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
        score, chosen = torch.where(allowed, gradient.abs(), -1.0).topk(settings.candidates, dim=1)
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


def _repair_component(rgb: torch.Tensor, intervals: Intervals, c: int, failing: torch.Tensor, settings: Settings) -> torch.Tensor:
    """The lattice search over component c's failing blocks [K, hb, wb] of [K, 3, h, w] 8-bit tiles."""
    tiles = failing.flatten(1).any(1).nonzero().flatten()
    if tiles.numel() == 0:
        return rgb
    failing, part = failing[tiles], rgb[tiles]
    component = Component(libjpeg_ycc(part), intervals.mode, c)
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
    out = rgb.clone()
    out[tiles] = with_component(part, component.ycc, c, component.ycc[:, c] + pixel)
    return out


_SEARCH_CHUNK = 4096  # tiles searched at once (bounds the memory of the search)


def lattice_search(rgb: torch.Tensor, intervals: Intervals, tiles: torch.Tensor, widened: torch.Tensor, settings: Settings):
    """Rounds of the lattice search on `tiles` (indices) of [K, 3, h, w] 8-bit tiles (chroma
    components, then luma), in place. Returns per tile the failing blocks and differing
    coefficients against the stored ones (measured only where they can differ: tiles the search
    worked on and tiles with widened targets).

    A chroma change keeps each pixel's libjpeg Y and other chroma exactly, a luma change keeps its
    chroma: one check per round tells every component's failing blocks."""
    order = list(range(1, len(intervals.coefficients))) + [0]
    blocks, _ = counts(differences(rgb[tiles], intervals.subset(tiles), targets=True))
    failing_tiles = tiles[blocks > 0]
    measure = torch.cat([failing_tiles, widened]).unique()
    blocks_per_tile = sum(c[0, ..., 0, 0].numel() for c in intervals.coefficients)
    for start in range(0, failing_tiles.numel(), _SEARCH_CHUNK):
        active = failing_tiles[start : start + _SEARCH_CHUNK]
        total_blocks = active.numel() * blocks_per_tile
        for round_index in range(settings.search_rounds):
            tiles, target = rgb[active], intervals.subset(active)
            masks = differences(tiles, target, targets=True)
            blocks = counts(masks)[0]
            still = blocks > 0
            # later rounds are for the few hard blocks
            if not still.any() or (round_index and not worth_escalating(blocks.sum(), total_blocks)):
                break
            active, tiles, target = active[still], tiles[still], target.subset(still.nonzero().flatten())
            # they weigh 4x as many moves each round
            candidates = min(64, settings.candidates << (2 * round_index))
            for c in order:
                failing = masks[c][still].flatten(-2).any(-1)
                tiles = _repair_component(tiles, target, c, failing, replace(settings, candidates=candidates))
            rgb[active] = tiles
        tiles, target = rgb[active], intervals.subset(active)
        masks = differences(tiles, target, targets=True)
        blocks = counts(masks)[0]
        if blocks.any() and worth_escalating(blocks.sum(), total_blocks):
            for c in order:
                which = masks[c].flatten(1).any(1).nonzero().flatten()
                if which.numel():
                    tiles[which] = pixel_search(tiles[which], target.subset(which), c, settings.search_steps)
            rgb[active] = tiles
    failing_blocks = torch.zeros(rgb.shape[0], dtype=torch.long, device=rgb.device)
    differing = torch.zeros_like(failing_blocks)
    for start in range(0, measure.numel(), _SEARCH_CHUNK):
        part = measure[start : start + _SEARCH_CHUNK]
        failing_blocks[part], differing[part] = counts(differences(rgb[part], intervals.subset(part), targets=False))
    return failing_blocks, differing
