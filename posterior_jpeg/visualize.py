"""Pictures people look at: per-pixel uncertainty maps and contact sheets (y | samples | mean | std)."""

import numpy as np
import torch

from .pixels import to_hwc_uint8

STD_FULL_SCALE = 0.1  # a per-pixel std of 0.1 (25 gray levels) or more shows as white


def std_map(samples: torch.Tensor) -> torch.Tensor:
    """[K, 3, H, W] samples in [0, 1] -> [3, H, W] heat map of the per-pixel std (see heat_map)."""
    return heat_map(samples.float().std(dim=0, unbiased=samples.shape[0] > 1))


def heat_map(std: torch.Tensor) -> torch.Tensor:
    """[C, H, W] per-pixel std of samples in [0, 1] -> [3, H, W] heat map of its channel mean.

    A fixed scale (black 0 -> red -> yellow -> white at STD_FULL_SCALE) keeps maps of different
    images and models comparable."""
    level = (std.mean(dim=0) / STD_FULL_SCALE).clamp(0, 1)
    red = (3 * level).clamp(0, 1)
    green = (3 * level - 1).clamp(0, 1)
    blue = (3 * level - 2).clamp(0, 1)
    return torch.stack([red, green, blue])


def contact_sheet(rows: list[list[torch.Tensor]], gap: int = 4) -> np.ndarray:
    """Lay out rows of [3, H, W] images (same H, W within a row) on a white sheet, uint8 [H, W, 3]."""
    heights = [max(t.shape[1] for t in row) for row in rows]
    widths = [sum(t.shape[2] for t in row) + gap * (len(row) - 1) for row in rows]
    sheet = np.full((sum(heights) + gap * (len(rows) - 1), max(widths), 3), 255, dtype=np.uint8)
    top = 0
    for row, height in zip(rows, heights):
        left = 0
        for image in row:
            h, w = image.shape[1:]
            sheet[top : top + h, left : left + w] = to_hwc_uint8(image)
            left += w + gap
        top += height + gap
    return sheet


def posterior_row(y: torch.Tensor, samples: torch.Tensor) -> list[torch.Tensor]:
    """One sheet row for an input: y | each sample | sample mean | std map."""
    return [y, *samples, samples.float().mean(dim=0), std_map(samples)]
