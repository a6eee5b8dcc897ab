"""Train posterior-jpeg models.

    python train.py --config configs/tiny.yaml [key=value ...]
    accelerate launch --num_processes 8 train.py --config configs/general_qf5-50.yaml out_dir=runs/big

Overrides use dotted keys (data.train=/photos steps=20000 loss.consistency.end=5); unknown keys are
errors. The run folder (out_dir) receives checkpoints, validation grids and TensorBoard logs, and is
what `sample.py --checkpoint` takes. Re-running the same command resumes the run (resume=auto).
"""

import argparse
import sys

from posterior_jpeg.config import ConfigError, load_config
from posterior_jpeg.errors import PosteriorJpegError
from posterior_jpeg.training import train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (configs/*.yaml); defaults when omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2
    try:
        run_dir = train(cfg)
    except PosteriorJpegError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 1
    print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
