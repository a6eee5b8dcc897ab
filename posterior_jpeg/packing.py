"""Packing training images into tar shards and their index (the layout: shards.py), for
`posterior-jpeg pack`.

Packing copies each file's bytes unchanged (no re-encoding) after a header check, so it costs a
read and a write per image. Shards are filled in a deterministic order: the sorted folder or the
list's order, permuted by a seed unless asked not to, since a folder sorted by class would put one
class per shard and the reader mixes only a few shards at a time (shards.EpochOrder).
"""

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .atomic import Folder
from .data import IMAGE_EXTENSIONS, UNREADABLE
from .errors import DataError, printable
from .shards import INDEX_FORMAT, index_name, shard_name

_BLOCK = tarfile.BLOCKSIZE


def files_of_list(path: Path) -> list[Path]:
    """The files a text list names, one per line (blank lines skipped); relative names are taken
    from the list's own folder, so that the list can move with the images."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the list of files ({error})") from None
    files = [path.parent / line.strip() for line in lines if line.strip()]
    if not files:
        raise DataError(f"{path}: the list names no files")
    return files


def _member_bytes(size: int) -> int:
    """Bytes a member of `size` takes in a tar: its header and its data padded to whole blocks."""
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _image_bytes(path: Path) -> bytes:
    """The file's bytes if its name and header are an image's (DataError with the reason otherwise)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: not an image name (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        with Image.open(io.BytesIO(data)):  # the header only: decoding is left to training
            pass
    except UNREADABLE as error:
        raise DataError(f"{path}: not a readable image ({error})") from None
    return data


class _ShardWriter:
    """Fills one shard in memory and writes it atomically (temporary name, then rename) when full."""

    def __init__(self, folder: Folder, prefix: str, limit: int):
        self.folder, self.prefix, self.limit = folder, prefix, limit
        self.written: list[dict] = []  # {"name", "images"} of each shard written
        self._start()

    def _start(self) -> None:
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.USTAR_FORMAT)
        self.images, self.size = 0, 2 * _BLOCK  # the two zero blocks that end an archive

    def add(self, key: str, data: bytes) -> None:
        if self.images and self.size + _member_bytes(len(data)) > self.limit:
            self.flush()
        info = tarfile.TarInfo(key)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same files give the same bytes
        self.tar.addfile(info, io.BytesIO(data))
        self.images += 1
        self.size += _member_bytes(len(data))

    def flush(self) -> None:
        if not self.images:
            return
        self.tar.close()
        name = shard_name(self.prefix, len(self.written))
        self.folder.write(name, self.buffer.getbuffer())
        self.written.append({"name": name, "images": self.images})
        self._start()


def pack(files: list[Path], out: Path, prefix: str = "train", shard_bytes: int = 256 * 10**6,
         seed: int | None = 0, progress: bool = True) -> dict:
    """Pack `files` into OUT/PREFIX-000000.tar, ... of at most `shard_bytes` each (a larger image
    gets a shard of its own), then write OUT/PREFIX-index.json. `seed`: the permutation of `files`
    (None: their order). A file that is not a readable image is reported on stderr and skipped.
    Returns a summary (shards, images, skipped, index)."""
    if not files:
        raise DataError("no files to pack")
    with Folder(out, create=True) as folder:
        folder.remove_stale_temporaries()
        taken = sorted(name for name in os.listdir(folder.descriptor) if name.startswith(f"{prefix}-"))
        if taken:
            raise DataError(f"{out / taken[0]}: exists (an earlier or interrupted packing); remove {out / prefix}-* "
                            "or choose another output folder or --prefix")
        order = files if seed is None else [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        writer, packed, skipped = _ShardWriter(folder, prefix, shard_bytes), 0, 0
        with tqdm(order, unit="img", desc="pack", disable=not progress, file=sys.stderr) as bar:
            for path in bar:
                try:
                    data = _image_bytes(path)
                except DataError as error:
                    tqdm.write(f"pack: skipped {printable(error)}", file=sys.stderr)
                    skipped += 1
                    continue
                writer.add(f"{packed:08d}{path.suffix.lower()}", data)
                packed += 1
            writer.flush()
        if not packed:
            raise DataError(f"none of the {len(files)} files is a readable image; nothing packed")
        index = {"format": INDEX_FORMAT, "images": packed, "shards": writer.written}
        folder.write(index_name(prefix), (json.dumps(index, indent=1) + "\n").encode())
    return {"shards": len(writer.written), "images": packed, "skipped": skipped, "index": str(out / index_name(prefix))}
