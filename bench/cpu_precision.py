"""The bundled model end to end on this CPU, fp32 (the reference) against the precision `auto`
picks here, in one process: where the time of M + K projected samples of a photo goes, and the ratio.

    python bench/cpu_precision.py [--files F.jpg ...] [--samples 4] [--threads N] [--repeats 2]

Files: by default a 1224 x 816 photo saved by Pillow at quality 30 (the figure issue 21 names) and the
9.3 MP camera file of ../shared/realfiles (tests__30-type_error.jpg), M + 1 sample for files above
4 MP. Phases, as `sample.py --posterior-mean -n K` runs them: decode (coefficients -> y), M (the posterior
mean, its flips in one batch; `mmse` and S's input), mmse_projection, S (per sample, its antithetic
pair in one batch), projection (per sample), check (the 8-bit libjpeg re-encode that every output's
manifest line measures). One JSON line per (file, precision), the fastest of --repeats, with
ratio = fp32's total / this total. Peak memory: the process's peak RSS after each precision
(monotone, so the second precision's figure is an upper bound of its own).
"""

import argparse
import io
import resource
import time
from pathlib import Path

import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.jpeg.projection import projection
from posterior_jpeg.metrics import eight_bit_consistency
from posterior_jpeg.pixels import round_to_8_bits
from posterior_jpeg.precision import choose_precision, cpu_bf16_units

from common import REAL_FILES, emit, photo

BIG = 4e6  # pixels above which a file gets one sample (the 12 MP target of issue 21 is M + 1 sample)


def default_files() -> list[tuple[str, bytes]]:
    buffer = io.BytesIO()
    Image.fromarray(photo(816, 1224)).save(buffer, "JPEG", quality=30)
    files = [("photo_1224x816_q30.jpg", buffer.getvalue())]
    camera = REAL_FILES / "cameras" / "tests__30-type_error.jpg"
    if camera.is_file():
        files.append((camera.name, camera.read_bytes()))
    return files


def phases(sampler: pj.PosteriorSampler, data: bytes, samples: int) -> dict:
    """Seconds of each phase of M + `samples` projected samples of one file."""
    times = {}

    def timed(name, function):
        start = time.perf_counter()
        result = function()
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        return result

    jf = timed("read", lambda: pj.read_jpeg(data))
    decoded = timed("decode", lambda: round_to_8_bits(jf.decode()))
    tables = jf.qtable_tensor("cpu")
    mean = timed("M", lambda: sampler.posterior_mean(decoded, tables))
    result = timed("mmse_projection", lambda: projection(mean.clamp(0, 1)[None], jf))
    timed("check", lambda: eight_bit_consistency(result.images[0], jf))
    for seed in range(samples):
        image = timed("S", lambda: sampler.generate(mean, tables, seed))
        result = timed("projection", lambda: projection(image, jf))
        timed("check", lambda: eight_bit_consistency(result.images[0], jf))
    times["total"] = sum(times.values())
    times["megapixels"] = jf.size[0] * jf.size[1] / 1e6
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=Path, nargs="*", help="JPEG files (default: see above)")
    parser.add_argument("--samples", type=int, default=4, help="samples per file up to 4 MP (one above)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per file and precision; the fastest counts")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    files = [(p.name, p.read_bytes()) for p in args.files] if args.files else default_files()
    auto = choose_precision("auto", "cpu")
    cpu = {"cpu_bf16_units": cpu_bf16_units(), "threads": torch.get_num_threads()}
    for name, data in files:
        with Image.open(io.BytesIO(data)) as image:
            samples = 1 if image.size[0] * image.size[1] > BIG else args.samples
        reference = None
        for label in ("fp32", auto.name) if auto.name != "fp32" else ("fp32",):
            sampler = pj.PosteriorSampler.from_checkpoint(None, device="cpu", dtype=label)
            phases(sampler, data, min(samples, 1))  # warm-up: oneDNN builds its kernels for these shapes
            runs = [phases(sampler, data, samples) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["total"])
            reference = reference or best
            emit(bench="cpu_precision", file=name, samples=samples, precision=label, **cpu,
                 **{k: round(v, 3) for k, v in best.items()}, reference="fp32, same process",
                 ratio=round(reference["total"] / best["total"], 3),
                 peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


if __name__ == "__main__":
    main()
