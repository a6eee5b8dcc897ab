"""One exception hierarchy, so batch jobs can catch ours and let real bugs through."""

import errno
import warnings


def printable(text) -> str:
    """`text` with its control characters (ESC, newline, ...) written as \\x / \\u escapes, for a
    file name in a printed line: a name cannot move the cursor, recolour the terminal or forge a line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in str(text))


class PosteriorJpegError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidJpegError(PosteriorJpegError, ValueError):
    """The data is not a readable JPEG: not a JPEG at all, empty, truncated or corrupt."""


class UnsupportedJpegError(PosteriorJpegError, ValueError):
    """A valid JPEG of a kind we do not decode (CMYK, 12-bit, arithmetic, lossless, ...)."""


class ImageTooLargeError(InvalidJpegError):
    """The declared image size exceeds the pixel limit (a decompression-bomb guard)."""


class CheckpointError(PosteriorJpegError, ValueError):
    """A checkpoint or run folder that holds nothing usable: missing, unreadable or not fitting files."""


class RenamedWarning(FutureWarning):
    """An old spelling that still works (a config key or value, a model file key): the message names
    the new one. A FutureWarning, which Python shows to every user, since users typed it."""


def warn_renamed(where, old: str, new: str) -> None:
    """RenamedWarning: at `where` (a file, the command line), `old` is now written `new`."""
    warnings.warn(f"{where}: {old} is now {new} (the old spelling still works)", RenamedWarning, stacklevel=3)


class LibjpegWarning(UserWarning):
    """Something libjpeg printed about a file while coding it (it went on). str() names the file;
    `text` is libjpeg's own words, for reports that name the file themselves."""

    def __init__(self, source: str, text: str):
        super().__init__(f"{source}: {text}")
        self.source = source
        self.text = text


class ConfigError(PosteriorJpegError, ValueError):
    """A configuration that cannot be used, with the reason."""


class TrainingDiverged(PosteriorJpegError):
    """A loss or a weight became NaN or infinite: training stopped before writing another checkpoint."""


class TrainingStopped(PosteriorJpegError):
    """A stop signal (SIGTERM, SIGUSR1 or SIGINT) reached a process of the run: every process
    finished the same step and a checkpoint of it was written, so the same command resumes it.
    Commands exit with `exit_status`, sysexits.h's EX_TEMPFAIL ("try again later", on which mail
    servers requeue too): distinct from success, failure (1) and a config error (2), so a batch
    script can requeue on it alone (configs/slurm/train.sbatch)."""

    exit_status = 75


class DataError(PosteriorJpegError):
    """The training data cannot be used: missing folder, no images, or no readable image."""


class ImageError(PosteriorJpegError):
    """An image file that cannot be read (or, in evaluation, is too small to be measured)."""


class StatisticsError(PosteriorJpegError):
    """A file that does not hold usable FID statistics."""


class MissingWeightsError(PosteriorJpegError, FileNotFoundError):
    """Pretrained weights that a feature network needs are not on this machine."""


class FolderBusyError(PosteriorJpegError):
    """Another live process holds the folder's lock; the message names the folder and its pid."""


class SymlinkError(PosteriorJpegError, OSError):
    """A symbolic link (or a second hard link) where this tool creates or replaces a file or folder:
    writing through it would change a file outside the output folder, so it is refused."""

    def __init__(self, path):
        super().__init__(errno.ELOOP, "a link where this tool writes a file", str(path))

    def __str__(self) -> str:
        return (f"{self.filename}: is a symbolic or hard link; this tool does not write through links "
                "(remove it, or choose another output folder)")
