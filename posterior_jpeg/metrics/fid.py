"""FID: pytorch-fid's Inception-v3 pool3 features (2048-d) and the Frechet distance of their Gaussians.

The network is pytorch-fid's own `InceptionV3` (the TensorFlow FID port), so numbers are comparable
with the paper's, which used pytorch-fid. Its weights are never downloaded here: `pretrained` finds
them (an explicit file, the weights folder or torch's hub cache). `weights="random"` feeds seeded
random weights through the same loading code, for tests (such FIDs are NOT comparable to anything).

The distance is computed from a square-root factor of each covariance (see `GaussianStats`), which
is exact and makes a repeated evaluation against a fixed reference cheap.
"""

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytorch_fid.inception
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..atomic import file_digest, write_atomically
from ..errors import PosteriorJpegError, StatisticsError
from ..pretrained import load_state, random_state
from ..pixels import round_to_8_bits

FEATURE_DIM = 2048
INPUT_SIZE = 299  # pytorch-fid resizes every input to 299x299 (bilinear) inside InceptionV3
RANDOM = "random"
RANDOM_LABEL = "random (NOT comparable)"
# Changes whenever the features of the same images would change (cached statistics depend on it).
FEATURE_VERSION = "pytorch-fid InceptionV3 pool3 2048-d, 8-bit RGB input, bilinear 299x299, v1"


def _random_inception_state() -> dict[str, torch.Tensor]:
    """Random weights with the FID Inception's keys and shapes: pytorch-fid's FID blocks subclass
    torchvision's with the same parameters, so torchvision's 1008-class Inception has them all."""
    twin = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    return random_state(twin)


class InceptionFeatures(nn.Module):
    """images [N, 3, H, W] RGB in [0, 1], any size -> pool3 features [N, 2048] (float64, CPU).

    Inputs are rounded to 8 bits first (what a saved image holds, and what the reference images
    read from files hold), then each image is resized to 299x299 exactly as pytorch-fid does, so
    images of different sizes can share a batch without changing their features."""

    def __init__(self, weights: str | os.PathLike | None = None, folder: str | os.PathLike | None = None):
        super().__init__()
        if weights == RANDOM:
            state, source = _random_inception_state(), RANDOM
        else:
            state, source = load_state("inception", weights, folder)
        # pytorch-fid builds its network and then fetches the weights by URL: hand it ours instead.
        with mock.patch.object(pytorch_fid.inception, "load_state_dict_from_url", lambda *_, **__: state):
            try:
                self.net = pytorch_fid.inception.InceptionV3([pytorch_fid.inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
            except RuntimeError as error:
                raise PosteriorJpegError(f"{source} does not hold pytorch-fid's FID Inception weights: "
                                         f"{str(error).splitlines()[0]}") from None
        self.net.eval()
        self.source = source
        self.label = RANDOM_LABEL if weights == RANDOM else f"pytorch-fid FID Inception ({source})"
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        """What the features depend on, for cache keys: the weights file's sha256, or the random seed."""
        if self._identity is None:
            self._identity = "random-he-seed0" if self.source == RANDOM else f"sha256:{file_digest(self.source)}"
        return self._identity

    @torch.no_grad()
    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        device = next(self.net.parameters()).device
        batch = []
        for image in images:
            image = round_to_8_bits(image).to(device)[None]
            if tuple(image.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):  # pytorch-fid's own resize, per image
                image = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
            batch.append(image)
        return self.net(torch.cat(batch))[0].flatten(1).double().cpu()


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


def statistics_key(root: Path, files: list[Path], feature_identity: str, settings: dict) -> str:
    """Cache key of reference statistics: the files (paths under root, contents), weights, settings."""
    digest = hashlib.sha256(json.dumps({"features": FEATURE_VERSION, "weights": feature_identity,
                                        "settings": settings}, sort_keys=True).encode())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_digest(path).encode() + b"\0")
    return digest.hexdigest()[:24]
