"""libjpeg's integer samples of 8-bit RGB tiles and how RGB moves them.

Every YCbCr integer triple whose float RGB lies in the cube is libjpeg's conversion of some 8-bit
RGB pixel (checked over all 2^24 colours), and RGB + (d, d, d) changes libjpeg's Y by exactly d and
its Cb, Cr not at all. So a luma sample can move by d wherever the pixel's RGB leaves room, and a
chroma sample by changing the chroma of the pixels it averages (keeping their Y and the other chroma
exact), as far as the cube allows: each sample gets integer bounds (`Component`). Where a pixel's
colour leaves its luma no room (on a face of the cube) the luma still moves, anywhere in 0..255, and
the colour gives way (`with_luma`): a white block needs every pixel white, and a slightly coloured
pixel beside white ones is no answer. That chroma change is the one way a component's move touches
another; the search's next exact check sees it.
"""

import functools
import itertools

import torch

from .. import subsampling
from ..color import rgb_to_ycbcr, ycbcr_to_rgb, ycc_to_rgb_matrix
from .exact import libjpeg_ycc


class Component:
    """libjpeg's integer samples of one component of [K, 3, h, w] tiles (from their integer YCbCr),
    and how each sample can move: its cell sums S over the (padded) pixels it averages, libjpeg's
    rounding bias, and per pixel whether it is free (counted once, not replicated into the padding)."""

    def __init__(self, ycc: torch.Tensor, mode: str, c: int):
        self.c = c
        self.factors = subsampling.component_factors(mode, c)
        self.ycc = ycc
        fv, fh = self.factors
        height, width = ycc.shape[-2:]
        self.out = subsampling.downsampled_size(height, width, self.factors)
        cell_h, cell_w = self.out[0] * fv, self.out[1] * fh
        pixels = subsampling.pad_replicate(self.ycc[:, c], cell_h, cell_w)
        self.count = fv * fh
        self.sums = self._cells(pixels).sum(-1)
        self.bias = subsampling.round_bias(*self.out, self.factors, ycc)[0]
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
        if self.c == 0:  # any luma has an 8-bit pixel (gray at least): see `with_luma`
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


def rgb_for(ycc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit RGB pixels [P, 3] whose libjpeg YCbCr is exactly `ycc` [P, 3] (integers): searched among
    the 125 neighbours of the float inverse. Returns (rgb, found)."""
    base = ycbcr_to_rgb(ycc.T[None, :, :, None].double())[0, :, :, 0].T.round()
    candidates = (base[:, None] + _rgb_offsets(ycc.device)).clamp(0.0, 255.0)  # [P, 125, 3]
    converted = libjpeg_ycc(candidates.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
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


def with_luma(rgb: torch.Tensor, luma: torch.Tensor) -> torch.Tensor:
    """[K, 3, h, w] 8-bit RGB with libjpeg's luma moved to `luma` [K, h, w] (integers). RGB + (d, d, d)
    moves libjpeg's Y by exactly d and keeps its chroma; where that leaves the cube (a pixel on one of
    its faces: its colour leaves its luma no room), the colour gives way instead: the pixel nearest
    to its colour scaled towards gray around the new luma, among the 125 neighbours of that
    colour that have the luma exactly, else gray (luma, luma, luma), which always has it."""
    shifted = rgb + (luma - libjpeg_ycc(rgb)[:, 0]).unsqueeze(1)
    inside = ((shifted >= 0.0) & (shifted <= 255.0)).all(1)
    if inside.all():
        return shifted
    where = (~inside).nonzero(as_tuple=True)
    ycc = rgb_to_ycbcr(rgb).permute(0, 2, 3, 1)[where]  # [P, 3]
    ycc[:, 0] = luma[where]
    target = _in_cube(ycc.T[None, :, :, None])[0, :, :, 0].T  # [P, 3] float RGB
    candidates = (target.round()[:, None] + _rgb_offsets(rgb.device).to(rgb.dtype)).clamp(0.0, 255.0)  # [P, 125, 3]
    converted = libjpeg_ycc(candidates.permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    distance = (candidates - target[:, None]).pow(2).sum(-1)
    distance = torch.where(converted[..., 0] == ycc[:, None, 0], distance, float("inf"))
    best, choice = distance.min(1)
    found = candidates[torch.arange(len(ycc), device=rgb.device), choice]
    gray = ycc[:, :1].expand(-1, 3)
    out = shifted.permute(0, 2, 3, 1).clone()
    out[where] = torch.where(torch.isfinite(best)[:, None], found, gray)
    return out.permute(0, 3, 1, 2)


def with_component(rgb: torch.Tensor, ycc: torch.Tensor, c: int, plane: torch.Tensor) -> torch.Tensor:
    """[K, 3, h, w] 8-bit RGB whose libjpeg integer `ycc` has component c replaced by `plane` [K, h, w]:
    luma by `with_luma`; chroma by `rgb_for`, the other two components kept (pixels with no such
    RGB, outside the room the moves keep to, stay as they were)."""
    if c == 0:
        return with_luma(rgb, plane)
    where = (plane != ycc[:, c]).nonzero(as_tuple=True)
    triple = ycc.permute(0, 2, 3, 1)[where]
    triple[:, c] = plane[where]
    found_rgb, found = rgb_for(triple)
    out = rgb.permute(0, 2, 3, 1).clone()
    out[where] = torch.where(found[:, None], found_rgb, out[where])
    return out.permute(0, 3, 1, 2)
