"""Atomic file writes and appends, and one writer per folder: readers (and interrupted or repeated
runs) never see a half-written file or record, and two runs never fill one folder at once.

POSIX only (flock, O_APPEND), like the rest of the project's tooling.
"""

import errno
import fcntl
import os
from pathlib import Path

from .errors import FolderBusyError

TEMPORARY_SUFFIX = ".tmp"


def _temporary_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}{TEMPORARY_SUFFIX}")


def write_atomically(path: str | os.PathLike, data: bytes, before_rename=None) -> None:
    """Write `data` under a hidden temporary name in the same folder, then rename it over `path`.

    The temporary name carries the process id, so processes writing the same file at once (two
    evaluation jobs filling one statistics cache) never rename each other's half-written files;
    the temporary is removed on any error or Ctrl-C (`remove_stale_temporaries` takes care of
    those a killed process leaves). `before_rename()` runs once the data is written and before it
    becomes visible (a manifest record appended there never describes a file that failed to write)."""
    path = Path(path)
    temporary = _temporary_name(path, os.getpid())
    try:
        temporary.write_bytes(data)
        if before_rename is not None:
            before_rename()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of `write_atomically` in `folder` whose process no longer runs (a run
    killed by SIGKILL or a power cut); those of live processes are left alone. Returns the removed."""
    removed = []
    for candidate in Path(folder).glob(f".*.*{TEMPORARY_SUFFIX}"):
        pid = candidate.name[: -len(TEMPORARY_SUFFIX)].rpartition(".")[2]
        if pid.isdigit() and int(pid) > 0 and not _alive(int(pid)) and candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append `line` and a newline to a file with a single O_APPEND write, so that a reader sees all
    of it or nothing of it. A failed or short write (a full disk) cuts the file back to where it
    was, so the next line never starts glued to a torn one. Only one process may append at a time
    (hold the folder's `FolderLock`): the cut assumes nobody else wrote in between."""
    data = line.rstrip("\n").encode() + b"\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(descriptor).st_size
        try:
            written = os.write(descriptor, data)
            if written != len(data):  # the disk filled up part-way
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        except BaseException:
            os.ftruncate(descriptor, size)
            raise
    finally:
        os.close(descriptor)


def read_lines(path: str | os.PathLike) -> tuple[list[str], int]:
    """The complete lines of an append-only file (none if it does not exist) and how many bytes of a
    torn last line (no newline: its writer died mid-write, or an older writer on a full disk) were
    cut off the file, so that the next append starts on a line of its own (hold the `FolderLock`)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        os.truncate(path, len(complete))
    return complete.decode(errors="replace").splitlines(), len(data) - len(complete)


class FolderLock:
    """One writer per folder: an exclusive flock on FOLDER/.posterior-jpeg.lock, which holds the
    owner's pid for the message a second run gets. The kernel drops a flock when its process dies,
    even by SIGKILL, so a lock file left behind by a dead process is simply taken over; the file is
    removed on release."""

    NAME = ".posterior-jpeg.lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.NAME
        self.descriptor = None

    def __enter__(self) -> "FolderLock":
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
                os.close(descriptor)
                raise FolderBusyError(
                    f"{self.path.parent}: another run (pid {owner}) is writing into this folder; wait for it "
                    "to end or choose another output folder"
                ) from None
            try:  # the file we locked must still be the one at the path (its owner may have just removed it)
                current = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self.descriptor = descriptor
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while still locked: a newcomer creates a fresh file
        os.close(self.descriptor)
        self.descriptor = None
