"""Decode JPEG files into posterior samples, their mean and an uncertainty map.

    python sample.py INPUT... -n 8 -o OUT --checkpoint RUN_DIR [--sample-mean] [--std] [--grid]

See `python sample.py --help` (the same command is `posterior-jpeg sample`).
"""

import sys

from posterior_jpeg.commands.sample import main

if __name__ == "__main__":
    sys.exit(main())  # parsed before torch loads: --help answers at once
