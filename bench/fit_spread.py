"""Refit a finished model's spread dispersions and gains (calibrate.py) without training V again, as
the last step of stage spread does, into a new model folder (weights copied, model.yaml and the
provenance config.yaml updated). Prints the fitted values by quality as one JSON line.

    python bench/fit_spread.py --checkpoint posterior_jpeg/weights/default --out runs/refit [--photos 12]
"""

import argparse
import shutil
import sys
from pathlib import Path

from posterior_jpeg import checkpoints
from posterior_jpeg.calibrate import fit_spread, training_photos
from posterior_jpeg.config import read_yaml, to_yaml
from posterior_jpeg.data import open_images
from posterior_jpeg.models.spread import FITTED

from common import SHARED_DATA, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="posterior_jpeg/weights/default", help="model folder with a spread network")
    parser.add_argument("--out", required=True, help="new model folder (must not exist)")
    parser.add_argument("--data", default=str(SHARED_DATA / "train"), help="training photos, a folder or shards (never val)")
    parser.add_argument("--photos", type=int, default=12, help="photos fitted on, as stage spread")
    args = parser.parse_args()
    generator, model = checkpoints.load_generator(args.checkpoint)
    if model.spread is None:
        sys.exit(f"fit_spread: {args.checkpoint} has no spread network")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    fitted = fit_spread(generator.eval(), training_photos(open_images(args.data), args.photos))
    source = Path(args.checkpoint)
    shutil.copy2(source / checkpoints.WEIGHTS, out / checkpoints.WEIGHTS)
    (out / checkpoints.MODEL).write_text(checkpoints.MODEL_HEADER + to_yaml(checkpoints.model_file(generator)))
    config = read_yaml(source / checkpoints.CONFIG)
    for name in FITTED:
        config.spread[name] = getattr(generator.spread.config, name)
    (out / checkpoints.CONFIG).write_text(to_yaml(config))
    emit(checkpoint=args.checkpoint, out=str(out), **fitted)


if __name__ == "__main__":
    main()
