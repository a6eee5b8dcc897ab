"""FID: pytorch-fid's Inception-v3 pool3 features (2048-d) and the Frechet distance of their Gaussians.

The network is pytorch-fid's own `InceptionV3` (the TensorFlow FID port), so numbers are comparable
with the paper's, which used pytorch-fid. Its weights are never downloaded here: `pretrained` finds
them (an explicit file, the weights folder or torch's hub cache). `weights="random"` feeds seeded
random weights through the same loading code, for tests (such FIDs are NOT comparable to anything).

The Gaussian statistics and the distance live in `gaussian.py`.
"""

import hashlib
import json
import os
from pathlib import Path
from unittest import mock

import pytorch_fid.inception
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..atomic import file_digest
from ..errors import PosteriorJpegError
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


def statistics_key(root: Path, files: list[Path], feature_identity: str, settings: dict) -> str:
    """Cache key of reference statistics: the files (paths under root, contents), weights, settings."""
    digest = hashlib.sha256(json.dumps({"features": FEATURE_VERSION, "weights": feature_identity,
                                        "settings": settings}, sort_keys=True).encode())
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + file_digest(path).encode() + b"\0")
    return digest.hexdigest()[:24]
