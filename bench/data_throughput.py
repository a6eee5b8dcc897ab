"""Training input pipeline alone: batches per second of `make_loader` as the cpu_default recipe
builds it (crop 64, batch 8, qualities 5-95 skewed, 4:2:0 / 4:2:2 / 4:4:4, one worker process), in
this checkout and in another (--before DIR: the pipeline before a change, run with its own code).

    python bench/data_throughput.py --before DIR [--batches 60] [--repeats 3] [--workers 1]

Each measurement is a fresh process (caches start cold, as in a new training run) that takes
`--warmup` batches untimed, then times `--batches` more and turns every batch into float32 on the
training side, as the trainer does. Settings alternate, `repeats` times each; each line reports the
median batches/s, the range, and the ratio of medians to --before. The whole training loop, which
adds the networks' work, is `bench/train_throughput.py`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import SHARED_DATA, emit, loader_seconds  # noqa: E402

CROP, BATCH, MODES = 64, 8, ("4:2:0", "4:2:2", "4:4:4")


def child(checkout: Path, data: str, workers: int, warmup: int, batches: int) -> None:
    """Time checkout's loader in this process; print batches/s as JSON."""
    sys.path.insert(0, str(checkout))
    for name in [m for m in sys.modules if m.split(".")[0] == "posterior_jpeg"]:
        del sys.modules[name]
    from posterior_jpeg import data as pipeline

    # QualitySampler: its name in checkouts before the renames
    qualities = getattr(pipeline, "QualityDistribution", None) or pipeline.QualitySampler
    loader = pipeline.make_loader(pipeline.list_images(data), CROP, qualities("skewed", 5, 95, 2.0), MODES, seed=0,
                                  batch_size=BATCH, workers=workers)
    seconds = loader_seconds(loader, warmup, batches)
    print(json.dumps({"batches_per_second": batches / seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="the other checkout (required)")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data", default=str(SHARED_DATA / "train"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.workers, args.warmup, args.batches)
        return
    if args.before is None:
        parser.error("--before DIR is required")
    checkouts = {"before": args.before.resolve(), "this checkout": ROOT}
    speeds = {name: [] for name in checkouts}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(args.repeats):
        for name, checkout in checkouts.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(checkout), "--data", args.data,
                                  "--workers", str(args.workers), "--warmup", str(args.warmup),
                                  "--batches", str(args.batches)],
                                 capture_output=True, text=True, env=env, cwd=checkout)
            if out.returncode != 0:
                sys.exit(f"{checkout}:\n{out.stderr[-3000:]}")
            speeds[name].append(json.loads(out.stdout.strip().splitlines()[-1])["batches_per_second"])
    reference = statistics.median(speeds["before"])
    for name, values in speeds.items():
        emit(bench="data_throughput", setting=name, checkout=str(checkouts[name]), workers=args.workers,
             batch=BATCH, crop=CROP, batches_per_second_median=statistics.median(values),
             batches_per_second_min=min(values), batches_per_second_max=max(values), repeats=args.repeats,
             ratio_to_before=statistics.median(values) / reference)


if __name__ == "__main__":
    main()
