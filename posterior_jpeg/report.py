"""The report of an evaluation job: typed per-image measurements in, table rows, markdown, CSV and
JSON out. Nothing here samples or measures; `evaluate.Runner` does, and hands its records here. The
metric columns, their labels, formats and summaries come from the metrics' declarations
(metrics.registry), read when a table is made, so a metric registered later has its column too."""

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .atomic import write_atomically
from .metrics.registry import METRICS, table_metrics

METHODS = ("jpeg", "mmse", "ours", "ours_p", "ours_a")
LABELS = {"jpeg": "JPEG (libjpeg)", "mmse": "MMSE", "ours": "Ours", "ours_p": "Ours-P", "ours_a": "Ours-A"}
POSTERIOR_METHODS = ("ours", "ours_p", "ours_a")
SETTING_COLUMNS = ("checkpoint", "quality", "subsampling", "method", "images")  # of every row, before the figures
FID_COLUMNS = ("fid", "fid_std", "fid_repeats")  # FID over the repeats: mean, sample std, each repeat's
RESULT_FILES = ("results.json", "results.csv", "results.md")  # what an evaluation writes in its out_dir
# The sweep's table: the point, the row's setting, FID and the metrics declared with sweep=True
SWEEP_SETTING_COLUMNS = ("point", "lambda_c", "method", "quality", "subsampling", "images", "fid", "fid_std")


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
    """One figure of one test image for one row (several per image where FID repeats each give one);
    a number, or the pair its metric's summary takes (coefficient agreement: differing, total)."""

    key: Key
    metric: str
    index: int
    value: float | tuple[int, int]


class Tally:
    """Per-image measurements on this process."""

    def __init__(self):
        self.records: list[Measurement] = []

    def add(self, key: Key, metric: str, index: int, value: float | tuple[int, int]) -> None:
        self.records.append(Measurement(key, metric, index, value if isinstance(value, tuple) else float(value)))


def repeat_summary(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std) of repeated FIDs, as the paper reports them; std is None for one value."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(records: list[Measurement]) -> dict[Key, dict[str, float]]:
    """Gathered records -> per row: each metric's summary over the images (its declaration's, mostly
    the mean over images of the per-image mean over repeats) and the count of images measured."""
    grouped: dict[tuple[Key, str], dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(records):
        grouped[record.key, record.metric][record.index].append(record.value)
    summary: dict[Key, dict[str, float]] = defaultdict(dict)
    for (key, metric), per_image in grouped.items():
        summary[key][metric] = METRICS[metric].summary([values for _, values in sorted(per_image.items())])
    for key in summary:
        summary[key]["images"] = len({record.index for record in records if record.key == key})
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
            **{metric.name: values.get(metric.name) for metric in table_metrics()},
        })
    return table


def format_cell(value, name: str = "") -> str:
    """A metric's value in its declared format, any other float with 4 significant digits (FID)."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    return format(value, METRICS[name].format if name in METRICS else ".4g")


def sweep_columns() -> tuple[str, ...]:
    """The columns of a sweep's table and CSV (sweep.py writes them, explorer.py shows them)."""
    return (*SWEEP_SETTING_COLUMNS, *(metric.name for metric in table_metrics() if metric.sweep))


def results_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The results table's headings and cells, as results.md and the results page show them."""
    metrics = table_metrics()
    headings = ["checkpoint", "QF", "subsampling", "method", "images", "FID ↓", *(m.heading for m in metrics)]
    cells = []
    for row in rows:
        fid = format_cell(row["fid"]) + (f" ± {format_cell(row['fid_std'])}" if row["fid_std"] is not None else "")
        cells.append([row["checkpoint"] or "-", format_cell(row["quality"]), row["subsampling"] or "stored",
                      row["method"], format_cell(row["images"]), fid,
                      *(format_cell(row.get(m.name), m.name) for m in metrics)])
    return headings, cells


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
    headings, cells = results_table(results["rows"])
    lines += ["", "| " + " | ".join(headings) + " |", "|" + " --- |" * len(headings)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir) -> None:
    """results.json, results.csv and results.md in out_dir, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_name, csv_name, markdown_name = RESULT_FILES
    write_atomically(out_dir / json_name, json.dumps(results, indent=2).encode())
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=[*SETTING_COLUMNS, *FID_COLUMNS, *(m.name for m in table_metrics())])
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({**row, "fid_repeats": " ".join(f"{v:.6g}" for v in row["fid_repeats"])})
    write_atomically(out_dir / csv_name, table.getvalue().encode())
    write_atomically(out_dir / markdown_name, markdown(results).encode())

