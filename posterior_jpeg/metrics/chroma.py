"""Colour against the original: PSNR of the chroma planes, and colour added to grayscale photos.

A decoder that invents colour on a grayscale photo loses RGB PSNR but no luma PSNR, so the gap
PSNR-Y - PSNR (0 for a gray output of a gray original) shows it.
"""

import torch

from ..jpeg.color import rgb_to_ycbcr
from .psnr import as_batch, psnr, psnr_y


def chroma_psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N, 2] PSNR in dB of the Cb and Cr planes (JFIF, full resolution, peak 1) of images against
    reference, both [N, 3, H, W] (or [3, H, W], N = 1) RGB in [0, 1]."""
    ours = rgb_to_ycbcr(as_batch(images).double() * 255) / 255
    theirs = rgb_to_ycbcr(as_batch(reference).double() * 255) / 255
    return torch.stack([psnr(ours[:, c : c + 1], theirs[:, c : c + 1]) for c in (1, 2)], dim=1)


def rgb_luma_gap(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N] PSNR-Y - PSNR in dB (shapes as in `chroma_psnr`). On a grayscale reference: 0 when the
    output is gray too, positive when it adds colour (the error in R, G and B then exceeds Y's)."""
    return psnr_y(as_batch(images), as_batch(reference)) - psnr(as_batch(images), as_batch(reference))


def is_gray(images: torch.Tensor, tolerance: float = 0.5 / 255) -> torch.Tensor:
    """[N] bool: R, G and B equal everywhere (within tolerance), as in a grayscale photo saved as RGB."""
    batch = as_batch(images)
    return (batch.amax(dim=1) - batch.amin(dim=1)).flatten(1).amax(dim=1) <= tolerance
