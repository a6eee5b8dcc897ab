"""Quantization tables: the base tables of ITU-T T.81 Annex K and the IJG quality scaling."""

import numpy as np

# Annex K, tables K.1 (luminance) and K.2 (chrominance), natural (row-major) order.
ANNEX_K_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.int64,
)
# K.2 is 99 outside its top-left 4x4 corner.
ANNEX_K_CHROMA = np.full((8, 8), 99, dtype=np.int64)
ANNEX_K_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def quality_scale(quality: int) -> int:
    """IJG's percentage scale factor for a quality in 1..100 (jcparam.c, jpeg_quality_scaling)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def scale_table(base: np.ndarray, quality: int, force_baseline: bool = True) -> np.ndarray:
    """Scale one base table as libjpeg does: (base * scale + 50) // 100, clipped to 1..255 (baseline)."""
    table = (base * quality_scale(quality) + 50) // 100
    return np.clip(table, 1, 255 if force_baseline else 32767).astype(np.int64)


def ijg_tables(quality: int, force_baseline: bool = True) -> np.ndarray:
    """The [2, 8, 8] (luma, chroma) tables that libjpeg (and Pillow's `quality=`) uses."""
    return np.stack(
        [scale_table(ANNEX_K_LUMA, quality, force_baseline), scale_table(ANNEX_K_CHROMA, quality, force_baseline)]
    )
