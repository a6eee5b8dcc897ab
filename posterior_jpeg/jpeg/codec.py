"""Differentiable JPEG in torch: encode to quantized coefficients and decode back, batched.

The forward pass of `encode` is libjpeg's compressor (as Pillow configures it: JFIF colour
conversion, libjpeg's chroma averaging, the accurate integer DCT, round-half-away quantization),
bit for bit on 8-bit input; tests hold it to libjpeg's own output. Each rounding step passes its
gradient through unchanged (straight-through, as in the paper), and the gradient of the DCT is that
of the exact float transform.
"""

import torch

from . import subsampling
from .color import rgb_to_ycbcr, round_ycbcr_like_libjpeg, ycbcr_to_rgb
from .dct import BLOCK, blockify, dct_blocks, idct_blocks, islow_fdct, unblockify


def straight_through(value: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """`exact` in the forward pass, the gradient of `value` in the backward pass."""
    return value + (exact - value).detach()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero (libjpeg's quantizer) with gradient 1."""
    return straight_through(x, torch.sign(x) * torch.floor(x.abs() + 0.5))


def component_tables(qtables: torch.Tensor, batch: int, components: int) -> torch.Tensor:
    """Normalise tables to [N, components, 8, 8].

    Accepts [2, 8, 8] or [N, 2, 8, 8] (luma, chroma: chroma serves Cb and Cr), or one table per
    component ([C, 8, 8] or [N, C, 8, 8])."""
    if qtables.dim() == 3:
        qtables = qtables.unsqueeze(0)
    if qtables.dim() != 4 or qtables.shape[-2:] != (BLOCK, BLOCK):
        raise ValueError(f"quantization tables must be [N, T, 8, 8] or [T, 8, 8], got {tuple(qtables.shape)}")
    if qtables.shape[1] == 2 and components == 3:
        qtables = qtables[:, [0, 1, 1]]
    qtables = qtables[:, :components]
    if qtables.shape[1] != components:
        raise ValueError(f"need {components} quantization tables, got {qtables.shape[1]}")
    return qtables.expand(batch, -1, -1, -1)


def component_planes(images: torch.Tensor, mode: str, libjpeg_rounding: bool = True) -> list[torch.Tensor]:
    """[N, 3, H, W] RGB in [0, 1] -> the sample planes libjpeg would transform, one per component.
    For "gray", [N, 1, H, W] grayscale pixels are the Y plane itself (no colour conversion).

    With libjpeg_rounding the pixels are first rounded to the 8 bits libjpeg reads and the planes
    hold libjpeg's integers (straight-through gradients); without, they are the plain float colour
    conversion and chroma average."""
    rgb = images * 255.0
    if libjpeg_rounding:
        rgb = straight_through(rgb, rgb.detach().clamp(0.0, 255.0).round())
    if mode == subsampling.GRAY and images.shape[1] == 1:
        return [rgb[:, 0]]
    ycc = rgb_to_ycbcr(rgb)
    if libjpeg_rounding:
        ycc = straight_through(ycc, round_ycbcr_like_libjpeg(ycc))
    planes = []
    for c in range(subsampling.num_components(mode)):
        factors = subsampling.component_factors(mode, c)
        planes.append(subsampling.downsample(ycc[:, c], factors, libjpeg_rounding))
    return planes


def plane_blocks(plane: torch.Tensor) -> torch.Tensor:
    """Pad a sample plane to whole blocks (edges repeated) and cut it into [N, hb, wb, 8, 8] blocks."""
    hb, wb = subsampling.block_grid(plane.shape[1:])
    return blockify(subsampling.pad_replicate(plane, hb * BLOCK, wb * BLOCK))


def libjpeg_dct(blocks: torch.Tensor) -> torch.Tensor:
    """DCT of integer-valued sample blocks: libjpeg's integer result, the float DCT's gradient."""
    exact = islow_fdct(blocks.round().to(torch.int32) - 128).to(blocks.dtype) / 8
    if not blocks.requires_grad:
        return exact
    return straight_through(dct_blocks(blocks - 128.0), exact)


def encode(images: torch.Tensor, qtables: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """Compress [N, 3, H, W] RGB (or, for "gray", [N, 1, H, W] grayscale) in [0, 1] to quantized DCT
    coefficients, as libjpeg does.

    qtables: see `component_tables`. Returns one [N, hb, wb, 8, 8] tensor per component (Y, Cb, Cr;
    Y alone for "gray"), integer-valued, differentiable through straight-through rounding. For
    8-bit input (k / 255) the values equal libjpeg's, bit for bit."""
    planes = component_planes(images, mode)
    tables = component_tables(qtables.to(images), images.shape[0], len(planes))
    return [round_ste(libjpeg_dct(plane_blocks(plane)) / tables[:, c, None, None]) for c, plane in enumerate(planes)]


def decode(
    coefficients: list[torch.Tensor], qtables: torch.Tensor, mode: str, size: tuple[int, int]
) -> torch.Tensor:
    """Quantized coefficients -> [N, 3, H, W] RGB in [0, 1], size = (H, W).

    Dequantize, inverse DCT, clamp samples to 0..255, triangle-upsample chroma, convert to RGB."""
    height, width = size
    n = coefficients[0].shape[0]
    tables = component_tables(qtables.to(coefficients[0]), n, len(coefficients))
    planes = []
    for c, coefs in enumerate(coefficients):
        samples = idct_blocks(coefs * tables[:, c, None, None]) + 128.0
        factors = subsampling.component_factors(mode, c)
        ch, cw = subsampling.component_size(height, width, factors)
        plane = unblockify(samples.clamp(0.0, 255.0))[:, :ch, :cw]
        planes.append(subsampling.upsample(plane, factors, height, width))
    if mode == subsampling.GRAY:
        rgb = planes[0].unsqueeze(1).expand(-1, 3, -1, -1)
    else:
        rgb = ycbcr_to_rgb(torch.stack(planes, dim=1))
    return (rgb / 255.0).clamp(0.0, 1.0)


def roundtrip(images: torch.Tensor, qtables: torch.Tensor, mode: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encode then decode: (quantized coefficients, decoded images), both differentiable."""
    coefficients = encode(images, qtables, mode)
    return coefficients, decode(coefficients, qtables, mode, tuple(images.shape[-2:]))
