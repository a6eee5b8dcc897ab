"""Atomic file writes: readers (and interrupted runs) never see a half-written file."""

import os
from pathlib import Path


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` under a hidden temporary name in the same folder, then rename it over `path`.

    The temporary name carries the process id, so processes writing the same file at once (two
    evaluation jobs filling one statistics cache) never rename each other's half-written files;
    the temporary is removed on any error or Ctrl-C."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
