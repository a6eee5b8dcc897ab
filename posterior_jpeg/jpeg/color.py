"""RGB <-> YCbCr of JFIF with libjpeg's own constants, so that rounding reproduces libjpeg exactly.

libjpeg (jccolor.c) converts with 16-bit fixed-point constants FIX(x) = round(x * 2^16). Using those
same constants in floating point gives exactly libjpeg's integers for 8-bit input (every product
and sum is a multiple of 2^-16 below 2^8, so float32 holds it exactly), while staying a smooth,
differentiable map for any other input.
"""

import functools

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


@functools.lru_cache(maxsize=None)
def _constant(name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The module's constants, built once per (dtype, device): loops that convert colours every pass
    must not rebuild or copy them."""
    values = {
        "rgb_to_ycc": _RGB_TO_YCC,
        "rgb_to_gray": _RGB_TO_YCC[:1],
        "ycc_to_rgb": _YCC_TO_RGB,
        "offset": torch.tensor(YCC_OFFSET, dtype=torch.float64).view(1, 3, 1, 1),
        "rounding": torch.tensor(_ROUNDING, dtype=torch.float64).view(1, 3, 1, 1),
    }[name]
    return values.to(dtype=dtype, device=device)


def _apply(name: str, images: torch.Tensor) -> torch.Tensor:
    """The matrix `name` (3x3, or 1x3 for gray) applied to the channels of [N, 3, H, W] (a batched matmul: the fastest
    form on CPU; exact for 8-bit input in any summation order, see above)."""
    matrix = _constant(name, images.dtype, images.device)
    return (matrix @ images.flatten(2)).reshape(images.shape[0], matrix.shape[0], *images.shape[2:])


def _offset(like: torch.Tensor, name: str = "offset") -> torch.Tensor:
    return _constant(name, like.dtype, like.device)


def ycc_offset(like: torch.Tensor) -> torch.Tensor:
    """YCC_OFFSET as [1, 3, 1, 1] in the dtype and on the device of `like` (cached, no copy per call)."""
    return _offset(like)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in 0..255 -> YCbCr in 0..255 (float, differentiable, not rounded)."""
    return _apply("rgb_to_ycc", rgb) + _offset(rgb)


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB -> [N, 1, H, W] luma Y on the same scale: libjpeg's own conversion of a
    colour image to grayscale (its weights sum to exactly 1, so gray RGB keeps its value)."""
    return _apply("rgb_to_gray", rgb)


def ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """Exact inverse of `rgb_to_ycbcr` (no clamping)."""
    return _apply("ycc_to_rgb", ycc - _offset(ycc))


def ycc_to_rgb_matrix(dtype=torch.float32, device=None) -> torch.Tensor:
    """The YCbCr -> RGB matrix [3, 3] (applied to YCbCr minus its offsets), cached per dtype and device."""
    return _constant("ycc_to_rgb", dtype, torch.device(device or "cpu"))


def round_ycbcr_like_libjpeg(ycc: torch.Tensor) -> torch.Tensor:
    """libjpeg's rounding of converted samples to integers (exact for 8-bit RGB input)."""
    return torch.floor(ycc + _offset(ycc, "rounding"))
