"""Training crops per second from tar shards against from the image folder they were packed from,
in one process on the same images, with the loader data_throughput.py measures (crop 64, batch 8,
qualities 5-95 skewed, three subsampling modes).

    python bench/shard_throughput.py [--data ../shared/data/train] [--workers 1 2] [--batches 60] [--repeats 3]

The folder is packed once into a temporary folder (`pack`, timed). Each measurement builds a fresh
loader (new workers, empty caches), takes `--warmup` batches untimed and times `--batches` more;
folder and shards alternate, `repeats` times each. Two cache settings: `cache_mb=0` decodes an image
per crop, as on a data set larger than the cache (ImageNet); the default cache keeps every decoded
image of a small set, so both sources then time little more than the JPEG work. Each line: median
crops/s, range, and the ratio of medians shards / folder. Other jobs on the machine move both
sources alike; the load average before the run is printed with the CPU model.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, cpu_model, emit, loader_seconds  # noqa: E402
from data_throughput import BATCH, CROP, MODES  # noqa: E402

from posterior_jpeg.data import QualityDistribution, list_images, make_loader, open_images  # noqa: E402
from posterior_jpeg.packing import pack  # noqa: E402


def crops_per_second(images, workers: int, cache_bytes: int, warmup: int, batches: int) -> float:
    loader = make_loader(images, CROP, QualityDistribution("skewed", 5, 95, 2.0), MODES, seed=0, batch_size=BATCH,
                         workers=workers, cache_bytes=cache_bytes)
    elapsed = loader_seconds(loader, warmup, batches)
    del loader  # stops the workers before the next measurement
    return batches * BATCH / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "train")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=10 * 10**6, help="bytes per shard (default 10 MB)")
    args = parser.parse_args()
    emit(bench="shard_throughput", cpu=cpu_model(), cpus=os.cpu_count(), load_average=os.getloadavg()[0])
    files = list_images(args.data)
    with tempfile.TemporaryDirectory() as temporary:
        start = time.perf_counter()
        summary = pack(files, Path(temporary), shard_bytes=args.shard_size, progress=False)
        emit(bench="shard_throughput", setting="pack", images=summary["images"], shards=summary["shards"],
             images_per_second=summary["images"] / (time.perf_counter() - start))
        sources = {"folder": files, "shards": open_images(temporary)}
        for workers in args.workers:
            for cache_mb in (0, 1024):
                speeds = {name: [] for name in sources}
                for _ in range(args.repeats):
                    for name, images in sources.items():
                        speeds[name].append(crops_per_second(images, workers, cache_mb * 2**20, args.warmup, args.batches))
                folder = statistics.median(speeds["folder"])
                for name, values in speeds.items():
                    emit(bench="shard_throughput", source=name, workers=workers, cache_mb=cache_mb, crop=CROP,
                         batch=BATCH, images=len(files), crops_per_second_median=round(statistics.median(values), 1),
                         crops_per_second_min=round(min(values), 1), crops_per_second_max=round(max(values), 1),
                         repeats=args.repeats, ratio_to_folder=round(statistics.median(values) / folder, 3))


if __name__ == "__main__":
    main()
