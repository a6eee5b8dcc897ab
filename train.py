"""Train posterior-jpeg models: `python train.py --config FILE [key=value ...]`, also under
`accelerate launch` and torchrun. See `python train.py --help` (the same command is `posterior-jpeg train`).
"""

import sys

from posterior_jpeg.commands.train import main

if __name__ == "__main__":
    sys.exit(main())  # parsed before torch loads: --help answers at once
