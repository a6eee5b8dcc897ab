"""The report of an evaluation job: typed per-image measurements in, table rows, markdown, CSV and
JSON out. Nothing here samples or measures; `evaluate.Runner` does, and hands its records here."""

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .atomic import write_atomically

METHODS = ("jpeg", "mmse", "ours", "ours_p", "ours_a")
LABELS = {"jpeg": "JPEG (libjpeg)", "mmse": "MMSE", "ours": "Ours", "ours_p": "Ours-P", "ours_a": "Ours-A"}
POSTERIOR_METHODS = ("ours", "ours_p", "ours_a")
METRICS = ("consistency_rmse", "coefficient_agreement", "psnr_rgb", "psnr_y", "lpips", "pixel_std", "pairwise_lpips",
           "calibration", "calibration_rank", "psnr_gap")
COLUMNS = ("checkpoint", "quality", "subsampling", "method", "images", "fid", "fid_std", "fid_repeats", *METRICS)
RESULT_FILES = ("results.json", "results.csv", "results.md")  # what an evaluation writes in its out_dir
COUNTS = ("differing_coefficients", "total_coefficients")  # summed over images, not averaged


@dataclass(frozen=True, order=True)
class Key:
    """A row of the table: a method, of a checkpoint (its label) or of none (the baselines: "")."""

    checkpoint: str
    method: str

    @property
    def name(self) -> str:
        """The method's table label."""
        return LABELS[self.method]


@dataclass(frozen=True, order=True)
class Measurement:
    """One figure of one test image for one row (several per image where FID repeats each give one)."""

    key: Key
    metric: str
    index: int
    value: float


class Tally:
    """Per-image measurements on this process."""

    def __init__(self):
        self.records: list[Measurement] = []

    def add(self, key: Key, metric: str, index: int, value: float) -> None:
        self.records.append(Measurement(key, metric, index, float(value)))


def repeat_summary(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std) of repeated FIDs, as the paper reports them; std is None for one value."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(records: list[Measurement]) -> dict[Key, dict[str, float]]:
    """Gathered records -> per row: each metric's mean over images of the per-image mean over
    repeats; coefficient agreement from the summed coefficient counts; and the image count."""
    grouped: dict[tuple[Key, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(records):
        grouped[record.key, record.metric][record.index].append(record.value)
    summary: dict[Key, dict[str, float]] = defaultdict(dict)
    for (key, metric), per_image in grouped.items():
        if metric in COUNTS:
            summary[key][metric] = float(sum(sum(v) for v in per_image.values()))
        else:
            summary[key][metric] = float(np.mean([np.mean(v) for _, v in sorted(per_image.items())]))
        if metric == "consistency_rmse":
            summary[key]["images"] = len(per_image)
    for values in summary.values():
        if values.get("total_coefficients"):
            values["coefficient_agreement"] = 1.0 - values.pop("differing_coefficients") / values.pop("total_coefficients")
    return summary


def rows(keys: list[Key], summary: dict[Key, dict[str, float]], fids: dict[Key, list[float]],
         quality: int | None, subsampling: str | None) -> list[dict]:
    """Table rows of one setting, in the order of `keys` (those measured on at least one image)."""
    table = []
    for key in keys:
        if key not in summary:
            continue
        fid, fid_std = repeat_summary(fids.get(key, []))
        values = summary[key]
        table.append({
            "checkpoint": key.checkpoint, "quality": quality, "subsampling": subsampling, "method": key.name,
            "images": values["images"], "fid": fid, "fid_std": fid_std, "fid_repeats": fids.get(key, []),
            **{name: values.get(name) for name in METRICS},
        })
    return table


def format_cell(value, name: str = "") -> str:
    """4 significant digits, so real FIDs (~5) and random-weight ones (~0.05) both stay readable;
    coefficient agreement with 6 decimals, where 0.99997 must not read as 1."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    return f"{value:.6f}" if name == "coefficient_agreement" else f"{value:.4g}"


def markdown(results: dict) -> str:
    """The results as a markdown table, under a header with the exact settings."""
    header = results["header"]
    lines = ["# posterior-jpeg evaluation", ""]
    if header["random_feature_weights"]:
        lines += ["**Random feature weights: FID / LPIPS values are NOT comparable to any published number.**", ""]
    lines += [f"- {name}: {json.dumps(value) if isinstance(value, (dict, list)) else value}"
              for name, value in header.items() if name != "random_feature_weights"]
    if results["skipped"]:
        lines.append(f"- skipped files: {json.dumps(results['skipped'])}")
    lines += ["", "| checkpoint | QF | subsampling | method | images | FID | consistency RMSE | coef. agreement "
              "| PSNR | PSNR-Y | LPIPS | per-pixel STD | pairwise LPIPS | calibration | calibration rank | PSNR gap |",
              "|" + " --- |" * 16]
    for row in results["rows"]:
        fid = format_cell(row["fid"]) + (f" ± {format_cell(row['fid_std'])}" if row["fid_std"] is not None else "")
        cells = [row["checkpoint"] or "-", format_cell(row["quality"]), row["subsampling"] or "stored", row["method"],
                 format_cell(row["images"]), fid, *(format_cell(row[name], name) for name in METRICS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir) -> None:
    """results.json, results.csv and results.md in out_dir, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_name, csv_name, markdown_name = RESULT_FILES
    write_atomically(out_dir / json_name, json.dumps(results, indent=2).encode())
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({**row, "fid_repeats": " ".join(f"{v:.6g}" for v in row["fid_repeats"])})
    write_atomically(out_dir / csv_name, table.getvalue().encode())
    write_atomically(out_dir / markdown_name, markdown(results).encode())


# The columns of a sweep's table and CSV (sweep.py writes them, explorer.py shows them).
SWEEP_COLUMNS = ("point", "lambda_c", "method", "quality", "subsampling", "images", "fid", "fid_std",
                 "consistency_rmse", "coefficient_agreement", "psnr_rgb", "pixel_std")
