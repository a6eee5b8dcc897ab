"""Quality against CPU time of a posterior-mean (MMSE) run: the PSNR gain of each checkpoint over the
libjpeg decode on the val photos (centre crops of at most 256x256, 4:2:0, qualities 10, 30, 90),
beside the process CPU seconds metrics.jsonl logged at that step. The study that chose M's size in
MODEL_CARD.md ran this on two runs trained side by side.

    python bench/mean_curve.py RUN_DIR [--raw] [--data DIR]

--raw measures the trained weights (generator.safetensors) instead of their EMA: in a short study
the EMA lags by about ema_half_life_images / ln 2 images, which biases the comparison against the
slower model.
One JSON line per checkpoint, appended to RUN_DIR/mean_curve[_raw].jsonl too (measured ones are skipped).
"""

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from posterior_jpeg import checkpoints
from posterior_jpeg.jpeg.tables import ijg_tables
from posterior_jpeg.pixels import to_chw_float

from common import SHARED_DATA, emit

CROP, QUALITIES = 256, (10, 30, 90)


def val_set(folder: Path) -> list[tuple[np.ndarray, dict[int, np.ndarray]]]:
    """(original, {quality: libjpeg decode}) per photo, uint8 [H, W, 3], centre-cropped to multiples of 16."""
    items = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        crop_w, crop_h = min(width, CROP) // 16 * 16, min(height, CROP) // 16 * 16
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        decoded = {}
        for quality in QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
            with Image.open(buffer) as jpeg:
                decoded[quality] = np.array(jpeg.convert("RGB"))
        items.append((np.array(image), decoded))
    return items


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--raw", action="store_true", help="the trained weights, not their EMA")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "val")
    args = parser.parse_args()
    torch.set_num_threads(1)
    items = val_set(args.data)
    out = args.run / ("mean_curve_raw.jsonl" if args.raw else "mean_curve.jsonl")
    done = {json.loads(line)["step"] for line in out.read_text().splitlines()} if out.exists() else set()
    logged = {}
    for line in (args.run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        logged[record["step"]] = record
    for folder in sorted((args.run / "checkpoints").glob("step_*")):
        step = int(folder.name[len("step_"):])
        if step in done:
            continue
        generator, _ = checkpoints.load_generator(folder)
        if args.raw:
            raw = folder / "generator.safetensors"
            generator.load_state_dict(checkpoints.read_tensors(raw if raw.is_file() else folder / "model.safetensors")[0])
        record = {"step": step, "cpu_seconds": logged.get(step, {}).get("cpu_seconds")}
        for quality in QUALITIES:
            tables = torch.from_numpy(ijg_tables(quality)).float()[None]
            gains = []
            for original, decoded in items:
                y = to_chw_float(decoded[quality].copy())[None]
                with torch.no_grad():
                    output = generator(y, tables).clamp(0, 1)
                pixels = (output[0].permute(1, 2, 0).numpy() * 255).round()
                gains.append(psnr(original, pixels) - psnr(original, decoded[quality]))
            record[f"gain{quality}"] = float(np.mean(gains))
        emit(**record)
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
