"""Measurements: consistency with a file, FID, LPIPS, PSNR, blockiness and the diversity of posterior samples."""

from .blockiness import blockiness
from .consistency import Agreement, FloatConsistency, coefficient_agreement, consistency_rmse, float_consistency, reencode
from .diversity import mean_pairwise_lpips, per_pixel_std
from .fid import GaussianStats, InceptionFeatures, frechet_distance
from .perceptual import LPIPS
from .psnr import luma, psnr, psnr_y

__all__ = [
    "Agreement",
    "FloatConsistency",
    "GaussianStats",
    "InceptionFeatures",
    "LPIPS",
    "blockiness",
    "coefficient_agreement",
    "consistency_rmse",
    "float_consistency",
    "frechet_distance",
    "luma",
    "mean_pairwise_lpips",
    "per_pixel_std",
    "psnr",
    "psnr_y",
    "reencode",
]
