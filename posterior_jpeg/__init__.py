"""posterior-jpeg: sample sharp, diverse reconstructions of a JPEG, each exactly consistent with the file.

The names below load on first use, so that importing the package (as every command does before it
parses its arguments) does not load torch."""

import importlib
import warnings

from .errors import ImageTooLargeError, InvalidJpegError, PosteriorJpegError, UnsupportedJpegError

_LAZY = {"JpegFile": ".jpeg.file", "read_jpeg": ".jpeg.file", "project": ".jpeg.projection",
         "PosteriorSampler": ".sampler", "metrics": ".metrics"}
_RENAMED = {"Sampler": "PosteriorSampler"}  # old name -> new: `sampler.Sampler` keeps the old spellings, with a DeprecationWarning

__all__ = [
    "ImageTooLargeError",
    "InvalidJpegError",
    "JpegFile",
    "PosteriorJpegError",
    "UnsupportedJpegError",
    "PosteriorSampler",
    "metrics",
    "project",
    "read_jpeg",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _RENAMED:
        warnings.warn(f"posterior_jpeg.{name} is now posterior_jpeg.{_RENAMED[name]}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(".sampler", __name__), name)
    if name not in _LAZY:
        raise AttributeError(f"module 'posterior_jpeg' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    return module if name == "metrics" else getattr(module, name)
