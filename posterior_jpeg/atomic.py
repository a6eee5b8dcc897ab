"""Atomic file writes and appends, and one writer per folder: readers (and interrupted or repeated
runs) never see a half-written file or record, and two runs never fill one folder at once.

Every file is named relative to a descriptor of its folder and opened with O_NOFOLLOW, so a link
planted inside an output folder (a shared folder, an unpacked archive of one) never leads a write
out of it. POSIX only (flock, O_APPEND, dir_fd), like the rest of the project's tooling.
"""

import errno
import hashlib
import fcntl
import os
import re
import secrets
import stat
from pathlib import Path

from .errors import FolderBusyError, SymlinkError

# Temporaries are named .posterior-jpeg-<pid>-<16 random hex digits>.tmp: a name no user file has by
# chance (so the clean-up never removes one) and that nobody can guess in advance to plant a link at.
_TEMPORARY = re.compile(r"\.posterior-jpeg-([1-9][0-9]*)-[0-9a-f]{16}\.tmp")


def _temporary_name() -> str:
    return f".posterior-jpeg-{os.getpid()}-{secrets.token_hex(8)}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class Folder:
    """A folder held open by a descriptor; files and sub-folders inside it are reached relative to
    that descriptor, never through a link. The folder's own path may be a symbolic link: the user
    chose it. Use as a context manager (or call `close`)."""

    def __init__(self, path: str | os.PathLike, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> "Folder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None

    def child(self, name: str) -> "Folder":
        """The sub-folder `name`, made if missing; SymlinkError if a link stands there."""
        try:
            os.mkdir(name, dir_fd=self.descriptor)
        except FileExistsError:
            pass
        folder = Folder.__new__(Folder)
        folder.path = self.path / name
        folder.descriptor = self._open(name, os.O_RDONLY | os.O_DIRECTORY)
        return folder

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry `name` itself (a link is not followed), or None if there is none."""
        try:
            return os.stat(name, dir_fd=self.descriptor, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def refuse_link(self, name: str) -> None:
        """SymlinkError if a symbolic link stands at `name`: a job checks the names it will write
        before it starts, so that a planted link stops it at once rather than hours later."""
        found = self.lstat(name)
        if found is not None and stat.S_ISLNK(found.st_mode):
            raise SymlinkError(self.path / name)

    def _open(self, name: str, flags: int, mode: int = 0o666) -> int:
        try:
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.descriptor)
        except OSError as error:
            found = self.lstat(name) if error.errno in (errno.ELOOP, errno.ENOTDIR) else None
            if found is not None and stat.S_ISLNK(found.st_mode):  # O_NOFOLLOW met a link
                raise SymlinkError(self.path / name) from None
            raise

    def _open_in_place(self, name: str, flags: int) -> int:
        """A file this tool changes in place (the lock, the manifest): neither a symbolic link nor a
        file with a second name elsewhere (a hard link), whose other name would change too."""
        descriptor = self._open(name, flags)
        if os.fstat(descriptor).st_nlink > 1:
            os.close(descriptor)
            raise SymlinkError(self.path / name)
        return descriptor

    def write(self, name: str, data: bytes, before_rename=None) -> None:
        """Write `data` under a fresh temporary name in this folder, then rename it over `name`.

        The temporary is created exclusively under an unpredictable name, so processes writing the
        same file at once (two evaluation jobs filling one statistics cache) never share one and no
        link can be waiting there; it is removed on any error or Ctrl-C (`remove_stale_temporaries`
        takes care of those a killed process leaves). A link at `name` is refused rather than
        replaced. `before_rename()` runs once the data is written and before it becomes visible (a
        manifest record appended there never describes a file that failed to write)."""
        self.refuse_link(name)
        temporary = _temporary_name()
        descriptor = self._open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
            finally:
                os.close(descriptor)
            if before_rename is not None:
                before_rename()
            os.replace(temporary, name, src_dir_fd=self.descriptor, dst_dir_fd=self.descriptor)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=self.descriptor)
            except FileNotFoundError:
                pass
            raise

    def remove_stale_temporaries(self) -> list[str]:
        """Delete the temporaries of `write` in this folder whose process no longer runs (a run
        killed by SIGKILL or a power cut); those of live processes, and every file whose name is not
        exactly a temporary's, are left alone. Returns the names removed."""
        removed = []
        for name in sorted(os.listdir(self.descriptor)):
            matched = _TEMPORARY.fullmatch(name)
            if matched is None or _alive(int(matched.group(1))):
                continue
            found = self.lstat(name)
            if found is not None and stat.S_ISREG(found.st_mode):
                os.unlink(name, dir_fd=self.descriptor)
                removed.append(name)
        return removed

    def append_line(self, name: str, line: str) -> None:
        """Append `line` and a newline to the file `name` with a single O_APPEND write, so that a
        reader sees all of it or nothing of it. A failed or short write (a full disk) cuts the file
        back to where it was, so the next line never starts glued to a torn one. Only one process
        may append at a time (hold the folder's `FolderLock`): the cut assumes nobody else wrote in
        between."""
        data = line.rstrip("\n").encode() + b"\n"
        descriptor = self._open_in_place(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(descriptor).st_size
            try:
                written = os.write(descriptor, data)
                if written != len(data):  # the disk filled up part-way
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / name))
            except BaseException:
                os.ftruncate(descriptor, size)
                raise
        finally:
            os.close(descriptor)

    def read_lines(self, name: str) -> tuple[list[str], int]:
        """The complete lines of the append-only file `name` (none if it does not exist) and how
        many bytes of a torn last line (no newline: its writer died mid-write, or an older writer on
        a full disk) were cut off the file, so that the next append starts on a line of its own
        (hold the `FolderLock`)."""
        try:
            descriptor = self._open_in_place(name, os.O_RDWR)
        except FileNotFoundError:
            return [], 0
        try:
            with os.fdopen(os.dup(descriptor), "rb") as file:
                data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) < len(data):
                os.ftruncate(descriptor, len(complete))
        finally:
            os.close(descriptor)
        return complete.decode(errors="replace").splitlines(), len(data) - len(complete)


