"""What `--posterior-mean-flips` costs: the bundled model decoding a photo into N projected samples, with M run
once, on 2 flips or on 4 (the default), timed in the same process and set against mean_flips 1.

    python bench/mean_flips.py [--megapixels 1.0] [--samples 4] [--repeats 3] [--quality 30]

Settings are timed round-robin, `repeats` times each, and each reports its fastest run (the least
disturbed by other work on the machine) and the arithmetic of the networks (torch's FLOP counter, a
figure no other load on the machine can change), both as ratios to mean_flips 1. What the flips buy
is measured by `python bench/val_yardsticks.py --mean-flips K`.
"""

import argparse
import io
import math
import time

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import posterior_jpeg as pj

from common import emit, photo

FLIPS = (1, 2, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", type=int, default=30)
    args = parser.parse_args()
    side = int(math.sqrt(args.megapixels * 1e6 * 4 / 3))  # 4:3, like a photo
    buffer = io.BytesIO()
    Image.fromarray(photo(side * 3 // 4, side)).save(buffer, "JPEG", quality=args.quality)
    jpeg = pj.read_jpeg(buffer.getvalue())
    samplers = {flips: pj.PosteriorSampler.from_checkpoint(None, device="cpu", posterior_mean_flips=flips)
                for flips in FLIPS}
    times = {flips: [] for flips in FLIPS}
    for _ in range(args.repeats):
        for flips, sampler in samplers.items():
            start = time.perf_counter()
            sampler.sample(jpeg, n=args.samples, seed=0)
            times[flips].append(time.perf_counter() - start)
    flops = {}
    for flips, sampler in samplers.items():
        with FlopCounterMode(display=False) as counter:
            sampler.sample(jpeg, n=args.samples, seed=0, project=False)
        flops[flips] = counter.get_total_flops()
    for flips in FLIPS:
        emit(bench="mean_flips", mean_flips=flips, megapixels=jpeg.height * jpeg.width / 1e6, samples=args.samples,
             threads=torch.get_num_threads(), seconds_min=min(times[flips]), seconds_max=max(times[flips]),
             ratio_to_1=min(times[flips]) / min(times[1]), gflops=flops[flips] / 1e9,
             flops_ratio_to_1=flops[flips] / flops[1])


if __name__ == "__main__":
    main()
