"""Measurements: consistency with a file, FID, LPIPS, PSNR, blockiness, the diversity of posterior samples,
and yardsticks that need no downloaded weights (texture ratio, chroma, periodic peaks, naturalness).

The Inception and LPIPS networks load on first use: they import torchvision (and pytorch-fid, lpips),
over a second of start-up that sampling, which never uses them, should not pay."""

import importlib

from .blockiness import blockiness
from .chroma import chroma_psnr, is_gray, rgb_luma_gap
from .consistency import (
    Agreement,
    EightBitConsistency,
    FloatConsistency,
    coefficient_agreement,
    consistency_rmse,
    eight_bit_consistency,
    float_consistency,
)
from .diversity import per_pixel_std
from .gaussian import GaussianStats, frechet_distance
from .naturalness import naturalness_distance, nss_features
from .periodic import periodic_peaks
from .psnr import as_batch, luma, psnr, psnr_y
from .texture import laplacian_energy, texture_ratio

_LAZY = {"InceptionFeatures": ".fid", "LPIPS": ".perceptual"}

__all__ = [
    "Agreement",
    "EightBitConsistency",
    "FloatConsistency",
    "GaussianStats",
    "InceptionFeatures",
    "LPIPS",
    "as_batch",
    "blockiness",
    "chroma_psnr",
    "coefficient_agreement",
    "consistency_rmse",
    "eight_bit_consistency",
    "float_consistency",
    "frechet_distance",
    "is_gray",
    "laplacian_energy",
    "luma",
    "naturalness_distance",
    "nss_features",
    "per_pixel_std",
    "periodic_peaks",
    "psnr",
    "psnr_y",
    "rgb_luma_gap",
    "texture_ratio",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'posterior_jpeg.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
