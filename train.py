"""Train posterior-jpeg models.

    python train.py --config configs/tiny.yaml [key=value ...]
    python train.py --config configs/tiny.yaml --print-config     (every key: value and meaning)
    accelerate launch --num_processes 8 train.py --config configs/general_qf5-50.yaml out_dir=runs/big

Overrides use dotted keys (data.train=/photos steps=20000 loss.consistency.end=5); unknown keys are
errors. The run folder (out_dir) receives checkpoints, validation grids and TensorBoard logs, and is
what `sample.py --checkpoint` takes. Re-running the same command resumes the run (resume=auto).
"""

import sys

from posterior_jpeg.arguments import parse_config_arguments


def main(argv=None) -> int:
    args = parse_config_arguments(argv, None, __doc__, "configs/*.yaml")
    from posterior_jpeg.config import TrainConfig, load_config, run_with_config, show_config  # torch: after parsing

    if args.print_config:
        return show_config("train.py", TrainConfig, args.config, args.overrides)
    from posterior_jpeg.training import train

    def train_and_report(cfg) -> None:
        print(f"run folder: {train(cfg)}")

    return run_with_config("train.py", load_config, train_and_report, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
