"""Training throughput: iterations/s and peak memory per config, against plain fp32 eager in the same run.

    python bench/train_throughput.py [--configs tiny demo] [--steps 6] [--device cpu|cuda]

Each measurement runs in a fresh subprocess (so peak RSS is its own): a Trainer on synthetic data,
a few warm-up steps, then timed steps. The reference is the same model and batch in fp32 eager
mode (the authors' setting); the variant adds bf16 autocast, channels_last and (on CUDA)
torch.compile. On CUDA the "paper" config (RRDB 64x23, batch 32 of 128x128) is measured too.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import emit  # noqa: E402

SETTINGS = {
    "tiny": ["--config", "configs/tiny.yaml"],
    "demo": ["--config", "configs/demo.yaml", "batch_size=8", "data.crop=64", "critic.size=64",
             "loss.moment_images=2", "loss.moment_samples=4"],
    "paper": ["--config", "configs/ffhq128_qf5.yaml"],
}


def measure(config: str, device: str, steps: int, fast: bool) -> dict:
    """Run in this process: build the trainer, warm up, time `steps` training steps."""
    import torch

    from posterior_jpeg.config import load_config
    from posterior_jpeg.training import Trainer, _to_device

    args = SETTINGS[config]
    overrides = args[2:] + [f"out_dir=/tmp/bench_train_{config}", "resume=null", "progress=false", f"device={device}",
                            "data.train=null", "data.workers=0", "loss.moments_every=4", "loss.r1_every=4"]
    if fast:
        overrides += ["channels_last=true", "mixed_precision=bf16"] + (["compile=true"] if device == "cuda" else [])
    cfg = load_config(ROOT / args[1], overrides)
    trainer = Trainer(cfg)
    from posterior_jpeg.data import QualitySampler, make_loader

    loader = iter(make_loader(None, cfg.data.crop, QualitySampler(), tuple(cfg.data.modes), 0, cfg.batch_size))
    batches = [_to_device(next(loader), trainer.accelerator.device) for _ in range(4)]
    for i in range(4):  # warm-up covers every kind of step (R1 and moments every 4)
        trainer.train_step(batches[i % 4])
        trainer.step += 1
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batches[i % 4])
        trainer.step += 1
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"it_s": steps / seconds, "peak_bytes": peak, "batch": cfg.batch_size, "crop": cfg.data.crop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=None, help="tiny, demo, paper")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "FAST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        print(json.dumps(measure(args.child[0], device, args.steps, args.child[1] == "1")))
        return
    configs = args.configs or (["tiny", "demo", "paper"] if device == "cuda" else ["tiny", "demo"])
    for config in configs:
        results = {}
        for fast in (False, True):
            out = subprocess.run([sys.executable, __file__, "--device", device, "--steps", str(args.steps),
                                  "--child", config, "1" if fast else "0"], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(out.stderr[-2000:])
            results[fast] = json.loads(out.stdout.strip().splitlines()[-1])
        emit(bench="train_throughput", config=config, device=device, batch=results[True]["batch"],
             crop=results[True]["crop"], ours="bf16 autocast + channels_last" + (" + compile" if device == "cuda" else ""),
             ours_it_s=results[True]["it_s"], ours_peak_mb=results[True]["peak_bytes"] / 2**20,
             reference="fp32 eager", reference_it_s=results[False]["it_s"],
             reference_peak_mb=results[False]["peak_bytes"] / 2**20,
             ratio=results[True]["it_s"] / results[False]["it_s"])


if __name__ == "__main__":
    main()
