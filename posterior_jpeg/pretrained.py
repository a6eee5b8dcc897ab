"""The one loader of pretrained feature-network weights (FID Inception, VGG19 for the perceptual loss,
LPIPS's ImageNet backbones) and the download that fills a folder with them for offline machines.

A file is looked for, in this order: the explicit path its option names; else the weights folder
(config `weights.dir`, else $POSTERIOR_JPEG_WEIGHTS); else torch's hub cache, where the libraries
themselves download it. Nothing is downloaded at load time: compute nodes of clusters are often
offline, so `python -m posterior_jpeg weights fetch DIR` fills a folder once on a machine with
internet. A file under its upstream name must match the hash upstream publishes in that name (a
partial download fails one line, not deep inside a network); a file under another name (a user's
.safetensors copy, a test's random network) is loaded as it is.
"""

import hashlib
import math
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import file_digest
from .errors import MissingWeightsError, PosteriorJpegError

ENVIRONMENT = "POSTERIOR_JPEG_WEIGHTS"
FETCH_COMMAND = "python -m posterior_jpeg weights fetch"


@dataclass(frozen=True)
class PretrainedFile:
    """One upstream weights file. `sha256_prefix` is the hash its URL embeds in the file name
    (torch.hub's convention: the first hex digits of the file's sha256)."""

    use: str  # what needs it, for messages
    option: str  # the config key that names an explicit file instead
    url: str
    sha256_prefix: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


# The URLs are those pytorch-fid and torchvision download from (tests check that they still are);
# the lpips package ships its linear layers and takes its backbone from torchvision.
FILES = {
    "inception": PretrainedFile(
        "FID Inception", "features.inception",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d"),
    "vgg19": PretrainedFile(
        "VGG19 (perceptual loss)", "loss.vgg_weights", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "dcbb9e9d"),
    "alexnet": PretrainedFile(
        "LPIPS alex backbone", "features.lpips", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be79"),
    "vgg16": PretrainedFile(
        "LPIPS vgg backbone", "features.lpips", "https://download.pytorch.org/models/vgg16-397923af.pth",
        "397923af"),
}


@dataclass
class WeightsConfig:
    """Where the pretrained feature networks' files are (training's VGG19, evaluation's Inception and LPIPS)."""

    dir: str | None = None  # folder filled by `python -m posterior_jpeg weights fetch DIR`; null: $POSTERIOR_JPEG_WEIGHTS, else torch's hub cache


def weights_folder(configured: str | os.PathLike | None) -> Path | None:
    """The weights folder: the configured one, else $POSTERIOR_JPEG_WEIGHTS, else None (hub cache)."""
    folder = configured or os.environ.get(ENVIRONMENT)
    return Path(folder).expanduser() if folder else None


def hub_path(name: str) -> Path:
    """Where torch.hub (and so torchvision and pytorch-fid) keeps the file: <hub dir>/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FILES[name].filename


def locate(name: str, explicit: str | os.PathLike | None = None, folder: str | os.PathLike | None = None) -> Path:
    """The path of weights file `name` (a key of FILES); MissingWeightsError, one line, if it is not there."""
    entry = FILES[name]
    search = weights_folder(folder)
    path = Path(explicit) if explicit else (search / entry.filename if search else hub_path(name))
    if not path.is_file():
        target = search or "DIR"
        raise MissingWeightsError(
            f"{entry.use} weights not found: {path}; fetch them with `{FETCH_COMMAND} {target}` on a machine "
            f"with internet, then set weights.dir={target} (or {ENVIRONMENT}), or name a file with {entry.option}=PATH")
    return path


def check_hash(name: str, path: Path) -> None:
    """A file under its upstream name must carry upstream's hash; one line if not."""
    entry = FILES[name]
    if path.name == entry.filename and not file_digest(path).startswith(entry.sha256_prefix):
        raise PosteriorJpegError(
            f"{path}: sha256 does not start with {entry.sha256_prefix}, the hash in the upstream file name (a partial "
            f"or different download); fetch it again with `{FETCH_COMMAND} {path.parent}`")


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (tensors only: nothing is unpickled)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state(name: str, explicit: str | os.PathLike | None = None, folder: str | os.PathLike | None = None,
               submodule: str | None = None) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of weights file `name`, found by `locate` and checked by `check_hash`, and its path.

    submodule: keep only that part of a full state dict, with its prefix stripped ("features":
    torchvision's `vgg19` file then loads into `vgg19().features`); a file holding just that part
    loads unchanged."""
    path = locate(name, explicit, folder)
    check_hash(name, path)
    state = read_state_file(path)
    prefix = f"{submodule}."
    if submodule and any(key.startswith(prefix) for key in state):
        state = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    return state, path


def random_state(module: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """`module`'s state dict after drawing every conv and linear weight N(0, 2 / fan_in) from `seed`
    (biases 0; norm layers keep their deterministic defaults). Changes `module`: pass a throwaway.

    Tests and demos feed it through the loading code instead of real weights. He initialisation
    keeps activations at a usable scale through a deep ReLU net (PyTorch's default init shrinks
    Inception's pool3 features to ~1e-8), and the fixed seed gives every process the same network."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight.normal_(0.0, math.sqrt(2.0 / layer.weight[0].numel()), generator=rng)
                if layer.bias is not None:
                    layer.bias.zero_()
    return module.state_dict()


def fetch(folder: str | os.PathLike, names=tuple(FILES)) -> list[tuple[Path, str]]:
    """Download each named file into `folder` (kept when already there with upstream's hash) and
    return (path, sha256) of each. A download goes to a hidden temporary first and gets its name only
    once its hash is right, so the folder never holds a partial file under a real name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name in names:
        entry, path = FILES[name], folder / FILES[name].filename
        digest = file_digest(path) if path.is_file() else ""
        if not digest.startswith(entry.sha256_prefix):
            digest = _download(entry, path)
        fetched.append((path, digest))
    return fetched


def _download(entry: PretrainedFile, path: Path) -> str:
    digest = hashlib.sha256()
    part = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)
    try:
        with part, urllib.request.urlopen(entry.url) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                part.write(chunk)
                digest.update(chunk)
        if not digest.hexdigest().startswith(entry.sha256_prefix):
            raise PosteriorJpegError(f"{entry.url}: the download's sha256 {digest.hexdigest()} does not start with "
                                     f"{entry.sha256_prefix}, the hash in its name; nothing was kept")
        os.replace(part.name, path)
    except OSError as error:
        raise PosteriorJpegError(f"{entry.url}: download failed ({getattr(error, 'reason', error)})") from None
    finally:
        if os.path.exists(part.name):
            os.unlink(part.name)
    return digest.hexdigest()
