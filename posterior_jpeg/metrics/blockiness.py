"""How blocky an image looks: JPEG's signature artefact is a jump at every 8x8 block border."""

import torch

from .psnr import luma

BLOCK = 8


def blockiness(images: torch.Tensor) -> float:
    """Mean |luma step| across block borders over the mean |luma step| inside blocks, horizontal and
    vertical averaged, for [N, 3, H, W] in [0, 1] with the block grid at the top-left corner: about 1 for natural images (no
    preferred grid), well above 1 for a low-quality JPEG decode (3.2 for examples/chelsea_q10.jpg)."""
    y = luma(images.double())
    ratios = []
    for dim in (-1, -2):
        steps = y.diff(dim=dim).abs().transpose(dim, -1).reshape(-1, y.shape[dim] - 1).mean(dim=0)
        border = torch.arange(steps.shape[0]) % BLOCK == BLOCK - 1
        if border.all() or not border.any():
            raise ValueError(f"blockiness needs images wider and taller than {BLOCK} pixels, got {tuple(images.shape)}")
        ratios.append(steps[border].mean() / steps[~border].mean())
    return (sum(ratios) / 2).item()
