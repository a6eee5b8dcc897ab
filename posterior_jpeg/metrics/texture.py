"""Fine detail against the original: the energy of the luma Laplacian, output over original.

A decoder that blurs scores below 1, one that adds noise above 1. Counted only inside 8x8 blocks
(`inside_blocks=True`, "HF-in"), the block borders of a JPEG decode earn nothing, so the ratio
measures texture rather than the grid; over every position ("HF") it counts both.
"""

import torch
import torch.nn.functional as F

from .psnr import as_batch, luma

BLOCK = 8
# The 4-neighbour Laplacian: zero on any linear ramp, so smooth shading earns nothing.
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def laplacian_energy(images: torch.Tensor, inside_blocks: bool = True) -> torch.Tensor:
    """[N] mean squared Laplacian of luma, for images [N, 3, H, W] (or [3, H, W], N = 1) in [0, 1].

    Only positions whose 3x3 support lies inside the image count; with inside_blocks, only those
    whose support lies inside one 8x8 block of the grid anchored at the top-left corner (JPEG's)."""
    y = luma(as_batch(images).double())
    kernel = torch.tensor(LAPLACIAN, dtype=y.dtype, device=y.device).view(1, 1, 3, 3)
    response = F.conv2d(y, kernel)  # response[i, j] is centred on pixel (i + 1, j + 1)
    if inside_blocks:
        rows = torch.arange(response.shape[-2], device=y.device) % BLOCK <= BLOCK - 3
        cols = torch.arange(response.shape[-1], device=y.device) % BLOCK <= BLOCK - 3
        response = response[:, :, rows][:, :, :, cols]
    if response.shape[-2] * response.shape[-1] == 0:
        raise ValueError(f"the Laplacian energy needs images of at least 3x3 pixels, got {tuple(images.shape)}")
    return response.pow(2).flatten(1).mean(dim=1)


def texture_ratio(images: torch.Tensor, reference: torch.Tensor, inside_blocks: bool = True) -> torch.Tensor:
    """[N] Laplacian energy of images over that of reference (same shapes, [N, 3, H, W] or [3, H, W]
    in [0, 1]): 1 for the reference itself, < 1 for a blurred copy, > 1 for a noisy one.

    inside_blocks=True is "HF-in" of ../shared/peers/README.md, False is its "HF"."""
    return laplacian_energy(images, inside_blocks) / laplacian_energy(reference, inside_blocks)
