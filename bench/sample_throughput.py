"""Sampling throughput: megapixels of samples per second and peak memory, per generator and mode,
each against the same generator in plain fp32 eager mode measured in the same run.

    python bench/sample_throughput.py [--device cpu|cuda] [--models tiny,demo,paper] [--threads N]
                                      [--no-target] [--big]

Generators (untrained weights: speed does not depend on training): tiny (tests), demo (plain trunk
96 x 12, configs/demo.yaml; larger than the shipped default's 64 x 8), paper (RRDB 64 x 23). Modes: CPU: fp32 eager (reference),
channels_last, bf16 autocast; CUDA: fp32 eager (reference), bf16, bf16 + channels_last +
torch.compile. The figure is PosteriorSampler.generate (G with its positional noise, tiled as the sampler
tiles) on a square image of --size pixels (the paper-size model on CPU gets a small one).

Every configuration runs in a fresh subprocess so that its peak memory is its own: on CPU the
process's peak resident set (getrusage ru_maxrss; tracemalloc does not see torch's allocations),
on CUDA torch.cuda.max_memory_allocated. Also, unless --no-target: the CPU target of issue 4, the
demo model decoding a 1-megapixel JPEG into 4 projected samples (< 60 s on 2 cores); with --big: a
12-megapixel photo into one projected sample (peak memory of tiled sampling).

On a CPU shared with other jobs, two OpenMP threads on two busy cores can run 10x slower than one
(threads wait for each other at every barrier): --threads 1 gives steadier figures there.
"""

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time

import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.jpeg.tables import ijg_tables
from posterior_jpeg.models.generator import build_generator
from posterior_jpeg.pixels import to_chw_float
from posterior_jpeg.sampler import PosteriorSampler

from common import best_time, emit, photo

MODES = {"cpu": ("fp32", "channels_last", "bf16"), "cuda": ("fp32", "bf16", "bf16_channels_last_compile")}
SIZES = {"cpu": {"tiny": 512, "demo": 512, "paper": 128}, "cuda": {"tiny": 512, "demo": 512, "paper": 512}}
SAMPLES = {"cpu": 2, "cuda": 8}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def _sampler(model: str, mode: str, device: str) -> PosteriorSampler:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if mode.startswith("bf16") else torch.float32  # bf16 runs channels_last (the sampler's rule)
    sampler = PosteriorSampler(build_generator(model), model, device, dtype)
    if "channels_last" in mode:
        sampler.generator.to(memory_format=torch.channels_last)
    if "compile" in mode:
        sampler.compile()
    return sampler


def measure_generate(model: str, mode: str, device: str, size: int, samples: int, repeats: int) -> dict:
    """In this (fresh) process: seconds of PosteriorSampler.generate for `samples` seeds, and peak memory."""
    sampler = _sampler(model, mode, device)
    y = to_chw_float(photo(size, size)).to(device)
    tables = torch.from_numpy(ijg_tables(20)).float().to(device)
    seeds = list(range(samples))
    setup_mb = _peak_rss_mb()
    def generate():
        return [sampler.generate(y, tables, seed).cpu() for seed in seeds]  # on the CPU: synced

    generate()  # warm-up (compiles where asked)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = best_time(generate, repeats)
    record = {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "setup_rss_mb": setup_mb,
              "threads": torch.get_num_threads()}
    if device == "cuda":
        record["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return record


def measure_decode(megapixels: float, samples: int) -> dict:
    """In this (fresh) process: the demo model, fp32 on the CPU, a JPEG of `megapixels` (quality 30,
    4:2:0) into `samples` projected samples, end to end from the file's bytes."""
    height = int(round((megapixels * 1e6 * 3 / 4) ** 0.5))
    width = int(round(height * 4 / 3))
    buffer = io.BytesIO()
    Image.fromarray(photo(height, width)).save(buffer, "JPEG", quality=30)
    sampler = _sampler("demo", "fp32", "cpu")
    start = time.perf_counter()
    jf = pj.read_jpeg(buffer.getvalue())
    out = sampler.sample(jf, samples, seed=0)
    seconds = time.perf_counter() - start
    agreement = pj.metrics.coefficient_agreement(out[:1], jf).coefficients
    return {"seconds": seconds, "height": height, "width": width, "peak_rss_mb": _peak_rss_mb(),
            "coefficient_agreement_first": agreement, "threads": torch.get_num_threads()}


def _in_subprocess(threads: int, *args: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(threads), "--worker", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", default="tiny,demo,paper")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (default: torch's choice)")
    parser.add_argument("--no-target", action="store_true", help="skip the 1-megapixel CPU target check")
    parser.add_argument("--big", action="store_true", help="also decode a 12-megapixel photo (slow on CPU)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        kind, *rest = args.worker
        if kind == "generate":
            model, mode, device, size, samples, repeats = rest
            record = measure_generate(model, mode, device, int(size), int(samples), int(repeats))
        else:
            record = measure_decode(float(rest[0]), int(rest[1]))
        print(json.dumps(record))
        return

    device, samples = args.device, SAMPLES[args.device]
    for model in args.models.split(","):
        size = SIZES[device][model]
        megapixels = size * size * samples / 1e6
        params = sum(p.numel() for p in build_generator(model).parameters())
        reference = None
        for mode in MODES[device]:
            settings = map(str, (model, mode, device, size, samples, args.repeats))
            record = _in_subprocess(args.threads, "generate", *settings)
            reference = reference or record
            emit(bench="sample_generate", device=device, model=model, params=params, mode=mode, size=size,
                 samples=samples, mp_s=megapixels / record["seconds"], seconds=record["seconds"],
                 reference="same model, fp32 eager", reference_mp_s=megapixels / reference["seconds"],
                 ratio=reference["seconds"] / record["seconds"],
                 **{k: round(v, 1) for k, v in record.items() if k.endswith("_mb")})
    if not args.no_target:
        record = _in_subprocess(args.threads, "decode", "1.0", "4")
        emit(bench="cpu_target_demo_1mp_4_samples", target_s=60, met=record["seconds"] < 60, **record)
    if args.big:
        record = _in_subprocess(args.threads, "decode", "12.0", "1")
        emit(bench="demo_12mp_1_sample", **record)


if __name__ == "__main__":
    main()
