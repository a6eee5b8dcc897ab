"""Writing decoded images in the format a user asks for: 8- or 16-bit PNG, WebP or JPEG, with the
input's metadata kept (EXIF with its orientation reset, ICC) or stripped.

Only the PNGs keep what the projection made: a lossy re-export (WebP, JPEG) changes the pixels, so
the written file is no longer consistent with the input JPEG."""

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .options import DEFAULT_QUALITY, FORMATS, SampleOptions
from .atomic import write_atomically
from .pixels import to_hwc_uint8

LOSSY = ("webp", "jpeg")
SUFFIXES = {"png": ".png", "png16": ".png", "webp": ".webp", "jpeg": ".jpg"}
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ExportSettings:
    """How decoded images are written: format (FORMATS), quality (lossy formats only), metadata
    ("keep" or "strip")."""

    format: str = "png"
    quality: int | None = None
    metadata: str = "keep"

    def __post_init__(self):
        if self.format not in FORMATS or self.metadata not in ("keep", "strip"):
            raise ValueError(f"format must be one of {', '.join(FORMATS)} and metadata keep or strip")
        if self.quality is not None and self.format not in LOSSY:
            raise ValueError(f"--quality applies to {' and '.join(LOSSY)} only, not to --format {self.format}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be 1-100, got {self.quality}")

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]

    def written_consistency(self, coefficient_agreement: float, float_level=None) -> str:
        """What the written file keeps of the input (measured): "none" for a lossy format; for 8-bit
        PNGs "8-bit" when their pixels re-encode to every coefficient of the input; for 16-bit PNGs
        of a projected output "float" when the values they hold lie inside every quantization
        interval (`float_level`, a metrics.FloatConsistency); else "partial"."""
        if self.format in LOSSY:
            return "none"
        if self.format == "png16" and float_level is not None:
            return "float" if float_level.violating_coefficients == 0 else "partial"
        return "8-bit" if coefficient_agreement == 1.0 else "partial"


def settings_from(options: SampleOptions) -> ExportSettings:
    """The sample command's options as ExportSettings; ValueError says which combination is invalid."""
    return ExportSettings(options.format, options.quality, options.metadata)


def encode_png(array: np.ndarray, icc_profile: bytes | None) -> bytes:
    """uint8 [H, W, 3] (RGB) or [H, W, 1] (grayscale: mode L) -> the bytes of a PNG."""
    buffer = io.BytesIO()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image.save(buffer, format="PNG", icc_profile=icc_profile)
    return buffer.getvalue()


def write_png(array: np.ndarray, path: Path, icc_profile: bytes | None) -> None:
    """Write uint8 [H, W, 3] or [H, W, 1] as a PNG, atomically (see `write_atomically`)."""
    write_atomically(path, encode_png(array, icc_profile))


@dataclass(frozen=True)
class Metadata:
    """What may travel from the input to its outputs: ICC profile and EXIF bytes (Pillow's
    'Exif\\0\\0'-prefixed form), either None when absent or stripped."""

    icc_profile: bytes | None = None
    exif: bytes | None = None


def input_metadata(path: Path, icc_profile: bytes | None, settings: ExportSettings) -> Metadata:
    """The metadata to embed in outputs of the JPEG at `path`: its EXIF with orientation 1 (outputs
    are written upright), and `icc_profile` (the profile read_jpeg found); nothing with "strip".
    EXIF that Pillow cannot parse is left out rather than copied blindly."""
    if settings.metadata == "strip":
        return Metadata()
    try:
        with Image.open(path) as image:
            exif = image.getexif()
    except (OSError, SyntaxError, ValueError):
        exif = None
    if not exif:
        return Metadata(icc_profile, None)
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    return Metadata(icc_profile, exif.tobytes())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16_bytes(pixels: np.ndarray, metadata: Metadata) -> bytes:
    """uint16 [H, W, 3] or [H, W, 1] -> a 16-bit RGB or grayscale PNG (Pillow has no 16-bit RGB
    mode to write it with).

    Every row uses the 'Sub' filter (each byte minus the byte one pixel to the left), which
    compresses photos several times better than none."""
    height, width, channels = pixels.shape
    step = 2 * channels  # bytes per pixel
    raw = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(height, width * step)
    sub = raw.copy()
    sub[:, step:] = raw[:, step:] - raw[:, :-step]  # uint8 wraps modulo 256, as PNG's filters do
    rows = np.concatenate([np.ones((height, 1), np.uint8), sub], axis=1)
    colour_type = 2 if channels == 3 else 0
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))]
    if metadata.icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC profile\0\0" + zlib.compress(metadata.icc_profile)))
    if metadata.exif:
        chunks.append(_png_chunk(b"eXIf", metadata.exif.removeprefix(b"Exif\0\0")))
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def encode(image: torch.Tensor, settings: ExportSettings, metadata: Metadata) -> bytes:
    """[C, H, W] in [0, 1] (as displayed; C = 3, or 1 for a grayscale file) -> the bytes of the
    file. png16 keeps the float values to 1/65535; every other format rounds to 8 bits first."""
    if settings.format == "png16":
        levels = (image.detach().float().clamp(0, 1) * 65535).round().to(torch.int32)
        return png16_bytes(levels.permute(1, 2, 0).cpu().numpy().astype(np.uint16), metadata)
    options = {"icc_profile": metadata.icc_profile}
    if metadata.exif:
        options["exif"] = metadata.exif
    if settings.format == "webp":
        options.update(format="WEBP", quality=settings.quality or DEFAULT_QUALITY, method=6)
    elif settings.format == "jpeg":
        options.update(format="JPEG", quality=settings.quality or DEFAULT_QUALITY, progressive=True, optimize=True)
    else:
        options.update(format="PNG")
    buffer = io.BytesIO()
    pixels = to_hwc_uint8(image)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, **options)
    return buffer.getvalue()
