"""Training images in tar shards (WebDataset layout), read by member number, and the order in which
sample counters visit them.

`posterior-jpeg pack` writes PREFIX-000000.tar, PREFIX-000001.tar, ... whose members are KEY.EXT (KEY:
the image's 8-digit number in packing order, EXT: its file's own suffix, bytes unchanged), and
PREFIX-index.json, which lists every shard with its image count: a reader knows the data set's size
and where image i lives without opening a shard.

Shards are read by member, not streamed: the first time a process touches a shard it reads the tar
headers (offsets and sizes), and an image is then one positioned read (os.pread) of its bytes. That
keeps the data counter-addressed (see EpochOrder), so resume stays exact and any worker count gives
the same batches, while a folder's costs (listing and sorting every file in every process, an open
per crop) are gone. It needs files that can be read at an offset (a local or network filesystem),
not a stream over HTTP.
"""

import json
import os
import re
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import DataError

INDEX_FORMAT = "posterior-jpeg shards 1"
INDEX_SUFFIX = "-index.json"
# Shards whose descriptor and member table a process keeps (least recently used ones are closed).
OPEN_SHARDS = 32
_PATTERN = re.compile(r"\{(\d+)\.\.(\d+)\}")
_SHARD_NAME = re.compile(r"(.+)-\d+\.tar")


def shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def index_name(prefix: str) -> str:
    return f"{prefix}{INDEX_SUFFIX}"


def is_shard_spec(spec: str) -> bool:
    """Whether data.train / data.val names shards: a .tar name or pattern, or a folder with an index."""
    if spec.endswith(".tar"):
        return True
    folder = Path(spec)
    return folder.is_dir() and any(folder.glob(f"*{INDEX_SUFFIX}"))


def pattern_error(spec: str) -> str | None:
    """Why `spec` (ending in .tar) is not a shard name or pattern DIR/PREFIX-{000000..000012}.tar, or None."""
    braces = _PATTERN.findall(spec)
    if spec.count("{") != len(braces) or spec.count("}") != len(braces) or len(braces) > 1:
        return "write one range of shard numbers, as in DIR/train-{000000..000012}.tar"
    if braces and int(braces[0][0]) > int(braces[0][1]):
        return f"the range {{{braces[0][0]}..{braces[0][1]}}} is empty"
    if _SHARD_NAME.fullmatch(Path(_PATTERN.sub(lambda m: m.group(1), spec)).name) is None:
        return "shards are named PREFIX-NUMBER.tar, as `posterior-jpeg pack` writes them"
    return None


def expand_pattern(spec: str) -> list[Path]:
    """DIR/train-{000000..000002}.tar -> DIR/train-000000.tar, ..-000001.tar, ..-000002.tar (the
    numbers keep the first bound's width); a name without braces is one shard."""
    problem = pattern_error(spec)
    if problem is not None:
        raise DataError(f"{spec}: {problem}")
    match = _PATTERN.search(spec)
    if match is None:
        return [Path(spec)]
    first, last = match.group(1), match.group(2)
    return [Path(f"{spec[:match.start()]}{number:0{len(first)}d}{spec[match.end():]}")
            for number in range(int(first), int(last) + 1)]


