"""Training data: random crops of clean images, compressed on the fly by real libjpeg (Pillow).

Images come from a folder, from tar shards (shards.py, written by `posterior-jpeg pack`) or are
synthetic. Every sample is a pure function of (seed, global sample counter): the counter, not an
image index, addresses the data. Training resumes exactly by starting the counter where it stopped
(step * batch_size * world_size), and ranks or workers never need shared random state.

Items travel as uint8 (a quarter of float32 through worker IPC and to the device); `pixels.to_unit_float`
turns them into [0, 1] floats on the training side.
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

from .errors import DataError, ImageError
from .jpeg.file import read_jpeg
from .jpeg.tables import ijg_tables
from .shards import EpochOrder, Shards, is_shard_spec, open_shards

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# The subsampling modes Pillow's JPEG writer accepts.
WRITABLE_MODES = ("4:4:4", "4:2:2", "4:2:0")
# A multiple of the largest MCU (16x16 in 4:2:0): every mode's block grids cover the crop exactly.
CROP_MULTIPLE = 16
# A re-saved file's block grid is offset from the first save's by 0..7 pixels per axis.
MAX_SHIFT = 7
# Value of data.train that selects synthetic images (synthetic_image) instead of a folder.
SYNTHETIC = "synthetic"
# Shards whose images an epoch shuffles together (EpochOrder's window), by default.
SHARD_WINDOW = 4

# A training image is decoded whole (and cached per loading process); one with more pixels than this
# is skipped with its warning before it is decoded: 8192 x 8192 RGB is 192 MB, a 13376 x 13376 PNG
# would take 3.3 GB in every worker, and crops are at most 4096 pixels wide anyway.
MAX_TRAINING_PIXELS = 8192 * 8192
# Exceptions Pillow raises for files it cannot open or decode.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def list_images(root) -> list[pathlib.Path]:
    """All images under root (recursive), sorted so that every process sees the same list."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{root}: no images found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def open_images(spec: str) -> list[pathlib.Path] | Shards | None:
    """The images that data.train or data.val names: None for synthetic ones, the shards of a shard
    folder or pattern (shards.is_shard_spec), else the image folder's files."""
    if spec == SYNTHETIC:
        return None
    return open_shards(spec) if is_shard_spec(spec) else list_images(spec)


@dataclass(frozen=True)
class QualityDistribution:
    """The JPEG quality distribution of training.

    "skewed": q = round(low + (high - low) * u**power), u ~ U[0, 1]: the paper's [5, 50] range with
    more weight on low qualities, where restoration is hardest. "uniform": integers in [low, high].
    """

    kind: str = "skewed"  # "skewed" or "uniform"
    low: int = 5  # lowest quality drawn (1..100)
    high: int = 50  # highest quality drawn; real-world files reach 95 and more
    power: float = 2.0  # skew: > 1 favours low qualities, 1 is uniform over the reals, < 1 favours high

    def __post_init__(self):
        if self.kind not in ("skewed", "uniform"):
            raise ValueError(f"quality distribution must be 'skewed' or 'uniform', got {self.kind!r}")
        if not 1 <= self.low <= self.high <= 100:
            raise ValueError(f"qualities need 1 <= low <= high <= 100, got low={self.low}, high={self.high}")
        if not self.power > 0:
            raise ValueError(f"quality skew power must be positive, got {self.power}")

    def draw(self, rng: np.random.Generator) -> int:
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


