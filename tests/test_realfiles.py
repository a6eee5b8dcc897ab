"""read_jpeg and decode on every file of ../shared/realfiles: JPEGs nobody here made (Pillow's and
libjpeg-turbo's test images, camera photos). Every file is accepted, or refused with one line of
our error hierarchy that names it; nothing else escapes; `-s` prints a table of outcomes. Files
above 2 megapixels run under `-m slow`; the default run keeps the others, among which are every
sampling mode, progressive files and each oddity of the set."""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jpeg_fuzz import REALFILES, split
from posterior_jpeg import PosteriorJpegError, read_jpeg

FILES = sorted(REALFILES.rglob("*.jpg")) if REALFILES.is_dir() else []
pytestmark = pytest.mark.skipif(
    not FILES, reason=f"no real files: {REALFILES} is absent (../shared beside the repo, or POSTERIOR_JPEG_REALFILES)"
)
# libjpeg reads these with "N extraneous bytes before marker"; they used to be refused.
WITH_STRAY_BYTES = ["jpeg_ff00_header.jpg", "junk_jpeg_header.jpg", "photoshop-200dpi-broken.jpg",
                    "truncated_app14.jpg"]
# Corrupt scan data: jpeglib's libjpeg 6b, 9f and turbo 2.1 all read our coefficients, Pillow's
# libjpeg-turbo resynchronises differently (some blocks 255 gray levels apart).
CORRUPT_SCAN_DATA = {"hopper_bad_exif.jpg"}


def pillow_rgb(path: Path) -> np.ndarray | None:
    """Pillow's (libjpeg-turbo's) decode as float RGB [H, W, 3], None when Pillow cannot decode it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's complaints about EXIF and MPO data
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"), dtype=np.float64)
        except (OSError, SyntaxError, ValueError):
            return None


def megapixels(path: Path) -> float:
    rgb = pillow_rgb(path)
    return 0.0 if rgb is None else rgb.shape[0] * rgb.shape[1] / 1e6


@dataclass
class Outcome:
    file: str
    outcome: str
    size: str = ""
    sampling: str = ""
    per_byte: str = ""  # declared pixels per byte of scan data (max_pixels_per_byte's measure)
    note: str = ""  # warnings or the reason of a refusal, and the distance to Pillow's decode
    problem: str = ""


def read_and_decode(path: Path) -> Outcome:
    name = str(path.relative_to(REALFILES))
    reference = pillow_rgb(path)
    pillow = "Pillow decodes it" if reference is not None else "Pillow refuses it too"
    try:
        jpeg = read_jpeg(path)
    except PosteriorJpegError as error:
        message = str(error)
        clear = "\n" not in message and message.startswith(f"{path}: ")
        return Outcome(name, "refused", note=f"{message[len(str(path)) + 2:]} ({pillow})",
                       problem="" if clear else f"unclear message: {message!r}")
    except Exception as error:  # a crash of our own: reported in the table, then failed
        return Outcome(name, "foreign error", problem=f"{type(error).__name__}: {error}")
    image = jpeg.decode()
    scan_bytes = sum(len(piece.scan_data) for piece in split(path.read_bytes()))
    outcome = Outcome(name, "accepted", f"{jpeg.width}x{jpeg.height}",
                      jpeg.sampling + (" progressive" if jpeg.progressive else ""),
                      f"{jpeg.width * jpeg.height / scan_bytes:.0f} px/B", "; ".join(jpeg.warnings))
    if image.shape != (3, *jpeg.size) or not bool(torch.isfinite(image).all()):
        outcome.problem = f"decode gave {tuple(image.shape)}"
    elif reference is not None:
        difference = np.abs(image.double().numpy().transpose(1, 2, 0) * 255.0 - reference)
        distance = f"{difference.mean():.2f}/{difference.max():.2f} gray levels from Pillow (mean/max)"
        outcome.note = "; ".join(filter(None, [distance, outcome.note]))
        # Measured on this set: mean at most 0.53, max at most 2.74 (float decode vs libjpeg's integers).
        if (difference.mean() > 1.0 or difference.max() > 4.0) and path.name not in CORRUPT_SCAN_DATA:
            outcome.problem = f"decode differs from Pillow's: {distance}"
    return outcome


def check(files: list[Path]) -> None:
    outcomes = [read_and_decode(path) for path in files]
    keys = ("file", "outcome", "size", "sampling", "per_byte")
    widths = [max(len(getattr(o, key)) for o in outcomes) for key in keys]
    print()
    for o in outcomes:
        cells = [getattr(o, key) for key in keys]
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + o.note)
    problems = [f"{o.file}: {o.problem}" for o in outcomes if o.problem]
    assert problems == []


def test_real_files():
    check([path for path in FILES if megapixels(path) <= 2.0])


@pytest.mark.slow
def test_large_real_files():
    check([path for path in FILES if megapixels(path) > 2.0])


@pytest.mark.parametrize("name", WITH_STRAY_BYTES)
def test_files_libjpeg_reads_with_a_warning_are_accepted(name, libjpeg_read):
    """Accepted with libjpeg's own warning, and with the very coefficients libjpeg reads."""
    path = REALFILES / "pillow" / name
    jpeg = read_jpeg(path)
    planes, messages = libjpeg_read(path)  # libjpeg (6b) on the whole original file
    assert set(jpeg.warnings) == messages != set()
    assert len(planes) == len(jpeg.coefficients)
    assert all(np.array_equal(a, b) for a, b in zip(jpeg.coefficients, planes))


def test_tiny_420_file_decodes_like_libjpeg():
    """app13.jpg (4x4, 4:2:0) decoded 61 gray levels away from Pillow's libjpeg (chroma upsampling)."""
    path = REALFILES / "pillow" / "app13.jpg"
    jpeg = read_jpeg(path)
    assert (jpeg.size, jpeg.sampling) == ((4, 4), "4:2:0")
    difference = np.abs(jpeg.decode().double().numpy().transpose(1, 2, 0) * 255.0 - pillow_rgb(path))
    assert difference.max() < 2.0  # measured 1.26