def read_index(path: Path) -> dict[str, int]:
    """Shard name -> image count, from an index written by `pack` (DataError naming the file otherwise)."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: shard index not found (shards are read with the index `posterior-jpeg pack` "
                        "writes beside them)") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the shard index ({error})") from None
    shards = index.get("shards") if isinstance(index, dict) and index.get("format") == INDEX_FORMAT else None
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and type(s.get("images")) is int and s["images"] > 0
            for s in shards):
        raise DataError(f"{path}: not a shard index written by `posterior-jpeg pack`")
    return {shard["name"]: shard["images"] for shard in shards}


def open_shards(spec: str) -> "Shards":
    """The shards that data.train / data.val names: a folder (every shard its index lists, and no
    other .tar file there) or a name pattern (those shards, each listed by the index beside it)."""
    if not spec.endswith(".tar"):
        folder = Path(spec)
        indexes = sorted(folder.glob(f"*{INDEX_SUFFIX}"))
        if len(indexes) != 1:
            raise DataError(f"{spec}: {len(indexes)} shard indexes here ({', '.join(p.name for p in indexes)}); "
                            "name one set with a pattern, as in DIR/PREFIX-{000000..000012}.tar")
        listed = read_index(indexes[0])
        strays = sorted({p.name for p in folder.glob("*.tar")} - listed.keys())
        if strays:
            raise DataError(f"{folder / strays[0]}: a .tar file that {indexes[0].name} does not list "
                            f"({len(strays)} in all; left over from another packing?)")
        paths, counts = [folder / name for name in listed], list(listed.values())
    else:
        paths, counts, indexes = expand_pattern(spec), [], {}
        for path in paths:
            index = path.parent / index_name(_SHARD_NAME.fullmatch(path.name).group(1))
            if index not in indexes:
                indexes[index] = read_index(index)
            listed = indexes[index]
            if path.name not in listed:
                raise DataError(f"{path}: not listed in {index}")
            counts.append(listed[path.name])
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: shard not found ({len(missing)} of {len(paths)} missing)")
    return Shards(paths, counts)


class Shards:
    """Images of tar shards numbered 0..len-1 in packing order (shard by shard, member by member).

    `read(i)` returns image i's bytes. Each process keeps OPEN_SHARDS shards open (descriptor and
    member table); pread shares no file position, so descriptors inherited by forked DataLoader
    workers stay correct, and pickling (spawned workers) drops them."""

    def __init__(self, paths: list[Path], counts: list[int]):
        self.paths = [Path(p) for p in paths]
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self._open: OrderedDict[int, tuple[int, list[tuple[str, int, int]]]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, member) of image `index`."""
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, index - int(self.starts[shard])

    def read(self, index: int) -> tuple[str, bytes]:
        """Image `index`: its name (shard path:member) and its file's bytes."""
        shard, member = self.locate(index)
        descriptor, members = self._shard(shard)
        name, offset, size = members[member]
        data = os.pread(descriptor, size, offset)
        if len(data) != size:
            raise DataError(f"{self.paths[shard]}: truncated at member {name}")
        return f"{self.paths[shard]}:{name}", data

    def _shard(self, shard: int) -> tuple[int, list[tuple[str, int, int]]]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.paths[shard]
        try:
            with tarfile.open(path, "r:") as tar:  # uncompressed: members are read at their offsets
                members = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
        except (OSError, tarfile.TarError) as error:
            raise DataError(f"{path}: cannot read the shard ({error})") from None
        if len(members) != self.counts[shard]:
            raise DataError(f"{path}: holds {len(members)} images, its index says {self.counts[shard]}; pack again")
        if len(self._open) >= OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1][0])
        self._open[shard] = (os.open(path, os.O_RDONLY | os.O_CLOEXEC), members)
        return self._open[shard]

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1][0])

    def __del__(self):
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}


class EpochOrder:
    """Image index of each sample counter over shards: a pure function of (seed, counter).

    Epoch e = counter // N (N images) visits every image once: the shards in an order drawn from
    (seed, e), taken `window` at a time, the images of each window in an order drawn from (seed, e,
    window). Counters go to ranks (RankCounters) and batches to DataLoader workers, so in every
    epoch each image goes to exactly one rank and worker, and a run resumed at a checkpoint's
    counter reads what the uninterrupted run would have. While a window is read, every process reads
    within those `window` shards: the larger it is, the more images mix in a batch."""

    def __init__(self, counts, window: int, seed: int):
        if window < 1:
            raise ValueError(f"window must be >= 1 shard, got {window}")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.window, self.seed = window, seed
        self._epoch = self._window = None

    def __call__(self, counter: int) -> int:
        epoch, position = divmod(counter, int(self.starts[-1]))
        if epoch != self._epoch:
            shards = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.counts))
            self._windows = [shards[i : i + self.window] for i in range(0, len(shards), self.window)]
            self._window_starts = np.cumsum([0] + [self.counts[w].sum() for w in self._windows])
            self._epoch, self._window = epoch, None
        window = int(np.searchsorted(self._window_starts, position, side="right")) - 1
        if window != self._window:
            images = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in self._windows[window]])
            self._images = np.random.default_rng([self.seed, epoch, 2, window]).permutation(images)
            self._window = window
        return int(self._images[position - self._window_starts[window]])
