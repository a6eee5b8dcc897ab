"""`train`: train a model from a config (also `python train.py`, under `accelerate launch` or torchrun)."""

import argparse

from .common import configure_config_command

NAME = "train"
HELP = "train a model: the posterior mean M (stage posterior_mean), G or S with the GAN and its penalties (posterior), or the spread network V (spread)"
DESCRIPTION = """\
Train posterior-jpeg models.

    python train.py --config configs/tiny.yaml [key=value ...]
    python train.py --config configs/tiny.yaml --print-config     (every key: value and meaning)
    accelerate launch --num_processes 8 train.py --config configs/general_qf5-50.yaml out_dir=runs/big

Overrides use dotted keys (data.train=/photos steps=20000 loss.consistency.end=5); unknown keys are
errors. The run folder (out_dir) receives checkpoints, validation grids, metrics.jsonl and the tracker's
logs (log_with: tensorboard by default), and is what `sample.py --checkpoint` takes. Re-running the same command resumes the run (resume=auto).
SIGTERM, SIGUSR1 or Ctrl-C: every process finishes its step, one checkpoint is written, exit status 75
(README: Many nodes, for torchrun and SLURM).
"""


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return configure_config_command(parser, DESCRIPTION, "configs/*.yaml", run)


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, load_config, run_with_config, show_config  # torch: after parsing

    if args.print_config:
        return show_config("train.py", TrainConfig, args.config, args.overrides)
    from ..training import train

    def train_and_report(cfg) -> None:
        print(f"run folder: {train(cfg)}")

    return run_with_config("train.py", load_config, train_and_report, args.config, args.overrides)


def main(argv=None) -> int:
    """`python train.py`."""
    args = configure(argparse.ArgumentParser(prog="train.py")).parse_args(argv)
    return args.run(args)
