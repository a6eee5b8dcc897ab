"""Training throughput: steps/s of the whole training loop (data loading included) per setting.

    python bench/train_throughput.py [--recipe cpu_default] [--steps 48] [--repeats 5]
        [--threads 1 2] [--variant "mixed_precision=bf16" ...] [--before DIR] [--before-overrides "..."]
        [--data FOLDER]

Every measurement is a fresh `train.py` run of the recipe in a subprocess, exactly as a user runs it
(workers, real images, the recipe's loss schedule), with `log_every` set to the warm-up: the speed
is the steps between the first and the last log line over the time between them, so start-up, the
loader's first batches, the final validation sheet and the checkpoint are not counted.

A setting is a variant (config overrides, "" = the recipe as configured) times a thread count
(OMP_NUM_THREADS). --before DIR adds the recipe as configured in another checkout DIR (e.g.
`git archive <commit> | tar -x -C DIR`), run with its own code: the "before" of a change;
--before-overrides are its own overrides, for keys that only one of the two checkouts knows. The
data pipeline's before/after (README, "Training"), the S network of cpu_default alone, which both
checkouts can build:

    python bench/train_throughput.py --before DIR --before-overrides "moment_posterior_mean=null loss.second_moment_kind=std" \
        --variant "posterior_mean=null moment_posterior_mean=null loss.second_moment_kind=std"
Settings are measured round-robin, `repeats` times each, so that load from other jobs on the
machine spreads over all of them; each line reports the median, the range and the ratio of
medians to the first setting (the --before one when given).
"""

import argparse
import json
import os
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import SHARED_DATA, emit  # noqa: E402

# Per recipe: its config file and the overrides that make it the run it documents.
RECIPES = {
    # stage 2 of the bundled model; the bundled weights stand in for its posterior mean M (same network)
    "cpu_default": ["configs/cpu_default.yaml", "moment_posterior_mean=posterior_jpeg/weights/default"],
    "tiny": ["configs/tiny.yaml"],
    "demo": ["configs/demo.yaml"],
    "paper": ["configs/ffhq128_qf5.yaml"],
}


def child(checkout: Path, argv: list[str]) -> None:
    """Run checkout's train.py with argv in this process, then print the peak memory as JSON."""
    os.chdir(checkout)
    sys.path.insert(0, str(checkout))
    for name in [m for m in sys.modules if m.split(".")[0] == "posterior_jpeg"]:  # bench/common imported ours
        del sys.modules[name]
    sys.argv = ["train.py", *argv]
    try:
        runpy.run_path("train.py", run_name="__main__")
    except SystemExit as done:
        if done.code:
            raise
    import torch

    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"peak_bytes": peak}))


def measure(checkout: Path, recipe: str, overrides: list[str], threads: int, warmup: int, steps: int,
            data: str, device: str) -> dict:
    """One fresh training run; steps/s between its first and last log line."""
    config, *fixed = RECIPES[recipe]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as out_dir:
        argv = ["--config", config, *fixed, f"out_dir={out_dir}", "resume=null", "progress=false",
                f"steps={warmup + steps}", f"log_every={warmup}", "val_every=1000000",
                "checkpoint_every=1000000", f"data.train={data}", "data.val=null", f"device={device}", *overrides]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        out = subprocess.run([sys.executable, __file__, "--child", str(checkout), *argv],
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.exit(f"{checkout} {' '.join(argv)}:\n{out.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    return {"it_s": (last["step"] - first["step"]) / (last["seconds"] - first["seconds"]), "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cpu_default", choices=sorted(RECIPES))
    parser.add_argument("--variant", action="append", default=None,
                        help='config overrides, space-separated ("" = as configured); repeatable')
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="OMP_NUM_THREADS values")
    parser.add_argument("--before", type=Path, help="another checkout whose recipe is measured first")
    parser.add_argument("--before-overrides", default="", help="config overrides of the --before run only")
    parser.add_argument("--steps", type=int, default=48, help="timed steps (a multiple of the moment interval)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (also the log interval)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=str(SHARED_DATA / "train"), help="training image folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1:])
        return
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the log interval)")
    settings = [("before", args.before, args.before_overrides.split(), args.threads[0])] if args.before else []
    for variant in args.variant or [""]:
        for threads in args.threads:
            settings.append((variant or "as configured", ROOT, variant.split(), threads))
    results = {index: [] for index in range(len(settings))}
    for _ in range(args.repeats):
        for index, (_, checkout, overrides, threads) in enumerate(settings):
            results[index].append(measure(checkout.resolve(), args.recipe, overrides, threads, args.warmup,
                                          args.steps, args.data, args.device))
    reference = statistics.median(r["it_s"] for r in results[0])
    for index, (name, checkout, _, threads) in enumerate(settings):
        speeds = [r["it_s"] for r in results[index]]
        emit(bench="train_throughput", recipe=args.recipe, setting=name, threads=threads, checkout=str(checkout),
             device=args.device, it_s_median=statistics.median(speeds), it_s_min=min(speeds), it_s_max=max(speeds),
             repeats=args.repeats, steps=args.steps, ratio_to_first=statistics.median(speeds) / reference,
             peak_mb=max(r["peak_bytes"] for r in results[index]) / 2**20)


if __name__ == "__main__":
    main()
