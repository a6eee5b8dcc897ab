"""Diversity of posterior samples of one input: the paper's per-pixel STD and mean pairwise LPIPS."""

import itertools

import torch

from .psnr import luma


def per_pixel_std(samples: torch.Tensor) -> float:
    """Std of luma Y over K samples [K, 3, H, W] in [0, 1], per pixel (Bessel-corrected), averaged over
    the pixels: the paper's "per-pixel STD" (a value between 0 and 1)."""
    if samples.shape[0] < 2:
        raise ValueError(f"per-pixel std needs at least 2 samples, got {samples.shape[0]}")
    return luma(samples.double()).std(dim=0).mean().item()


def mean_pairwise_lpips(samples: torch.Tensor, distance) -> float:
    """Mean LPIPS over all K (K - 1) / 2 pairs of samples [K, 3, H, W]; distance: an `LPIPS` metric."""
    if samples.shape[0] < 2:
        raise ValueError(f"pairwise LPIPS needs at least 2 samples, got {samples.shape[0]}")
    first, second = zip(*itertools.combinations(range(samples.shape[0]), 2))
    return distance(samples[list(first)], samples[list(second)]).mean().item()
