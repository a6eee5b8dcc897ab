"""Structure-aware fuzzing of read_jpeg: mutate the segments of real files, read them in a worker
process, and count what is not one of our errors.

The mutator splits a file into its segments (and each scan's entropy-coded data) and changes
lengths, counts, order, header fields and scan data; every case is a pure function of (seed, case
number), so any finding is reproduced with `--seed S --first N --cases 1`. The worker runs apart so
that a crash of libjpeg is counted (and the worker restarted) instead of ending the run; it also
reports whatever read_jpeg prints, its time per case and its peak memory.

    python tests/jpeg_fuzz.py --minutes 10             # the long campaign (README: JPEG core)
    python tests/jpeg_fuzz.py --cases 500 --save DIR   # keep failing inputs in DIR

Prints one JSON line of figures. tests/test_jpeg_fuzz.py runs a short seeded campaign in CI.
"""

import argparse
import collections
import dataclasses
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# ../shared/realfiles beside the repo (as in CI); POSTERIOR_JPEG_REALFILES points elsewhere (a worktree).
REALFILES = Path(os.environ.get("POSTERIOR_JPEG_REALFILES") or ROOT.parent / "shared" / "realfiles")

_APPN_OR_COM = [*range(0xE0, 0xF0), 0xFE]
_SOFS = (0xC0, 0xC1, 0xC2)
_SEGMENTS = set(range(0xC0, 0xFF)) - set(range(0xD0, 0xDA))  # markers with a length field


# ----------------------------------------------------------------------------- seed files


def synthetic_seeds() -> list[bytes]:
    """Small files of every kind we read (sequential, progressive, gray, 4:2:2, restarts, EXIF, ICC),
    made by Pillow, so that the fuzzer has material without ../shared."""
    from PIL import Image

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    kinds = [
        ("RGB", (17, 9), dict(quality=75)),
        ("RGB", (8, 8), dict(quality=90, progressive=True, subsampling="4:4:4")),
        ("L", (12, 11), dict(quality=60, progressive=True)),
        ("RGB", (20, 9), dict(quality=70, subsampling="4:2:2", exif=exif.tobytes(), icc_profile=b"icc" * 20)),
        ("RGB", (16, 16), dict(quality=50, restart_marker_blocks=1, optimize=True)),
    ]
    seeds = []
    for mode, (width, height), options in kinds:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", **options)
        seeds.append(buffer.getvalue())
    return seeds


def real_seeds(max_bytes: int | None = None) -> list[bytes]:
    """The files of ../shared/realfiles (all of them, readable or not), smallest first."""
    paths = sorted(REALFILES.rglob("*.jpg"), key=lambda p: (p.stat().st_size, p.name)) if REALFILES.is_dir() else []
    return [p.read_bytes() for p in paths if max_bytes is None or p.stat().st_size <= max_bytes]


# ----------------------------------------------------------------------------- the mutator


@dataclass
class Piece:
    """A marker segment (marker, payload, length field or None for the true one, scan data after
    an SOS), or raw bytes (marker None) that sit between segments or after EOI."""

    marker: int | None
    payload: bytes = b""
    length: int | None = None
    scan_data: bytes = b""

    def encode(self) -> bytes:
        if self.marker is None:
            return self.payload
        if self.marker == 0xD9 or 0xD0 <= self.marker <= 0xD7:
            return bytes([0xFF, self.marker])
        payload = self.payload[:65533]
        length = len(payload) + 2 if self.length is None else self.length
        return bytes([0xFF, self.marker]) + struct.pack(">H", length) + payload + self.scan_data


def split(data: bytes) -> list[Piece]:
    """The pieces after SOI of any data (lenient: what does not parse becomes raw bytes)."""
    pieces, pos = [], 2
    while pos < len(data):
        if data[pos] != 0xFF or pos + 1 >= len(data) or data[pos + 1] in (0x00, 0xFF):
            end = data.find(b"\xff", pos + 1)
            end = len(data) if end < 0 else end
            pieces.append(Piece(None, data[pos:end]))
            pos = end
            continue
        marker = data[pos + 1]
        if marker == 0xD9:
            pieces.append(Piece(marker))
            if pos + 2 < len(data):
                pieces.append(Piece(None, data[pos + 2 :]))
            break
        if 0xD0 <= marker <= 0xD7 or pos + 4 > len(data):
            pieces.append(Piece(marker) if pos + 4 <= len(data) else Piece(None, data[pos:]))
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        piece = Piece(marker, data[pos + 4 : end])
        if marker == 0xDA:
            scan_end = end
            while True:
                scan_end = data.find(b"\xff", scan_end)
                if scan_end < 0 or scan_end + 1 >= len(data):
                    scan_end = len(data)
                    break
                if data[scan_end + 1] == 0x00 or 0xD0 <= data[scan_end + 1] <= 0xD7:
                    scan_end += 2
                    continue
                break
            piece.scan_data = data[end:scan_end]
            end = scan_end
        pieces.append(piece)
        pos = max(end, pos + 4)
    return pieces


