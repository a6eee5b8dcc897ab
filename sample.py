"""Decode JPEG files into posterior samples, their mean and an uncertainty map.

    python sample.py INPUT... -n 8 -o OUT --checkpoint RUN_DIR [--mean] [--std] [--grid]

See `python sample.py --help` (the same command is `posterior-jpeg sample`).
"""

import sys

from posterior_jpeg.arguments import build_sample_parser

if __name__ == "__main__":
    args = build_sample_parser().parse_args()  # before torch loads: --help answers at once
    sys.exit(args.run(args))
