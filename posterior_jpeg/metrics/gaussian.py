"""Gaussian statistics of a feature set and the Frechet distance between two: the arithmetic of FID,
shared with the naturalness yardstick, and free of the Inception network (and of torchvision, which
sampling never needs to import).

The distance is computed from a square-root factor of each covariance (see `GaussianStats`), which
is exact and makes a repeated evaluation against a fixed reference cheap.
"""

import io
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_atomically
from ..errors import StatisticsError


@dataclass
class GaussianStats:
    """Mean and covariance of a feature set, with a factor `root` [r, d] such that root.T @ root == sigma.

    The factor makes the Frechet distance's trace term exact and cheap: the eigenvalues of
    sigma_a @ sigma_b are the squared singular values of root_a @ root_b.T, so
    tr sqrt(sigma_a sigma_b) = sum of those singular values. From n <= d features the centred
    features / sqrt(n - 1) are a factor with only n rows; otherwise the symmetric square root (one
    eigendecomposition, done once for a cached reference)."""

    mu: np.ndarray
    sigma: np.ndarray
    root: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features) -> "GaussianStats":
        features = np.asarray(features, dtype=np.float64)
        count, dim = features.shape
        if count < 2:
            raise ValueError(f"FID needs at least 2 images, got {count}")
        mu = features.mean(axis=0)
        centred = (features - mu) / math.sqrt(count - 1)
        sigma = centred.T @ centred
        root = centred if count <= dim else _symmetric_sqrt(sigma)
        return cls(mu, sigma, root, count)

    @classmethod
    def from_moments(cls, mu, sigma, count: int = 0) -> "GaussianStats":
        sigma = np.asarray(sigma, dtype=np.float64)
        return cls(np.asarray(mu, dtype=np.float64), sigma, _symmetric_sqrt(sigma), count)

    def save(self, path: str | os.PathLike) -> None:
        """An .npz that pytorch-fid reads too (mu, sigma), written atomically."""
        path = Path(path)
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, root=self.root, count=self.count)
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianStats":
        """Ours, or pytorch-fid's `--save-stats` files (mu and sigma only). StatisticsError, naming
        the file, for anything else: not an .npz, no mu / sigma, shapes that do not fit, values
        that are not finite numbers (nothing is unpickled)."""
        try:
            with open(path, "rb") as handle:
                if handle.read(4) != b"PK\x03\x04":  # every .npz is a zip archive
                    raise ValueError("it does not start like a zip archive")
            with np.load(path, allow_pickle=False) as data:
                names = data.files
                arrays = {key: np.asarray(data[key], dtype=np.float64) for key in ("mu", "sigma", "root", "count")
                          if key in names}
        except (ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise StatisticsError(f"{path}: not an .npz file of FID statistics ({error})") from None
        except OSError as error:
            raise StatisticsError(f"{path}: cannot read FID statistics ({error.strerror or error})") from None
        if "mu" not in arrays or "sigma" not in arrays:
            raise StatisticsError(f"{path}: FID statistics need arrays mu and sigma, found {', '.join(names) or 'none'}")
        mu, sigma = arrays["mu"], arrays["sigma"]
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise StatisticsError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (need [d] and [d, d])")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise StatisticsError(f"{path}: mu or sigma holds values that are not finite")
        root, count = arrays.get("root"), arrays.get("count")
        if root is not None and count is not None and root.ndim == 2 and root.shape[1] == len(mu) and count.size == 1:
            return cls(mu, sigma, root, int(count))
        return cls.from_moments(mu, sigma)


def _symmetric_sqrt(sigma: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """|mu_a - mu_b|^2 + tr(sigma_a + sigma_b - 2 (sigma_a sigma_b)^(1/2)), the FID of two feature sets.

    Clipped at 0: the value is a squared distance, so a negative one is only rounding."""
    difference = a.mu - b.mu
    trace_sqrt = np.linalg.svd(a.root @ b.root.T, compute_uv=False).sum()
    value = difference @ difference + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt
    return float(max(value, 0.0))
