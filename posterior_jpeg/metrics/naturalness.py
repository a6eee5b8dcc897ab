"""A naturalness distance that needs no trained network: natural-scene statistics of patches.

Luma divided by its local contrast (MSCN coefficients: mean-subtracted, contrast-normalised with a
Gaussian window, as BRISQUE and NIQE use) has a characteristic distribution in natural photos,
and so do products of neighbouring coefficients; blur, noise and blocking each change them. Each
64-pixel patch gets a vector of such statistics at two scales, and the distance between two image
sets is the Frechet distance between Gaussian fits of their patch vectors (scaled by the
references' spread), as FID does with Inception features (0 for identical sets).
"""

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .gaussian import GaussianStats, frechet_distance
from .psnr import as_batch, luma

PATCH = 64
SCALES = 2  # full resolution, then 2x2-averaged
WINDOW_SIGMA = 7 / 6  # BRISQUE's Gaussian window (7x7)
WINDOW_RADIUS = 3
CONTRAST_FLOOR = 1.0  # gray levels added to the local std: flat areas give 0, not noise / 0
# Neighbour offsets (dy, dx) of the paired products: horizontal, vertical, two diagonals.
NEIGHBOURS = ((0, 1), (1, 0), (1, 1), (1, -1))
FEATURES_PER_SCALE = 3 + 3 * len(NEIGHBOURS)


def _gaussian_blur(planes: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] filtered by the normalised Gaussian window, separably, borders mirrored."""
    taps = torch.arange(-WINDOW_RADIUS, WINDOW_RADIUS + 1, dtype=planes.dtype, device=planes.device)
    kernel = torch.exp(-(taps**2) / (2 * WINDOW_SIGMA**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(planes, (WINDOW_RADIUS,) * 4, mode="reflect")
    return F.conv2d(F.conv2d(padded, kernel.view(1, 1, -1, 1)), kernel.view(1, 1, 1, -1))


def mscn(gray: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] luma in gray levels (0..255) -> its MSCN coefficients (y - mu) / (sigma + 1)."""
    mu = _gaussian_blur(gray)
    sigma = (_gaussian_blur(gray * gray) - mu * mu).clamp_min(0).sqrt()
    return (gray - mu) / (sigma + CONTRAST_FLOOR)


def _patch_statistics(coefficients: torch.Tensor, size: int) -> torch.Tensor:
    """MSCN coefficients [1, 1, H, W] -> [patches, FEATURES_PER_SCALE] over size x size tiles from the
    top-left corner (rows first).

    Per tile: log variance, log kurtosis and E|m| / sqrt(E m^2) (the statistic from which BRISQUE
    fits a generalised Gaussian's shape); per neighbour direction: the mean product of neighbours
    and the root mean square of its negative and of its positive part (the two sides of BRISQUE's
    asymmetric Gaussian fit)."""
    m = coefficients[0, 0]
    rows, cols = m.shape[0] // size, m.shape[1] // size
    m = m[: rows * size, : cols * size]

    def tiles(values: torch.Tensor) -> torch.Tensor:  # [rows * size, cols * size] -> [patches, size * size]
        return values.reshape(rows, size, cols, size).permute(0, 2, 1, 3).reshape(rows * cols, -1)

    flat = tiles(m)
    second = flat.pow(2).mean(dim=1)
    eps = 1e-6
    features = [
        torch.log(second + eps),
        torch.log(flat.pow(4).mean(dim=1) / (second.pow(2) + eps) + eps),
        flat.abs().mean(dim=1) / (second + eps).sqrt(),
    ]
    for dy, dx in NEIGHBOURS:
        # the product of m with its (dy, dx) neighbour, on the tile grid; the last row / column
        # (or first, for dx < 0) has no neighbour inside the image and is left at 0
        product = torch.zeros_like(m)
        height, width = m.shape
        left, right = max(0, -dx), width - max(0, dx)
        product[: height - dy, left:right] = m[: height - dy, left:right] * m[dy:, left + dx : right + dx]
        tiled = tiles(product)
        features += [
            tiled.mean(dim=1),
            tiled.clamp_max(0).pow(2).mean(dim=1).sqrt(),
            tiled.clamp_min(0).pow(2).mean(dim=1).sqrt(),
        ]
    return torch.stack(features, dim=1)


def nss_features(images: torch.Tensor) -> torch.Tensor:
    """[patches, SCALES * FEATURES_PER_SCALE] float64: one row per 64x64 tile of each image of
    images [N, 3, H, W] (or [3, H, W]) RGB in [0, 1]; an image smaller than a tile has none.

    Scale 2 is the same tile at half resolution (32x32 after 2x2 averaging)."""
    rows = []
    for image in as_batch(images):
        gray = luma(image[None].double()) * 255
        per_scale = []
        for scale in range(SCALES):
            per_scale.append(_patch_statistics(mscn(gray), PATCH >> scale))
            gray = F.avg_pool2d(gray, 2)
        rows.append(torch.cat(per_scale, dim=1))
    return torch.cat(rows).cpu()


def naturalness_distance(images: Iterable[torch.Tensor], references: Iterable[torch.Tensor]) -> float:
    """Frechet distance between Gaussian fits of the patch statistics of two image sets: 0 for the same
    set; larger the less the images' local statistics look like the references'.

    Each statistic is first divided by its standard deviation over the reference patches, so that
    each counts alike whatever its units (unscaled, the log variance would outweigh the rest a
    hundredfold). Each set is a batch [N, 3, H, W] or an iterable of images [3, H, W] (sizes may
    differ) in [0, 1], with at least two 64x64 patches in all."""
    features = []
    for name, images_of_set in (("images", images), ("references", references)):
        rows = torch.cat([nss_features(image) for image in images_of_set])
        if rows.shape[0] < 2:
            raise ValueError(f"the naturalness distance needs at least 2 patches of {PATCH}x{PATCH} in {name}, "
                             f"got {rows.shape[0]}")
        features.append(rows)
    scale = features[1].std(dim=0).clamp_min(1e-6)
    fits = [GaussianStats.from_features((rows / scale).numpy()) for rows in features]
    return frechet_distance(*fits)
