"""Shared test fixtures: synthetic natural-looking images and their JPEG encodings (no files in the repo)."""

import io

import jpeglib
import numpy as np
import pytest
from PIL import Image


def _natural_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3]: smooth gradients and a low-frequency wave, a sharp edge, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y /= max(height - 1, 1)
    x /= max(width - 1, 1)
    wave = np.sin(6.0 * x + 1.0 + rng.uniform(0, 3)) * np.cos(4.0 * y + rng.uniform(0, 3))
    edge = np.where(x + 0.5 * y > 0.6, 40.0, -40.0)
    planes = [
        120 + 80 * wave + 0.5 * edge,
        60 + 150 * (0.6 * x + 0.4 * y),
        200 - 120 * y + 30 * wave - 0.5 * edge,
    ]
    image = np.stack(planes, axis=-1) + rng.normal(0.0, 10.0, (height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def natural_rgb():
    """Factory natural_rgb(height, width, seed=0) -> uint8 RGB array [height, width, 3].

    Deterministic for a given seed; smooth enough to compress like a photo, textured enough that
    every DCT band carries some energy."""
    return _natural_rgb


@pytest.fixture(scope="session")
def pillow_jpeg():
    """Factory pillow_jpeg(array_or_image, **save_options) -> bytes of the JPEG Pillow writes.

    save_options go to Image.save (quality, subsampling, progressive, exif, icc_profile, ...);
    an array is wrapped with Image.fromarray first (uint8 [H, W, 3] -> RGB, [H, W] -> L)."""

    def encode(image, **save_options) -> bytes:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", **save_options)
        return buffer.getvalue()

    return encode


@pytest.fixture
def libjpeg_read(capfd):
    """Factory libjpeg_read(path) -> (coefficient planes, set of lines printed): what libjpeg itself
    makes of a file through jpeglib.read_dct (it prints to file descriptor 2, captured by capfd)."""

    def read(path) -> tuple[list[np.ndarray], set[str]]:
        capfd.readouterr()
        jpeg = jpeglib.read_dct(str(path))
        planes = [jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.has_chrominance else [])
        return planes, {line.strip() for line in capfd.readouterr().err.splitlines() if line.strip()}

    return read