def file_digest(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks: files of any size in constant memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: str | os.PathLike, data: bytes, before_rename=None) -> None:
    """`Folder.write` of `path`'s name in its folder (the folder's own path may hold links)."""
    path = Path(path)
    with Folder(path.parent) as folder:
        folder.write(path.name, data, before_rename)


class FolderLock:
    """One writer per folder: an exclusive flock on FOLDER/.posterior-jpeg.lock, which holds the
    owner's pid for the message a second run gets. The kernel drops a flock when its process dies,
    even by SIGKILL, so a lock file left behind by a dead process is simply taken over; the file is
    removed on release."""

    NAME = ".posterior-jpeg.lock"

    def __init__(self, folder: Folder):
        self.folder = folder
        self.descriptor = None

    def __enter__(self) -> "FolderLock":
        while True:
            descriptor = self.folder._open_in_place(self.NAME, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
                os.close(descriptor)
                raise FolderBusyError(
                    f"{self.folder.path}: another run (pid {owner}) is writing into this folder; wait for it "
                    "to end or choose another output folder"
                ) from None
            # the file we locked must still be the one at the name (its owner may have just removed it)
            found = self.folder.lstat(self.NAME)
            if found is not None and found.st_ino == os.fstat(descriptor).st_ino:
                break
            os.close(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self.descriptor = descriptor
        return self

    def __exit__(self, *exc) -> None:
        try:  # while still locked: a newcomer creates a fresh file
            os.unlink(self.NAME, dir_fd=self.folder.descriptor)
        except FileNotFoundError:
            pass
        os.close(self.descriptor)
        self.descriptor = None
