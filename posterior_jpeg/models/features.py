"""Frozen VGG19 conv5_4 features for the perceptual loss (paper eq. 6).

Weights come the normal way, never from the network: torchvision's ImageNet file in torch's hub
cache, or an explicit state-dict file. Without them we stop with `MissingWeightsError`, which says
where to put them. `weights="random"` builds the same network with random weights (tests use it).
"""

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG19_Weights

from ..errors import MissingWeightsError, PosteriorJpegError

# VGG19 ("configuration E"): conv widths, "M" = 2x2 max-pool. Laid out as torchvision's
# `vgg19().features`, so its state dict keys ("features.N.weight") load unchanged.
VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
CONV5_4 = 34  # index of conv5_4 in that layout; we stop before its ReLU, as ESRGAN does
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG19_URL = VGG19_Weights.IMAGENET1K_V1.url


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """The one loader of pretrained weight files: a state dict from .safetensors or a torch file
    (tensors only: nothing is unpickled)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def vgg19_cache_path() -> Path:
    """Where torchvision keeps the VGG19 ImageNet weights: <torch.hub.get_dir()>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG19_URL)


def _vgg19_layers() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for spec in VGG19_LAYERS:
        if spec == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, spec, 3, padding=1), nn.ReLU()]
            channels = spec
    return nn.Sequential(*layers[: CONV5_4 + 1])


def load_vgg19_state(weights: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The convolutional part of a VGG19 state dict, keyed as `_vgg19_layers()` expects.

    weights: None for torch's hub cache, else a path to a .safetensors or a torch state-dict file
    (torchvision's full `vgg19` state dict or just its `features`)."""
    path = vgg19_cache_path() if weights is None else Path(weights)
    if not path.is_file():
        raise MissingWeightsError(
            f"VGG19 ImageNet weights for the perceptual loss not found at {path}. Supply them in one of two "
            f"ways: (1) put torchvision's {os.path.basename(VGG19_URL)} (from {VGG19_URL}) at {vgg19_cache_path()}"
            " (torch's hub cache: set TORCH_HOME to move it; running torchvision.models.vgg19(weights="
            "'IMAGENET1K_V1') once on a machine with internet fills it); or (2) pass an explicit path to a "
            ".pth state dict or .safetensors file as the weights option (VGGFeatures(weights=PATH)). "
            "Nothing is downloaded."
        )
    state = read_state_file(path)
    if any(key.startswith("features.") for key in state):
        state = {key.removeprefix("features."): v for key, v in state.items() if key.startswith("features.")}
    return state


class VGGFeatures(nn.Module):
    """images [N, 3, H, W] RGB in [0, 1] -> VGG19 conv5_4 features (before ReLU), [N, 512, H/16, W/16].

    Frozen: no parameter takes gradients, but gradients flow to the input. Inputs are normalised
    with ImageNet's mean and std, as the weights were trained."""

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        self.layers = _vgg19_layers()
        if weights != "random":
            source = vgg19_cache_path() if weights is None else weights
            try:
                self.layers.load_state_dict(load_vgg19_state(weights))
            except RuntimeError as error:
                raise PosteriorJpegError(f"{source} does not hold VGG19 weights: {error}") from error
        self.layers.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers((images - self.mean) / self.std)
