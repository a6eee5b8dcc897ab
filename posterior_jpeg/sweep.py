"""Perception-consistency sweeps (the paper's Figure 2): FID against consistency RMSE over lambda_C.

    posterior-jpeg sweep --config configs/sweep_consistency.yaml [key=value ...]
    python -m posterior_jpeg sweep --config configs/sweep_consistency.yaml [key=value ...]

Each point is a lambda_C schedule, trained as a run of `train_config` (with overrides), or an
existing checkpoint. Every point is evaluated with the `eval` section (its posterior methods); the
baselines in it (jpeg, mmse) once. Out: out_dir/sweep.csv, sweep.md and one PNG per setting.

Resumable: a point whose run has reached its final step is not trained again (an unfinished one
resumes from its last checkpoint), and a point whose evaluation is recorded with the same eval
settings and model weights is not evaluated again. Delete a point's run folder to retrain it.
"""

import sys

if __name__ == "__main__":  # the job is not a command: no upward import of posterior_jpeg.commands
    print("python -m posterior_jpeg.sweep is now python -m posterior_jpeg sweep (or posterior-jpeg sweep)", file=sys.stderr)
    sys.exit(2)


import csv
import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from omegaconf import MISSING, OmegaConf

from . import checkpoints, explorer
from .atomic import Folder, file_digest, write_atomically
from .config import (ConfigError, TrainConfig, build_structured, load_config, load_structured, output_folder,
                     run_with_config, show_config)
from .evaluate import DEFAULT_METHODS, EvalConfig, evaluate
from .report import POSTERIOR_METHODS, format_cell, sweep_columns
from .losses import Schedule
from .training import train

RUNS, POINTS, BASELINES = "runs", "points", "baselines"  # out_dir's folders: trained points, evaluations
NAME = re.compile(r"^(?!\.)[A-Za-z0-9_.=+-]+$")  # a plain folder name: not ".", "..", hidden


@dataclass
class SweepPoint:
    """One point: lambda_C as a schedule (null: the training config's own), extra training overrides,
    or instead an existing checkpoint (then nothing is trained)."""

    name: str = MISSING  # the point's name (its run folder under out_dir)
    lambda_c: Schedule | None = None  # lambda_C schedule; null: the training config's own
    overrides: list[str] = field(default_factory=list)  # extra training overrides of this point
    checkpoint: str | None = None  # an existing checkpoint instead (then nothing is trained)


@dataclass
class SweepConfig:
    """One sweep (configs/sweep_consistency.yaml); the sweep sets eval's checkpoints and out_dir per point."""

    out_dir: str = "runs/sweep_consistency"  # runs, sweep.csv, sweep.md and the plots
    train_config: str = "configs/ffhq128_qf5.yaml"  # training config of every trained point
    train_overrides: list[str] = field(default_factory=list)  # overrides applied to every trained point
    lambda_values: list[float] = field(default_factory=list)  # shorthand: constant-lambda_C points named "lambda_C=<value>"
    points: list[SweepPoint] = field(default_factory=list)  # schedules and existing checkpoints
    eval: dict[str, Any] = field(default_factory=dict)  # an evaluation config (eval.yaml's keys) without checkpoints and out_dir


def sweep_points(cfg: SweepConfig) -> list[SweepPoint]:
    values = [SweepPoint(name=f"lambda_C={v:g}", lambda_c=Schedule("constant", v, v)) for v in cfg.lambda_values]
    return values + list(cfg.points)


def eval_config(cfg: SweepConfig, checkpoint_paths: list[str], methods: list[str], out_dir: Path) -> EvalConfig:
    """The sweep's eval section for one evaluation: these checkpoints and methods, this out_dir."""
    return build_structured(EvalConfig, [OmegaConf.create(cfg.eval), OmegaConf.create(
        {"checkpoints": checkpoint_paths, "methods": methods, "out_dir": str(out_dir)})], "eval section")


def train_config(cfg: SweepConfig, point: SweepPoint) -> TrainConfig:
    schedule = point.lambda_c
    lambda_overrides = [] if schedule is None else [
        f"loss.consistency.kind={schedule.kind}", f"loss.consistency.start={schedule.start}",
        f"loss.consistency.end={schedule.end}"]
    run_dir = Path(cfg.out_dir) / RUNS / point.name
    return load_config(cfg.train_config, [*cfg.train_overrides, *point.overrides, *lambda_overrides, f"out_dir={run_dir}"])


