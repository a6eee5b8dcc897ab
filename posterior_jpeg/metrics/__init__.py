"""Measurements: consistency with a file (more metrics join here: FID, LPIPS, PSNR, diversity)."""

from .consistency import Agreement, coefficient_agreement, consistency_rmse, reencode

__all__ = ["Agreement", "coefficient_agreement", "consistency_rmse", "reencode"]
