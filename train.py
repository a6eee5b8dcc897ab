"""Train posterior-jpeg models.

    python train.py --config configs/tiny.yaml [key=value ...]
    accelerate launch --num_processes 8 train.py --config configs/general_qf5-50.yaml out_dir=runs/big

Overrides use dotted keys (data.train=/photos steps=20000 loss.consistency.end=5); unknown keys are
errors. The run folder (out_dir) receives checkpoints, validation grids and TensorBoard logs, and is
what `sample.py --checkpoint` takes. Re-running the same command resumes the run (resume=auto).
"""

import argparse
import sys

from posterior_jpeg.config import add_config_arguments, load_config, run_with_config
from posterior_jpeg.training import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, "configs/*.yaml")
    args = parser.parse_args(argv)

    def train_and_report(cfg) -> None:
        print(f"run folder: {train(cfg)}")

    return run_with_config("train.py", load_config, train_and_report, args.config, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