def _posterior_methods(cfg: SweepConfig) -> list[str]:
    return [m for m in cfg.eval.get("methods", DEFAULT_METHODS) if m in POSTERIOR_METHODS]


def _baseline_methods(cfg: SweepConfig) -> list[str]:
    return [m for m in cfg.eval.get("methods", DEFAULT_METHODS) if m not in POSTERIOR_METHODS]


def validate(cfg: SweepConfig) -> None:
    """Every error that would stop the sweep later, found before anything is trained."""
    points = sweep_points(cfg)
    names = [p.name for p in points]
    if not points:
        raise ConfigError("the sweep has no points: set lambda_values and/or points")
    if len(set(names)) != len(names) or not all(NAME.match(n) for n in names):
        raise ConfigError(f"point names must be distinct, use only letters, digits and _.=+- and not start with "
                          f"'.', got {names}")
    if "checkpoints" in cfg.eval or "out_dir" in cfg.eval:
        raise ConfigError("eval section: leave out checkpoints and out_dir, the sweep sets them per point")
    if not _posterior_methods(cfg):
        raise ConfigError("eval.methods needs at least one of ours, ours_p, ours_a")
    eval_config(cfg, ["<point>"], _posterior_methods(cfg), Path(cfg.out_dir))
    for point in points:
        if point.checkpoint is not None and (point.lambda_c is not None or point.overrides):
            raise ConfigError(f"point {point.name}: a checkpoint point cannot also set lambda_c or overrides")
        if point.checkpoint is None:
            try:
                train_config(cfg, point)
            except ConfigError as error:
                raise ConfigError("\n".join(f"point {point.name}: {line}" for line in str(error).splitlines())) from None


def load_sweep_config(path: str | Path | None = None, overrides: list[str] = ()) -> SweepConfig:
    cfg = load_structured(SweepConfig, path, overrides)
    validate(cfg)
    return cfg


def _finished(run_dir: Path, steps: int) -> bool:
    folder = checkpoints.latest_checkpoint(run_dir)
    return folder is not None and json.loads((folder / "trainer.json").read_text())["step"] >= steps


def _evaluate_once(eval_cfg: EvalConfig) -> dict:
    """An evaluation's {"fingerprint", "header", "rows"}: from its record when one with the same
    settings and the same model weights exists (a retrained point is evaluated again), else
    evaluated and recorded."""
    record = Path(eval_cfg.out_dir) / "sweep_point.json"
    # a key that changes how a job runs, not its figures: a record made without or with it still holds
    settings = {k: v for k, v in dataclasses.asdict(eval_cfg).items() if k != "progress"}
    models = [*eval_cfg.checkpoints, *([eval_cfg.mmse_checkpoint] if "mmse" in eval_cfg.methods else [])]
    settings["weights"] = [file_digest(checkpoints.resolve(path)[0]) for path in models]
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored["fingerprint"] == fingerprint:
            return stored
    results = evaluate(eval_cfg, print_table=False)  # the sweep prints its own table
    stored = {"fingerprint": fingerprint, "header": results["header"], "rows": results["rows"]}
    if _is_main():
        write_atomically(record, json.dumps(stored, indent=2).encode())
    return stored


def _is_main() -> bool:
    return PartialState().is_main_process


def _describe(point: SweepPoint, cfg: SweepConfig) -> str:
    if point.checkpoint is not None:
        return f"checkpoint {point.checkpoint}"
    schedule = point.lambda_c or train_config(cfg, point).loss.consistency
    if schedule.kind == "constant":
        return f"{schedule.start:g}"
    return f"{schedule.kind} {schedule.start:g} -> {schedule.end:g}"


def _make_folders(cfg: SweepConfig) -> Path:
    """The sweep's out_dir with the sub-folders that its runs and evaluations write into, made before
    anything is trained: a link planted at any of them is refused (SymlinkError) instead of leading
    a run out of out_dir (out_dir itself may be a link)."""
    out_dir = output_folder("out_dir", cfg.out_dir)
    with Folder(out_dir) as out, out.child(RUNS) as runs, out.child(POINTS) as points:
        out.child(BASELINES).close()
        for point in sweep_points(cfg):
            points.child(point.name).close()
            if point.checkpoint is None:
                runs.child(point.name).close()
    return out_dir