def join(pieces: list[Piece]) -> bytes:
    return b"\xff\xd8" + b"".join(piece.encode() for piece in pieces)


def _random_bytes(rng, low: int, high: int) -> bytes:
    return rng.integers(0, 256, int(rng.integers(low, high + 1)), dtype=np.uint8).tobytes()


def _pick(rng, pieces, markers=None):
    """Index of a random piece (with a marker in `markers` if given), or None."""
    choices = [i for i, p in enumerate(pieces) if markers is None or p.marker in markers]
    return int(rng.choice(choices)) if choices else None


def _metadata_segment(rng, empty: bool) -> Piece:
    return Piece(int(rng.choice(_APPN_OR_COM)), b"" if empty else _random_bytes(rng, 1, 40))


def _length(rng, pieces):
    i = _pick(rng, pieces, _SEGMENTS)
    if i is not None:
        true = len(pieces[i].payload) + 2
        near = true + int(rng.integers(-40, 40))
        lengths = [0, 1, 2, 3, true - 1, true + 1, near, 0xFFFF, int(rng.integers(0, 65536))]
        pieces[i].length = int(rng.choice(lengths)) % 0x10000


def _empty_metadata(rng, pieces):
    """The jpeglib heap overflow: an empty APPn/COM, then a non-empty one."""
    at = int(rng.integers(0, len(pieces) + 1))
    pieces[at:at] = [_metadata_segment(rng, True), _metadata_segment(rng, False)]


def _many_metadata(rng, pieces):
    at = int(rng.integers(0, len(pieces) + 1))
    count = int(rng.integers(1, 400))
    pieces[at:at] = [_metadata_segment(rng, bool(rng.random() < 0.2)) for _ in range(count)]


def _duplicate(rng, pieces):
    i = _pick(rng, pieces)
    if i is not None:
        pieces.insert(int(rng.integers(0, len(pieces) + 1)), dataclasses.replace(pieces[i]))


