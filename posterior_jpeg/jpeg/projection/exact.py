"""A bit-exact model of libjpeg's re-encode of 8-bit RGB tiles: integer YCbCr, integer downsampling,
integer DCT and quantization. It says which coefficients an 8-bit image gets back from a file's
tables, without running libjpeg (tested against it)."""

import torch

from .. import subsampling
from ..codec import plane_blocks
from ..color import rgb_to_ycbcr, round_ycbcr_like_libjpeg
from ..dct import islow_fdct
from .intervals import Intervals


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """libjpeg's rounding of its DCT output by the quantization step."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def libjpeg_ycc(rgb: torch.Tensor) -> torch.Tensor:
    """libjpeg's integer YCbCr of [K, 3, h, w] 8-bit RGB (0..255)."""
    return round_ycbcr_like_libjpeg(rgb_to_ycbcr(rgb))


def libjpeg_dct(plane: torch.Tensor, mode: str, c: int) -> torch.Tensor:
    """libjpeg's integer DCT output [K, hb, wb, 8, 8] (8 x DCT units) of component c, from its
    integer values per pixel [K, h, w]: its integer downsampling, then its integer DCT."""
    samples = plane_blocks(subsampling.downsample(plane, subsampling.component_factors(mode, c), libjpeg_rounding=True))
    return islow_fdct(samples.to(torch.int32) - 128).to(plane.dtype)


def _quantized(ycc: torch.Tensor, mode: str, c: int, table: torch.Tensor) -> torch.Tensor:
    """libjpeg's quantized coefficients [K, hb, wb, 8, 8] of component c, from its integer YCbCr."""
    return round_half_away(libjpeg_dct(ycc[:, c], mode, c) / (8 * table))


def differences(rgb: torch.Tensor, intervals: Intervals, targets: bool) -> list[torch.Tensor]:
    """Per component, which coefficients [K, hb, wb, 8, 8] of the tiles' libjpeg re-encode (bit-exact
    model) differ from the stored ones, or with `targets` fall outside the target range low..high."""
    ycc = libjpeg_ycc(rgb)
    masks = []
    for c in range(len(intervals.coefficients)):
        quantized = _quantized(ycc, intervals.mode, c, intervals.tables[c].to(rgb.dtype))
        if targets:
            masks.append((quantized < intervals.low[c]) | (quantized > intervals.high[c]))
        else:
            masks.append(quantized != intervals.coefficients[c])
    return masks


def counts(masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile, the failing blocks and differing coefficients of `differences`."""
    blocks = sum(m.flatten(-2).any(-1).flatten(1).sum(1) for m in masks)
    return blocks, sum(m.flatten(1).sum(1) for m in masks)