def read_rgb(path, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """An image file (a path or a binary file object) as 8-bit RGB: the one loader of training,
    evaluation and reference images.

    16-bit grey (modes I, I;16*) is scaled to 8 bits, since Pillow's convert would clip it to white;
    Pillow itself reduces 16-bit colour to its top 8 bits. ImageError names the file (`name`, by
    default `path`) otherwise, and one whose header declares more than `max_pixels` pixels (read
    before anything is decoded)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageError(f"{name or path}: {width}x{height} pixels, more than the {max_pixels} a training image "
                                 "may have (it would be decoded whole); downscale it")
            if image.mode == "I" or image.mode.startswith("I;16"):
                grey = (np.asarray(image).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                return Image.fromarray(grey, "L").convert("RGB")
            return image.convert("RGB")
    except UNREADABLE as error:
        raise ImageError(f"{name or path}: cannot read image ({error})") from None


def read_image(images: list[pathlib.Path] | Shards, index: int, max_pixels: int | None = None) -> Image.Image:
    """Image `index` of a folder's files or of shards, as 8-bit RGB (read_rgb)."""
    if isinstance(images, Shards):
        name, data = images.read(index)
        return read_rgb(io.BytesIO(data), name=name, max_pixels=max_pixels)
    return read_rgb(images[index], max_pixels=max_pixels)


class JpegCropDataset(torch.utils.data.Dataset):
    """Map-style dataset over global sample counters (any int >= 0), not over images.

    dataset[counter] draws, from np.random.default_rng([seed, counter]): quality, subsampling mode,
    flips, whether the crop is saved twice (only when double_share > 0), then an image and a crop
    position. From a folder (`images` a list of files) the image is drawn at random too, with
    replacement; from shards (`images` a Shards) it is the counter's image in EpochOrder, which
    visits every image once per epoch and mixes the images of `shard_window` shards at a time.
    The crop is JPEG-compressed in memory by Pillow (libjpeg) and returned as uint8 x (the clean
    crop) and y (Pillow's decode), with the file's tables (libjpeg's IJG tables at the quality: the
    ones Pillow writes) and, when `coefficients` is set, the stored DCT coefficients (int16;
    parsing them costs more than the compression, and only the "dct" loss reads them).

    A crop saved twice is a re-saved file: a window MAX_SHIFT pixels larger is compressed at a
    first quality and mode (drawn like the final ones), decoded, shifted by 0..MAX_SHIFT pixels
    per axis and cropped, then compressed at the item's quality and mode; x is the clean window
    at the same shift, and y, tables and coefficients are those of the second file.

    images=None: synthetic images (see synthetic_image). Each source image is decoded once per
    process and kept as uint8 while the cache holds under cache_bytes (beyond it, images are
    decoded per crop; the items are the same either way). Images smaller than the crop are
    upscaled (bicubic, short side = crop, aspect kept) rather than reflect-padded: padding would
    put mirror seams into the training crops, upscaling only blurs. Unreadable files are skipped
    with one warning per file (per process: every DataLoader worker holds its own copy) and a
    replacement is drawn from the same rng, so the substitute is deterministic too. Flips are
    horizontal and vertical, each with probability 1/2; EXIF orientation is ignored (a rotated
    crop is as good a training sample).
    """

    def __init__(
        self,
        images: list[pathlib.Path] | Shards | None,
        crop: int = 128,
        qualities: QualityDistribution = QualityDistribution(),
        modes: tuple[str, ...] = ("4:2:0",),
        seed: int = 0,
        flips: bool = True,
        double_share: float = 0.0,
        coefficients: bool = False,
        cache_bytes: int = 2**30,
        shard_window: int = SHARD_WINDOW,
    ):
        if images is not None and len(images) == 0:
            raise DataError("no training images given (pass images=None for synthetic data)")
        if crop <= 0 or crop % CROP_MULTIPLE:
            raise ValueError(f"crop must be a positive multiple of {CROP_MULTIPLE}, got {crop}")
        modes = tuple(modes)
        if not modes or any(mode not in WRITABLE_MODES for mode in modes):
            raise ValueError(f"modes must be a non-empty selection of {WRITABLE_MODES}, got {modes}")
        if not 0.0 <= double_share <= 1.0:
            raise ValueError(f"double_share must be in [0, 1], got {double_share}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if not isinstance(images, Shards | None):
            images = [pathlib.Path(f) for f in images]
        self.images = images
        self.order = EpochOrder(images.counts, shard_window, seed) if isinstance(images, Shards) else None
        self.crop = crop
        self.qualities = qualities
        self.modes = modes
        self.seed = seed
        self.flips = flips
        self.double_share = double_share
        self.coefficients = coefficients
        self.cache_bytes = cache_bytes
        self._cache: dict[int, np.ndarray] = {}  # by image index
        self._cached_bytes = 0
        self._unreadable: set[int] = set()

    def __getitem__(self, counter) -> dict:
        counter = operator.index(counter)
        if counter < 0:
            raise IndexError(f"sample counters start at 0, got {counter}")
        rng = np.random.default_rng([self.seed, counter])
        quality = self.qualities.draw(rng)
        mode = self._draw_mode(rng)
        flip_h, flip_v = rng.random(2) < 0.5 if self.flips else (False, False)
        # drawn only when enabled, so that double_share = 0 keeps the draws (and items) of before
        twice = self.double_share > 0 and rng.random() < self.double_share
        size = self.crop + MAX_SHIFT if twice else self.crop
        if self.images is None:
            window = synthetic_image(rng, size)
        else:
            window = self._random_crop(self._pick_image(rng, counter), size, rng)
        if flip_h:
            window = window[:, ::-1]
        if flip_v:
            window = window[::-1]
        window = np.ascontiguousarray(window)
        if twice:
            first = libjpeg_decode(pillow_jpeg(window, self.qualities.draw(rng), self._draw_mode(rng)))
            top, left = rng.integers(MAX_SHIFT + 1, size=2)
            x = window[top : top + self.crop, left : left + self.crop]
            source = first[top : top + self.crop, left : left + self.crop]
        else:
            x = source = window
        data = pillow_jpeg(source, quality, mode)
        item = {
            "x": _to_chw_uint8(x),
            "y": _to_chw_uint8(libjpeg_decode(data)),
            "qtables": jpeg_tables(quality),
            "quality": quality,
            "mode": mode,
        }
        if self.coefficients:
            item["coefficients"] = [torch.from_numpy(c) for c in read_jpeg(data).coefficients]
        return item

    def _draw_mode(self, rng: np.random.Generator) -> str:
        return self.modes[rng.integers(len(self.modes))]

    def _pick_image(self, rng: np.random.Generator, counter: int) -> np.ndarray:
        """A readable image: the counter's (shards) or a random draw (folder), else the first readable
        one of a random permutation."""
        first = self.order(counter) if self.order is not None else int(rng.integers(len(self.images)))
        image = self._image(first)
        if image is not None:
            return image
        for index in rng.permutation(len(self.images)):
            image = None if index == first else self._image(int(index))
            if image is not None:
                return image
        raise DataError(f"none of the {len(self.images)} training images could be read")

    def _image(self, index: int) -> np.ndarray | None:
        """uint8 [H, W, 3] of image `index`, decoded once while the cache has room; None if unreadable."""
        image = self._cache.get(index)
        if image is None:
            opened = self._open(index)
            if opened is None:
                return None
            image = np.asarray(opened)
            if self._cached_bytes + image.nbytes <= self.cache_bytes:
                self._cache[index] = image
                self._cached_bytes += image.nbytes
        return image

    def _open(self, index: int) -> Image.Image | None:
        if index in self._unreadable:
            return None
        try:
            return read_image(self.images, index, MAX_TRAINING_PIXELS)
        except ImageError as error:
            self._unreadable.add(index)
            warnings.warn(f"{error}; skipping this training image")
            return None

    def _random_crop(self, image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """A size x size window at a random position; a smaller image is upscaled to short side = size."""
        height, width = image.shape[:2]
        if min(width, height) < size:
            scale = size / min(width, height)
            shape = (max(size, round(width * scale)), max(size, round(height * scale)))
            image = np.asarray(Image.fromarray(image).resize(shape, Image.Resampling.BICUBIC))
            height, width = image.shape[:2]
        top = int(rng.integers(height - size + 1))
        left = int(rng.integers(width - size + 1))
        return image[top : top + size, left : left + size]


def jpeg_tables(quality: int) -> torch.Tensor:
    """float32 [3, 8, 8] (Y, Cb, Cr): the tables libjpeg writes for `quality` (what Pillow's
    quality= sets), known without reading the file back."""
    luma, chroma = ijg_tables(quality)
    return torch.from_numpy(np.stack([luma, chroma, chroma]).astype(np.float32))


def pillow_jpeg(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    """The JPEG file libjpeg writes (through Pillow) of uint8 [H, W, 3] pixels: how training pairs,
    evaluation settings and calibration all make their files, so that they match."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def libjpeg_decode(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3]: libjpeg's own decode of a JPEG file (through Pillow), in stored orientation:
    the plain decode that training learns from and evaluation compares with."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def _to_chw_uint8(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class RankCounters(torch.utils.data.Sampler):
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
            raise TypeError("infinite RankCounters have no length")
        return self.length


def collate_jpeg_batch(items: list[dict]) -> dict:
    """Stack a batch; coefficients (when the items have them) are stacked per subsampling mode,
    because the chroma block grids differ between modes (the consistency losses run once per mode
    group)."""
    groups = {}
    for index, item in enumerate(items):
        groups.setdefault(item["mode"], []).append(index)
    batch = {
        "x": torch.stack([item["x"] for item in items]),
        "y": torch.stack([item["y"] for item in items]),
        "qtables": torch.stack([item["qtables"] for item in items]),
        "groups": {mode: torch.tensor(indices, dtype=torch.long) for mode, indices in groups.items()},
    }
    if "coefficients" in items[0]:
        batch["coefficients"] = {
            mode: [torch.stack([items[i]["coefficients"][c] for i in indices]) for c in range(3)]
            for mode, indices in groups.items()
        }
    return batch


def make_loader(
    images: list[pathlib.Path] | Shards | None,
    crop: int,
    qualities: QualityDistribution,
    modes: tuple[str, ...],
    seed: int,
    batch_size: int,
    start_counter: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    length: int | None = None,
    flips: bool = True,
    double_share: float = 0.0,
    coefficients: bool = False,
    cache_bytes: int = 2**30,
    pin_memory: bool = False,
    shard_window: int = SHARD_WINDOW,
) -> torch.utils.data.DataLoader:
    """Batches for one rank from counter start_counter on (length: counters for this rank, None =
    endless). Randomness comes from the counters, so workers need no seeding and any worker count
    gives the same batches. pin_memory: page-locked batches, for asynchronous copies to a CUDA device."""
    dataset = JpegCropDataset(images, crop=crop, qualities=qualities, modes=modes, seed=seed, flips=flips,
                              double_share=double_share, coefficients=coefficients, cache_bytes=cache_bytes,
                              shard_window=shard_window)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RankCounters(start_counter, rank=rank, world_size=world_size, length=length),
        num_workers=workers,
        collate_fn=collate_jpeg_batch,
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=workers > 0,
        # its own generator: a DataLoader draws a base seed per iterator, which must not advance the
        # global RNG (the generator's noise), or a resumed run would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(seed),
    )