def _repeat_scan(rng, pieces):
    """Many copies of one scan (the scan limit's case), up to about 4 MB in all."""
    i = _pick(rng, pieces, {0xDA})
    if i is not None:
        count = min(int(rng.integers(1, 700)), 4_000_000 // len(pieces[i].encode()))
        pieces[i + 1 : i + 1] = [dataclasses.replace(pieces[i]) for _ in range(count)]


def _delete(rng, pieces):
    i = _pick(rng, pieces)
    if i is not None:
        del pieces[i]


def _move(rng, pieces):
    i = _pick(rng, pieces)
    if i is not None:
        piece = pieces.pop(i)
        pieces.insert(int(rng.integers(0, len(pieces) + 1)), piece)


def _resize_payload(rng, pieces):
    i = _pick(rng, pieces, _SEGMENTS)
    if i is not None:
        piece = pieces[i]
        if rng.random() < 0.5:
            piece.payload = piece.payload[: int(rng.integers(0, len(piece.payload) + 1))]
        else:
            piece.payload += _random_bytes(rng, 1, 64)


def _header_field(rng, pieces):
    """Overwrite a byte early in a frame, scan, table or restart header (where the fields are)."""
    i = _pick(rng, pieces, {*_SOFS, 0xC3, 0xC9, 0xDA, 0xDB, 0xC4, 0xDD})
    if i is not None and pieces[i].payload:
        payload = bytearray(pieces[i].payload)
        at = int(rng.integers(0, min(len(payload), 20)))
        payload[at] = int(rng.choice([0, 1, 2, 3, 4, 0x11, 0x22, 0x44, 0xFF, int(rng.integers(0, 256))]))
        pieces[i].payload = bytes(payload)


def _dimensions(rng, pieces):
    i = _pick(rng, pieces, set(_SOFS))
    if i is not None and len(pieces[i].payload) >= 5:
        sides = [0, 1, 2, 7, 9, 17, 255, 4096, 13376, 65535, int(rng.integers(1, 65536))]
        size = [int(rng.choice(sides)) for _ in "hw"]
        pieces[i].payload = pieces[i].payload[:1] + struct.pack(">HH", *size) + pieces[i].payload[5:]


def _scan_data(rng, pieces):
    i = _pick(rng, pieces, {0xDA})
    if i is None or not pieces[i].scan_data:
        return
    data = bytearray(pieces[i].scan_data)
    at = int(rng.integers(0, len(data)))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        data[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        del data[at:]
    elif kind == 2:
        data[at:at] = bytes([0xFF, int(rng.choice([0x00, 0xD0, 0xD3, 0xD9, 0xC4, 0xDB, int(rng.integers(0, 256))]))])
    else:
        data[at:at] = _random_bytes(rng, 1, 32)
    pieces[i].scan_data = bytes(data)


def _garbage(rng, pieces):
    """Stray bytes between segments (libjpeg skips them with a warning)."""
    junk = (b"\xff\x00", b"\x00\x02", b"")[int(rng.integers(0, 3))] + _random_bytes(rng, 1, 16)
    pieces.insert(int(rng.integers(0, len(pieces) + 1)), Piece(None, junk))


MUTATIONS = [_length, _empty_metadata, _many_metadata, _duplicate, _repeat_scan, _delete, _move,
             _resize_payload, _header_field, _dimensions, _scan_data, _garbage]


def mutate(data: bytes, rng) -> bytes:
    """1 to 4 structural mutations of `data`; sometimes the result is cut short as well."""
    pieces = split(data)
    for _ in range(int(rng.integers(1, 5))):
        MUTATIONS[int(rng.integers(0, len(MUTATIONS)))](rng, pieces)
    out = join(pieces)
    if rng.random() < 0.05:
        out = out[: int(rng.integers(0, len(out) + 1))]
    return out


def case_input(seeds: list[bytes], seed: int, case: int) -> bytes:
    rng = np.random.default_rng([seed, case])
    return mutate(seeds[int(rng.integers(0, len(seeds)))], rng)


# ----------------------------------------------------------------------------- the worker


def _read_exactly(stream, count: int) -> bytes:
    chunks = []
    while count:
        chunk = stream.read(count)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM starts afresh at exec, unlike ru_maxrss, which
    keeps the peak of the parent it was forked from."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024


def worker(max_pixels) -> None:
    """Read cases (4-byte length, data) from stdin, answer one JSON line each on the original stdout.
    File descriptors 1 and 2 both go to the log the parent gave as stderr, so that anything
    read_jpeg prints is counted (as bytes added to it) and cannot garble the answers."""
    from posterior_jpeg import PosteriorJpegError, read_jpeg
    from posterior_jpeg.jpeg import subsampling

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        try:
            data = _read_exactly(requests, struct.unpack(">I", _read_exactly(requests, 4))[0])
        except EOFError:
            return
        printed_before = os.fstat(2).st_size
        began = time.perf_counter()
        try:
            jpeg = read_jpeg(data, max_pixels=max_pixels)
            outcome = "accepted"
            factors = [subsampling.component_factors(jpeg.sampling, c) for c in range(len(jpeg.coefficients))]
            expected = [subsampling.block_grid(subsampling.component_size(*jpeg.size, f)) for f in factors]
            if [c.shape[:2] for c in jpeg.coefficients] != expected or jpeg.qtables.min() < 1:
                outcome = "foreign: accepted an inconsistent file"
        except PosteriorJpegError as error:
            outcome = type(error).__name__
        except Exception as error:  # the point of fuzzing: anything else is a finding
            outcome = f"foreign: {type(error).__name__}: {error}"
        seconds = time.perf_counter() - began
        sys.stdout.flush()
        answer = {
            "outcome": outcome,
            "seconds": seconds,
            "rss_mb": peak_rss_mb(),
            "printed": os.fstat(2).st_size - printed_before,
        }
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


class Worker:
    """A worker process that answers cases one at a time; restarted by the caller after a crash."""

    def __init__(self, max_pixels, log, temporary: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": temporary}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--max-pixels", str(max_pixels)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env)

    def run(self, data: bytes, timeout: float) -> dict:
        """The worker's answer, or {"outcome": "crash: exit status -N" | "timeout"} (the worker is then gone)."""
        self.process.stdin.write(struct.pack(">I", len(data)) + data)
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if line:
            return json.loads(line)
        if not ready:
            self.process.send_signal(signal.SIGKILL)
        code = self.process.wait()
        return {"outcome": "timeout" if not ready else f"crash: exit status {code}"}

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


# ----------------------------------------------------------------------------- the campaign


@dataclass
class Figures:
    cases: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    findings: list = field(default_factory=list)  # (case, outcome): crashes, timeouts, foreign, printing
    max_seconds: float = 0.0
    slowest_case: int = -1
    max_rss_mb: float = 0.0
    biggest_case: int = -1
    temporary_files_left: int = 0

    def as_dict(self) -> dict:
        kinds = collections.Counter(outcome.split(":")[0] for _, outcome in self.findings)
        return {
            "cases": self.cases,
            "crashes": kinds["crash"],
            "timeouts": kinds["timeout"],
            "foreign_exceptions": kinds["foreign"],
            "printed": kinds["printed"],
            "max_seconds_per_case": round(self.max_seconds, 3),
            "slowest_case": self.slowest_case,
            "max_peak_rss_mb": round(self.max_rss_mb, 1),
            "biggest_case": self.biggest_case,
            "temporary_files_left": self.temporary_files_left,
            "outcomes": dict(self.outcomes.most_common()),
            "findings": self.findings[:20],
        }


def campaign(seeds, seed=0, first=0, cases=None, minutes=None, max_pixels=1 << 24, timeout=60.0, save=None) -> Figures:
    """Run cases first, first + 1, ... until `cases` are done or `minutes` have passed."""
    figures = Figures()
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    # The worker's fd 1 and 2 (what read_jpeg prints) and its TMPDIR (what it leaves behind).
    with tempfile.TemporaryFile() as log, tempfile.TemporaryDirectory() as temporary:
        worker = Worker(max_pixels, log, temporary)
        case = first
        while (cases is None or figures.cases < cases) and (deadline is None or time.monotonic() < deadline):
            data = case_input(seeds, seed, case)
            answer = worker.run(data, timeout)
            figures.cases += 1
            outcome = answer["outcome"]
            figures.outcomes[outcome.split(":")[0]] += 1
            finding = outcome.startswith(("crash", "timeout", "foreign")) or answer.get("printed", 0)
            if finding:
                figures.findings.append((case, outcome if not answer.get("printed") else f"printed: {outcome}"))
                if save is not None:
                    Path(save).mkdir(parents=True, exist_ok=True)
                    (Path(save) / f"seed{seed}-case{case}.jpg").write_bytes(data)
            if outcome.startswith(("crash", "timeout")):
                worker = Worker(max_pixels, log, temporary)
            else:
                if answer["seconds"] > figures.max_seconds:
                    figures.max_seconds, figures.slowest_case = answer["seconds"], case
                if answer["rss_mb"] > figures.max_rss_mb:
                    figures.max_rss_mb, figures.biggest_case = answer["rss_mb"], case
            case += 1
        worker.close()
        # Files only: importing torch leaves an empty torchinductor_<user> folder there.
        figures.temporary_files_left = sum(len(files) for _, _, files in os.walk(temporary))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, help="run for this long (default: until --cases are done)")
    parser.add_argument("--cases", type=int, help="number of cases (default: 1000 without --minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0, help="first case number (to replay one case)")
    parser.add_argument("--max-pixels", default=str(1 << 24),
                        help="read_jpeg's max_pixels, or 'default' (other limits: defaults); the default 2^24 keeps "
                        "cases within about 1 GB, Pillow's limit allows 179 MP images and several GB")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as hung")
    parser.add_argument("--save", help="folder for the inputs of findings")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    max_pixels = args.max_pixels if args.max_pixels == "default" else int(args.max_pixels)
    if args.worker:
        worker(max_pixels)
        return
    cases = args.cases if args.cases or args.minutes else 1000
    seeds = real_seeds() + synthetic_seeds()
    began = time.monotonic()
    figures = campaign(seeds, args.seed, args.first, cases, args.minutes, max_pixels, args.timeout, args.save)
    result = {"seed_files": len(seeds), "seed": args.seed, "max_pixels": args.max_pixels,
              "minutes": round((time.monotonic() - began) / 60, 2), **figures.as_dict()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
