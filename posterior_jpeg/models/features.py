"""Frozen VGG19 conv5_4 features for the perceptual loss (paper eq. 6).

Weights come through `pretrained` (an explicit file, the weights folder or torch's hub cache), never
from the network. `weights="random"` builds the same network with random weights (tests use it).
"""

import os

import torch
from torch import nn

from ..errors import PosteriorJpegError
from ..pretrained import load_state

# VGG19 ("configuration E"): conv widths, "M" = 2x2 max-pool. Laid out as torchvision's
# `vgg19().features`, so its state dict keys ("features.N.weight") load unchanged.
VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
CONV5_4 = 34  # index of conv5_4 in that layout; we stop before its ReLU, as ESRGAN does
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class VGGFeatures(nn.Module):
    """images [N, 3, H, W] RGB in [0, 1] -> VGG19 conv5_4 features (before ReLU), [N, 512, H/16, W/16].

    Frozen: no parameter takes gradients, but gradients flow to the input. Inputs are normalised
    with ImageNet's mean and std, as the weights were trained."""

    def __init__(self, weights: str | os.PathLike | None = None, folder: str | os.PathLike | None = None):
        super().__init__()
        self.layers = _vgg19_layers()
        if weights != "random":
            state, source = load_state("vgg19", weights, folder, submodule="features")
            try:
                self.layers.load_state_dict(state)
            except RuntimeError as error:
                raise PosteriorJpegError(f"{source} does not hold VGG19 weights: {error}") from error
        self.layers.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers((images - self.mean) / self.std)
