"""RGB <-> YCbCr of JFIF with libjpeg's own constants, so that rounding reproduces libjpeg exactly.

libjpeg (jccolor.c) converts with 16-bit fixed-point constants FIX(x) = round(x * 2^16). Using those
same constants in floating point gives exactly libjpeg's integers for 8-bit input (every product
and sum is a multiple of 2^-16 below 2^8, so float32 holds it exactly), while staying a smooth,
differentiable map for any other input.
"""

import torch

_SCALE = 1 << 16


def _fix(x: float) -> float:
    return int(x * _SCALE + 0.5) / _SCALE


# Rows give Y, Cb, Cr from R, G, B (Cb and Cr then offset by 128), as jccolor.c builds its tables.
_RGB_TO_YCC = torch.tensor(
    [
        [_fix(0.29900), _fix(0.58700), _fix(0.11400)],
        [-_fix(0.16874), -_fix(0.33126), _fix(0.50000)],
        [_fix(0.50000), -_fix(0.41869), -_fix(0.08131)],
    ],
    dtype=torch.float64,
)
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)
YCC_OFFSET = (0.0, 128.0, 128.0)
# libjpeg rounds Y half up and Cb, Cr with "0.5 - epsilon" (ONE_HALF - 1 in 16-bit fixed point).
_ROUNDING = (0.5, 0.5 - 1 / _SCALE, 0.5 - 1 / _SCALE)


def _apply(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(dtype=images.dtype, device=images.device), images)


def _offset(like: torch.Tensor, values) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in 0..255 -> YCbCr in 0..255 (float, differentiable, not rounded)."""
    return _apply(_RGB_TO_YCC, rgb) + _offset(rgb, YCC_OFFSET)


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB -> [N, 1, H, W] luma Y on the same scale: libjpeg's own conversion of a
    colour image to grayscale (its weights sum to exactly 1, so gray RGB keeps its value)."""
    return _apply(_RGB_TO_YCC[:1], rgb)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Exact inverse of `rgb_to_ycbcr` (no clamping)."""
    return _apply(_YCC_TO_RGB, ycc - _offset(ycc, YCC_OFFSET))


def ycc_to_rgb_rows() -> list[list[float]]:
    """The rows of the YCbCr -> RGB matrix (applied to YCbCr minus its offsets)."""
    return _YCC_TO_RGB.tolist()


def round_ycbcr_like_libjpeg(ycc: torch.Tensor) -> torch.Tensor:
    """libjpeg's rounding of converted samples to integers (exact for 8-bit RGB input)."""
    return torch.floor(ycc + _offset(ycc, _ROUNDING))
