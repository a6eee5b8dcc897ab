"""Training data: random crops of clean images, compressed on the fly by real libjpeg (Pillow).

Every sample is a pure function of (seed, global sample counter): the counter, not an image index,
addresses the data. Training resumes exactly by starting the counter where it stopped
(step * batch_size * world_size), and ranks or workers never need shared random state.
"""

import io
import operator
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import PosteriorJpegError
from .jpeg.file import read_jpeg

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The subsampling modes Pillow's JPEG writer accepts.
WRITABLE_MODES = ("4:4:4", "4:2:2", "4:2:0")
# A multiple of the largest MCU (16x16 in 4:2:0): every mode's block grids cover the crop exactly.
CROP_MULTIPLE = 16
# Exceptions Pillow raises for files it cannot open or decode.
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(PosteriorJpegError):
    """The training data cannot be used: missing folder, no images, or no readable image."""


class ImageError(PosteriorJpegError):
    """An image file that cannot be read (or, in evaluation, is too small to be measured)."""


def list_images(root) -> list[pathlib.Path]:
    """All images under root (recursive), sorted so that every process sees the same list."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


@dataclass(frozen=True)
class QualitySampler:
    """The JPEG quality distribution of training.

    "skewed": q = round(low + (high - low) * u**power), u ~ U[0, 1]: the paper's [5, 50] range with
    more weight on low qualities, where restoration is hardest. "uniform": integers in [low, high].
    """

    kind: str = "skewed"
    low: int = 5
    high: int = 50
    power: float = 2.0

    def __post_init__(self):
        if self.kind not in ("skewed", "uniform"):
            raise ValueError(f"quality distribution must be 'skewed' or 'uniform', got {self.kind!r}")
        if not 1 <= self.low <= self.high <= 100:
            raise ValueError(f"qualities need 1 <= low <= high <= 100, got low={self.low}, high={self.high}")
        if not self.power > 0:
            raise ValueError(f"quality skew power must be positive, got {self.power}")

    def sample(self, rng: np.random.Generator) -> int:
        if self.kind == "uniform":
            return int(rng.integers(self.low, self.high + 1))
        return round(self.low + (self.high - self.low) * rng.random() ** self.power)


def synthetic_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 [size, size, 3] natural-looking test content: a colour gradient, waves, sharp-edged
    shapes and multi-scale texture, so that smoke tests and CI train on something JPEG-like."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    image = rng.uniform(0, 255, 3) + (rng.uniform(0, 255, 3) - rng.uniform(0, 255, 3)) * ramp
    for _ in range(rng.integers(1, 4)):
        angle, cycles, phase = rng.uniform(0, np.pi), rng.uniform(1, 12), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * cycles * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        image = image + wave[..., None] * rng.uniform(-40, 40, 3)
    for _ in range(rng.integers(1, 5)):
        if rng.random() < 0.5:  # half-plane
            angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.5)
            mask = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5) > offset
        else:  # disk
            cy, cx, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.4)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image = np.where(mask[..., None], 0.3 * image + 0.7 * rng.uniform(0, 255, 3), image)
    for cells in (4, 16):  # smooth texture at two scales (bicubic, so no blocky grid)
        coarse = torch.from_numpy(rng.normal(0, 1, (1, 3, cells, cells)))
        texture = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        image = image + texture[0].permute(1, 2, 0).numpy() * rng.uniform(0, 25)
    image = image + rng.normal(0, rng.uniform(0, 12), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def read_rgb(path) -> Image.Image:
    """An image file as 8-bit RGB: the one loader of training, evaluation and reference images.

    16-bit grey (modes I, I;16*) is scaled to 8 bits, since Pillow's convert would clip it to white;
    Pillow itself reduces 16-bit colour to its top 8 bits. ImageError names the file otherwise."""
    try:
        with Image.open(path) as image:
            if image.mode == "I" or image.mode.startswith("I;16"):
                grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            return image.convert("RGB")
    except _UNREADABLE as error:
        raise ImageError(f"{path}: cannot read image ({error})") from None


class JpegCropDataset(torch.utils.data.Dataset):
    """Map-style dataset over global sample counters (any int >= 0), not over images.

    dataset[counter] draws, from np.random.default_rng([seed, counter]): quality, subsampling mode,
    flips, then an image and a crop position. The crop is JPEG-compressed in memory by Pillow
    (libjpeg) and returned with Pillow's decode y and the stored coefficients and tables.

    files=None: synthetic images (see synthetic_image). Images smaller than the crop are upscaled
    (bicubic, short side = crop, aspect kept) rather than reflect-padded: padding would put mirror
    seams into the training crops, upscaling only blurs. Unreadable files are skipped with one
    warning per file (per process: every DataLoader worker holds its own copy) and a replacement is
    drawn from the same rng, so the substitute is deterministic too. Flips are horizontal and
    vertical, each with probability 1/2; EXIF orientation is ignored (a rotated crop is as good a
    training sample).
    """

    def __init__(
        self,
        files: list[pathlib.Path] | None,
        crop: int = 128,
        qualities: QualitySampler = QualitySampler(),
        modes: tuple[str, ...] = ("4:2:0",),
        seed: int = 0,
        flips: bool = True,
    ):
        if files is not None and len(files) == 0:
            raise DataError("no training images given (pass files=None for synthetic data)")
        if crop <= 0 or crop % CROP_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {CROP_MULTIPLE}, got {crop}")
        modes = tuple(modes)
        if not modes or any(mode not in WRITABLE_MODES for mode in modes):
            raise ValueError(f"modes must be a non-empty selection of {WRITABLE_MODES}, got {modes}")
        self.files = None if files is None else [pathlib.Path(f) for f in files]
        self.crop = crop
        self.qualities = qualities
        self.modes = modes
        self.seed = seed
        self.flips = flips
        self._unreadable: set[pathlib.Path] = set()

    def __getitem__(self, counter) -> dict:
        counter = operator.index(counter)
        if counter < 0:
            raise IndexError(f"sample counters start at 0, got {counter}")
        rng = np.random.default_rng([self.seed, counter])
        quality = self.qualities.sample(rng)
        mode = self.modes[rng.integers(len(self.modes))]
        flip_h, flip_v = rng.random(2) < 0.5 if self.flips else (False, False)
        if self.files is None:
            crop = synthetic_image(rng, self.crop)
        else:
            crop = self._random_crop(self._pick_image(rng), rng)
        if flip_h:
            crop = crop[:, ::-1]
        if flip_v:
            crop = crop[::-1]
        crop = np.ascontiguousarray(crop)

        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, format="JPEG", quality=quality, subsampling=mode)
        data = buffer.getvalue()
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        jpeg = read_jpeg(data)
        return {
            "x": _to_chw_float(crop),
            "y": _to_chw_float(decoded),
            "qtables": torch.from_numpy(jpeg.qtables.astype(np.float32)),
            "quality": quality,
            "mode": mode,
            "coefficients": [torch.from_numpy(c.astype(np.float32)) for c in jpeg.coefficients],
        }

    def _pick_image(self, rng: np.random.Generator) -> Image.Image:
        """A readable image: a random draw, else the first readable one of a random permutation."""
        first = int(rng.integers(len(self.files)))
        image = self._open(self.files[first])
        if image is not None:
            return image
        for index in rng.permutation(len(self.files)):
            image = None if index == first else self._open(self.files[index])
            if image is not None:
                return image
        raise DataError(f"none of the {len(self.files)} training images could be read")

    def _open(self, path: pathlib.Path) -> Image.Image | None:
        if path in self._unreadable:
            return None
        try:
            return read_rgb(path)
        except ImageError as error:
            self._unreadable.add(path)
            warnings.warn(f"{error}; skipping this training image")
            return None

    def _random_crop(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        width, height = image.size
        if min(width, height) < self.crop:
            scale = self.crop / min(width, height)
            size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
            width, height = size
        top = int(rng.integers(height - self.crop + 1))
        left = int(rng.integers(width - self.crop + 1))
        return np.asarray(image.crop((left, top, left + self.crop, top + self.crop)))


def _to_chw_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0


class CounterSampler(torch.utils.data.Sampler):
    """Yields counters start + rank, start + rank + world_size, ... (infinite when length is None).

    With batch size b per rank, step k of all ranks together covers the counters that one process
    with batch size b * world_size sees at step k, so results do not depend on the process count."""

    def __init__(self, start: int, rank: int = 0, world_size: int = 1, length: int | None = None):
        if start < 0:
            raise ValueError(f"start counter must be >= 0, got {start}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if length is not None and length < 0:
            raise ValueError(f"length must be >= 0 or None, got {length}")
        self.start, self.rank, self.world_size, self.length = start, rank, world_size, length

    def __iter__(self):
        counter = self.start + self.rank
        produced = 0
        while self.length is None or produced < self.length:
            yield counter
            counter += self.world_size
            produced += 1

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an infinite CounterSampler has no length")
        return self.length


def collate_jpeg_batch(items: list[dict]) -> dict:
    """Stack a batch; coefficients are stacked per subsampling mode, because the chroma block grids
    differ between modes (the consistency losses run once per mode group)."""
    modes = [item["mode"] for item in items]
    groups = {}
    for index, mode in enumerate(modes):
        groups.setdefault(mode, []).append(index)
    return {
        "x": torch.stack([item["x"] for item in items]),
        "y": torch.stack([item["y"] for item in items]),
        "qtables": torch.stack([item["qtables"] for item in items]),
        "quality": torch.tensor([item["quality"] for item in items], dtype=torch.long),
        "modes": modes,
        "groups": {mode: torch.tensor(indices, dtype=torch.long) for mode, indices in groups.items()},
        "coefficients": {
            mode: [torch.stack([items[i]["coefficients"][c] for i in indices]) for c in range(3)]
            for mode, indices in groups.items()
        },
    }


def make_loader(
    files: list[pathlib.Path] | None,
    crop: int,
    qualities: QualitySampler,
    modes: tuple[str, ...],
    seed: int,
    batch_size: int,
    start_counter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    length: int | None = None,
    flips: bool = True,
) -> torch.utils.data.DataLoader:
    """Batches for one rank from counter start_counter on (length: counters for this rank, None =
    endless). Randomness comes from the counters, so workers need no seeding and any worker count
    gives the same batches."""
    dataset = JpegCropDataset(files, crop=crop, qualities=qualities, modes=modes, seed=seed, flips=flips)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=CounterSampler(start_counter, rank=rank, world_size=world_size, length=length),
        num_workers=workers,
        collate_fn=collate_jpeg_batch,
        pin_memory=False,
        drop_last=False,
        persistent_workers=workers > 0,
        # its own generator: a DataLoader draws a base seed per iterator, which must not advance the
        # global RNG (the generator's noise), or a resumed run would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
