"""Hostile files against read_jpeg's default limits: time and peak memory of the worst cases the
limits still accept, and of the refusals, each in a fresh process, against Pillow's decode of the
same bytes.

    python bench/hostile_files.py [--megapixels 8]

Cases (JSON lines):
  scans_1000      a progressive file with 1000 scans: refused by max_scans (500)
  tiny_bomb       about 700 bytes declaring 13376x13376 pixels: refused by max_pixels_per_byte
  scans_500       the slowest accepted shape: a flat progressive image of N megapixels (gray, and
                  colour 4:4:4) with its last refinement scan repeated up to 500 scans
  per_byte_1024   scan data for a 128x128 image in a file declaring 1024 pixels per byte of it, N
                  megapixels (libjpeg decodes the missing data as zeros), gray and colour 4:4:4
Time and memory grow linearly with the pixels, so figures at N megapixels scale to the default
max_pixels (Pillow's 2 x 89.5 megapixels).
"""

import argparse
import io
import json
import math
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from common import emit

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """if True:
    import json, sys, time
    def peak_mb():  # VmHWM starts afresh at exec, unlike ru_maxrss, which keeps the parent's
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    if sys.argv[1] == "pillow":
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None
        base = peak_mb()
        began = time.perf_counter()
        try:
            Image.open(sys.argv[2]).load()
            outcome = "decoded"
        except Exception as error:
            outcome = type(error).__name__
        print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - began, "peak_mb": peak_mb() - base}))
    else:
        from posterior_jpeg import PosteriorJpegError, read_jpeg
        base = peak_mb()
        began = time.perf_counter()
        try:
            jpeg = read_jpeg(sys.argv[2])
        except PosteriorJpegError as error:
            print(json.dumps({"outcome": type(error).__name__, "seconds": time.perf_counter() - began,
                              "peak_mb": peak_mb() - base, "message": str(error)}))
            sys.exit()
        read = time.perf_counter() - began
        read_peak = peak_mb() - base
        jpeg.decode()
        print(json.dumps({"outcome": "accepted", "read_seconds": read, "read_peak_mb": read_peak,
                          "read_decode_seconds": time.perf_counter() - began, "read_decode_peak_mb": peak_mb() - base,
                          "warnings": list(jpeg.warnings)}))
"""


def measure(kind: str, path: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, kind, str(path)], capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""}, timeout=3600)
    if result.returncode:
        return {"outcome": f"exit status {result.returncode}", "stderr": result.stderr[-300:]}
    return json.loads(result.stdout)


def encode(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def with_scans(data: bytes, total: int) -> bytes:
    """Repeat the last scan of a progressive file of Pillow's until it has `total` scans."""
    count, last = data.count(b"\xff\xda"), data.rfind(b"\xff\xda")
    return data[:-2] + data[last:-2] * (total - count) + b"\xff\xd9"


def declared(data: bytes, height: int, width: int) -> bytes:
    """`data` (no metadata: SOF found by its marker) with the frame header declaring another size."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9 :]


def cases(megapixels: float) -> dict[str, bytes]:
    side = int(math.sqrt(megapixels * 1e6))
    rng = np.random.default_rng(0)
    found = {
        "scans_1000": with_scans(encode(Image.new("RGB", (1024, 1024), "gray"), quality=75, progressive=True), 1000),
        "tiny_bomb": declared(encode(Image.new("L", (16, 16), "gray"), quality=75), 13376, 13376),
    }
    for mode in ("L", "RGB"):
        name = "gray" if mode == "L" else "444"
        flat = encode(Image.new(mode, (side, side), "gray"), quality=75, progressive=True, subsampling="4:4:4")
        found[f"scans_500_{name}"] = with_scans(flat, 500)
        noise = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).convert(mode)
        small = encode(noise, quality=90, subsampling="4:4:4")
        sos = small.index(b"\xff\xda")
        scan_bytes = len(small) - 2 - (sos + 2 + int.from_bytes(small[sos + 2 : sos + 4], "big"))
        height = min(side, 1024 * scan_bytes // side)
        found[f"per_byte_1024_{name}"] = declared(small, height, side)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=8.0)
    args = parser.parse_args()
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bomb is on purpose
    with tempfile.TemporaryDirectory() as folder:
        for name, data in cases(args.megapixels).items():
            path = Path(folder) / f"{name}.jpg"
            path.write_bytes(data)
            with Image.open(path) as image:
                size = image.size
            emit(bench="hostile_files", case=name, file_bytes=len(data), scans=data.count(b"\xff\xda"),
                 megapixels=round(size[0] * size[1] / 1e6, 2), ours=measure("ours", path),
                 reference="Pillow decode", pillow=measure("pillow", path))


if __name__ == "__main__":
    main()
