"""Quantization intervals and MCU tiles: what the projection must meet, cut into the units that libjpeg
codes together (the constraints of different MCUs do not interact, so every stage works on a batch
of tiles)."""

import torch

from .. import subsampling
from ..codec import component_tables
from ..dct import BLOCK, unblockify


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


def has_padding(mode: str, size: tuple[int, int], shapes: list[tuple[int, int]]) -> bool:
    """Whether some component of tiles of `size` pixels is padded (edge tiles): there the interval
    projection is a least-squares step, not exact, and needs checking."""
    for c, shape in enumerate(shapes):
        factors = subsampling.component_factors(mode, c)
        out = subsampling.downsampled_size(*size, factors)
        if out != tuple(shape) or (out[0] * factors[0], out[1] * factors[1]) != tuple(size):
            return True
    return False


def _spans(length: int, unit: int) -> list[tuple[int, int, int]]:
    """Split 0..length into runs of whole `unit`s and a remainder: (start, tile length, count)."""
    whole, rest = divmod(length, unit)
    spans = [(0, unit, whole)] if whole else []
    return spans + ([(whole * unit, rest, 1)] if rest else [])


def cut_tiles(images: torch.Tensor, jpeg, stored: list[torch.Tensor], tables: torch.Tensor) -> list[tuple[tuple, torch.Tensor, Intervals]]:
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


def paste_tiles(out: torch.Tensor, region: tuple, tiles: torch.Tensor) -> None:
    """Write a group of `cut_tiles` back into [N, 3, H, W] `out` at its region."""
    top, th, rows, left, tw, cols = region
    n = out.shape[0]
    crop = tiles.reshape(n, rows, cols, 3, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, 3, rows * th, cols * tw)
    out[:, :, top : top + rows * th, left : left + cols * tw] = crop


def file_tensors(jpeg, device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The file's coefficients (per component [1, hb, wb, 8, 8]) and tables [1, C, 8, 8] on `device`."""
    stored = jpeg.coefficient_tensors(device)
    return stored, component_tables(jpeg.qtable_tensor(device), 1, len(stored))
