"""Wall time of every entry point's --help, beside `python -c pass` (the interpreter's own start).

    python bench/cli_help.py [--repeats 5]

One JSON line per command: fastest and median seconds over the repeats."""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "train.py --help": ["train.py", "--help"],
    "sample.py --help": ["sample.py", "--help"],
    "posterior-jpeg --help": ["-m", "posterior_jpeg", "--help"],
    "posterior-jpeg eval --help": ["-m", "posterior_jpeg", "eval", "--help"],
    "posterior-jpeg sweep --help": ["-m", "posterior_jpeg", "sweep", "--help"],
    "train.py --print-config": ["train.py", "--print-config"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for name, command in COMMANDS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        print(json.dumps({"command": name, "seconds_min": round(min(times), 3),
                          "seconds_median": round(statistics.median(times), 3), "repeats": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
