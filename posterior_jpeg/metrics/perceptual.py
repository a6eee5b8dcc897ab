"""LPIPS (Zhang et al.) through the `lpips` package, with the backbone loaded offline.

`lpips.LPIPS(pretrained=True)` needs two things: its linear calibration layers, which ship inside
the lpips package (always present), and a torchvision ImageNet backbone, which torchvision would
download. We build the package's model with a random trunk (no download), keep its shipped linear
layers, and load the trunk through `pretrained` (an explicit file, the weights folder or torch's hub
cache). `weights="random"` loads a seeded random trunk through the same code, for tests (such LPIPS
values are NOT comparable to anything).
"""

import itertools
import os
import warnings

import torch
import torchvision
from torch import nn

from ..errors import PosteriorJpegError
from ..pretrained import load_state, random_state
from .fid import RANDOM, RANDOM_LABEL

# LPIPS backbone name -> (torchvision constructor, its ImageNet weights file in pretrained.FILES)
BACKBONES = {
    "alex": (torchvision.models.alexnet, "alexnet"),
    "vgg": (torchvision.models.vgg16, "vgg16"),
}


def smallest_side(layers) -> int:
    """The smallest image side, in pixels, that every conv and max-pool of `layers` (in order)
    leaves at least one pixel of."""

    def remaining(size: int) -> int:
        for layer in layers:
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                kernel, stride, padding = (v if isinstance(v, int) else v[0]
                                           for v in (layer.kernel_size, layer.stride, layer.padding))
                size = (size + 2 * padding - kernel) // stride + 1
                if size < 1:
                    return 0
        return size

    return next(size for size in itertools.count(1) if remaining(size) >= 1)


class LPIPS(nn.Module):
    """LPIPS distance [N] between images a and b, both [N, 3, H, W] RGB in [0, 1] (lower: more alike).

    min_size: the smallest height and width the backbone can take (31 for alex, 16 for vgg)."""

    def __init__(self, weights: str | os.PathLike | None = None, net: str = "alex",
                 folder: str | os.PathLike | None = None):
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, got {net!r}")
        constructor, name = BACKBONES[net]
        if weights == RANDOM:
            trunk, source = random_state(constructor(weights=None).features), RANDOM
        else:
            trunk, source = load_state(name, weights, folder, submodule="features")
        import lpips  # here, not at the top: it pulls in SciPy's ndimage, which `import posterior_jpeg` should not pay for

        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        # lpips splits torchvision's `features` into slices that keep the layer indices as names:
        # "slice2.3.weight" is features' "3.weight".
        try:
            self.model.net.load_state_dict({key: trunk[key.split(".", 1)[1]] for key in self.model.net.state_dict()})
        except (KeyError, RuntimeError) as error:
            raise PosteriorJpegError(f"{source} does not hold torchvision {net} ImageNet weights: "
                                     f"{str(error).splitlines()[0]}") from None
        self.model.requires_grad_(False).eval()
        self.backbone = net
        self.min_size = smallest_side(list(self.model.net.modules()))
        self.label = f"{RANDOM_LABEL}, lpips {net} v0.1" if weights == RANDOM else f"lpips {net} v0.1 ({source})"

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per backbone layer, the unit-normalised features [N, C, h, w] of images [N, 3, H, W] in
        [0, 1] (on the model's device): compute them once, compare them with `distance` many times."""
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"LPIPS ({self.backbone}) needs images of at least {self.min_size}x{self.min_size} "
                             f"pixels, got {images.shape[-1]}x{images.shape[-2]}")
        from lpips import normalize_tensor

        device = next(self.model.parameters()).device
        scaled = self.model.scaling_layer(2 * images.float().to(device) - 1)
        return [normalize_tensor(layer) for layer in self.model.net(scaled)]

    @torch.no_grad()
    def distance(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """LPIPS [N] between two sets of `features` (the lpips package's forward, layer by layer)."""
        total = 0
        for lin, first, second in zip(self.model.lins, a, b):
            total = total + lin((first - second) ** 2).mean([2, 3], keepdim=True)
        return total.flatten().cpu()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.features(a), self.features(b))