def run_sweep(cfg: SweepConfig) -> dict:
    """Train what is missing, evaluate what is missing, then write the table and the plots."""
    out_dir = _make_folders(cfg)
    rows = []
    baselines = _baseline_methods(cfg)
    if baselines:  # their rows are labelled by method
        for row in _evaluate_once(eval_config(cfg, [], baselines, out_dir / BASELINES))["rows"]:
            rows.append({"point": row["method"], "lambda_c": "-", **row})
    for point in sweep_points(cfg):
        if point.checkpoint is not None:
            checkpoint = point.checkpoint
        else:
            train_cfg = train_config(cfg, point)
            if not _finished(Path(train_cfg.out_dir), train_cfg.steps):
                train(train_cfg)
            checkpoint = train_cfg.out_dir
        evaluated = _evaluate_once(eval_config(cfg, [checkpoint], _posterior_methods(cfg), out_dir / POINTS / point.name))
        for row in evaluated["rows"]:
            rows.append({"point": point.name, "lambda_c": _describe(point, cfg), **row})
    header = evaluated["header"]
    result = {"header": header, "rows": rows, "plots": []}
    if _is_main():
        result["plots"] = [str(p) for p in plot(rows, out_dir, random_weights=header["random_feature_weights"])]
        write_table(result, out_dir)
        explorer.write_sweep_page(result, out_dir)
    return result






def sweep_markdown(result: dict) -> str:
    header = result["header"]
    lines = ["# perception-consistency sweep", ""]
    if header["random_feature_weights"]:
        lines += ["**Random feature weights: FID values are NOT comparable to any published number.**", ""]
    lines += [f"- {k}: {header[k]}" for k in ("test_images", "settings", "fid_features", "fid_reference", "fid_repeats", "seeds")]
    lines += [f"- plot: {p}" for p in result["plots"]]
    columns = sweep_columns()
    lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in result["rows"]:
        lines.append("| " + " | ".join(format_cell(row.get(c), c) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(result: dict, out_dir: Path) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=sweep_columns(), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["rows"])
    write_atomically(out_dir / "sweep.csv", table.getvalue().encode())
    write_atomically(out_dir / "sweep.md", sweep_markdown(result).encode())


def plot(rows: list[dict], out_dir: Path, random_weights: bool) -> list[Path]:
    """One PNG per setting: FID (mean, std bars) against consistency RMSE, one marker per point and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"Ours": ("o", "tab:blue", "full"), "Ours-P": ("s", "tab:orange", "none"),
              "Ours-A": ("^", "tab:green", "full"), "JPEG (libjpeg)": ("X", "black", "full"), "MMSE": ("D", "tab:red", "full")}
    paths = []
    for setting in sorted({(r["quality"] or 0, r["subsampling"] or "stored") for r in rows}):
        chosen = [r for r in rows if (r["quality"] or 0, r["subsampling"] or "stored") == setting and r["fid"] is not None]
        figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
        for method, (marker, colour, fill) in styles.items():
            points = [r for r in chosen if r["method"] == method]
            if not points:
                continue
            axes.errorbar([r["consistency_rmse"] for r in points], [r["fid"] for r in points],
                          yerr=[r["fid_std"] or 0.0 for r in points], fmt=marker, color=colour, fillstyle=fill,
                          capsize=3, linestyle="none", label=method)
            if method == "Ours":  # one label per point, as in the paper's figure
                for r in points:
                    axes.annotate(r["point"], (r["consistency_rmse"], r["fid"]), textcoords="offset points",
                                  xytext=(5, 4), fontsize=8)
        quality, subsampling = setting
        title = f"FID vs consistency, QF {quality}, {subsampling}" if quality else "FID vs consistency, files as stored"
        if random_weights:
            title += "\nrandom Inception weights: NOT comparable"
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("consistency RMSE (gray levels)")
        axes.set_ylabel("FID")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = out_dir / f"fid_vs_consistency_q{quality}_{subsampling.replace(':', '')}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        write_atomically(path, buffer.getvalue())
        paths.append(path)
    return paths


def run_command(config: str | None, overrides: list[str], program: str, print_config: bool = False) -> int:
    """The command line's work: exit code 0, 1 (a job error) or 2 (bad config); prints the table."""

    def sweep_and_print(cfg: SweepConfig) -> None:
        result = run_sweep(cfg)
        if _is_main():
            print(sweep_markdown(result))

    if print_config:
        return show_config(program, SweepConfig, config, overrides)
    return run_with_config(program, load_sweep_config, sweep_and_print, config, overrides)
