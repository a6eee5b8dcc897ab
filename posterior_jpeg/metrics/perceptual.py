"""LPIPS (Zhang et al.) through the `lpips` package, with the backbone loaded offline.

`lpips.LPIPS(pretrained=True)` needs two things: its linear calibration layers, which ship inside
the lpips package (always present), and a torchvision ImageNet backbone, which torchvision would
download. We build the package's model with a random trunk (no download), keep its shipped linear
layers, and load the trunk from torchvision's file in torch's hub cache or an explicit file. Without
it: `MissingWeightsError`, saying how to supply it. `weights="random"` loads a seeded random trunk
through the same code, for tests (such LPIPS values are NOT comparable to anything).
"""

import itertools
import os
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, VGG16_Weights

from ..errors import MissingWeightsError, PosteriorJpegError
from ..models.features import read_state_file
from .fid import RANDOM, RANDOM_LABEL, random_state

# LPIPS backbone name -> (torchvision constructor, the ImageNet weights lpips uses)
BACKBONES = {
    "alex": (torchvision.models.alexnet, AlexNet_Weights.IMAGENET1K_V1.url),
    "vgg": (torchvision.models.vgg16, VGG16_Weights.IMAGENET1K_V1.url),
}


def backbone_cache_path(net: str) -> Path:
    """Where torchvision keeps the backbone's ImageNet weights: <torch.hub.get_dir()>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(BACKBONES[net][1])


def load_backbone_state(net: str, weights: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """The backbone's `features` state dict (keys "0.weight", ...): None for the hub cache, else a file
    holding torchvision's full state dict or just its `features`."""
    path = backbone_cache_path(net) if weights is None else Path(weights)
    if not path.is_file():
        url = BACKBONES[net][1]
        raise MissingWeightsError(
            f"LPIPS backbone ({net}) ImageNet weights not found at {path}. Supply them in one of two ways: "
            f"(1) put torchvision's {os.path.basename(url)} (from {url}) at {backbone_cache_path(net)} (torch's "
            f"hub cache: set TORCH_HOME to move it; running torchvision.models.{BACKBONES[net][0].__name__}"
            "(weights='IMAGENET1K_V1') once on a machine with internet fills it); or (2) pass an explicit path "
            "to that .pth (or a .safetensors copy) as features.lpips=PATH. LPIPS's own linear layers ship with "
            "the lpips package. Nothing is downloaded."
        )
    state = read_state_file(path)
    if any(key.startswith("features.") for key in state):
        state = {key.removeprefix("features."): v for key, v in state.items() if key.startswith("features.")}
    return state


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

    def __init__(self, weights: str | os.PathLike | None = None, net: str = "alex"):
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {', '.join(BACKBONES)}, got {net!r}")
        constructor = BACKBONES[net][0]
        if weights == RANDOM:
            trunk = random_state(constructor(weights=None).features)
        else:
            trunk = load_backbone_state(net, weights)
        import lpips  # here, not at the top: it pulls in SciPy's ndimage, which `import posterior_jpeg` should not pay for

        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=False`
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        # lpips splits torchvision's `features` into slices that keep the layer indices as names:
        # "slice2.3.weight" is features' "3.weight".
        source = backbone_cache_path(net) if weights is None else weights
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
