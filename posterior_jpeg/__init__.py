"""posterior-jpeg: sample sharp, diverse reconstructions of a JPEG, each exactly consistent with the file."""

from .errors import ImageTooLargeError, InvalidJpegError, PosteriorJpegError, UnsupportedJpegError
from .jpeg.file import JpegFile, read_jpeg
from .jpeg.projection import project
from .sampling import Sampler
from . import metrics

__all__ = [
    "ImageTooLargeError",
    "InvalidJpegError",
    "JpegFile",
    "PosteriorJpegError",
    "UnsupportedJpegError",
    "metrics",
    "project",
    "read_jpeg",
    "Sampler",
]
__version__ = "0.1.0"
