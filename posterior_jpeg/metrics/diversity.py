"""Diversity of posterior samples of one input: the paper's per-pixel STD and mean pairwise LPIPS."""

import torch

from .psnr import luma


def per_pixel_std(samples: torch.Tensor) -> float:
    """Std of luma Y over K samples [K, 3, H, W] in [0, 1], per pixel (Bessel-corrected), averaged over
    the pixels: the paper's "per-pixel STD" (a value between 0 and 1)."""
    if samples.shape[0] < 2:
        raise ValueError(f"per-pixel std needs at least 2 samples, got {samples.shape[0]}")
    return luma(samples.double()).std(dim=0).mean().item()


def mean_pairwise_distance(features: list[torch.Tensor], distance) -> float:
    """Mean LPIPS over all K (K - 1) / 2 pairs of K samples, from their LPIPS features
    (`LPIPS.features`; distance: that `LPIPS` metric), each computed once rather than once per pair."""
    count = features[0].shape[0]
    if count < 2:
        raise ValueError(f"pairwise LPIPS needs at least 2 samples, got {count}")
    pairs = [distance.distance([f[i : i + 1].expand(count - i - 1, -1, -1, -1) for f in features],
                               [f[i + 1 :] for f in features]) for i in range(count - 1)]
    return torch.cat(pairs).mean().item()
