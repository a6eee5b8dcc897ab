"""Measurements: consistency with a file, FID, LPIPS, PSNR, blockiness, the diversity of posterior samples,
and yardsticks that need no downloaded weights (texture ratio, chroma, periodic peaks, naturalness)."""

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
from .fid import GaussianStats, InceptionFeatures, frechet_distance
from .naturalness import naturalness_distance, nss_features
from .perceptual import LPIPS
from .periodic import periodic_peaks
from .psnr import as_batch, luma, psnr, psnr_y
from .texture import laplacian_energy, texture_ratio

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
