"""A metric is declared once: one registered from this file alone is measured by an evaluation and
shows in its JSON, CSV and markdown, in the sweep's columns and in bench/val_yardsticks.py's lines."""

import csv
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from posterior_jpeg import evaluate as ev
from posterior_jpeg.commands import main as cli
from posterior_jpeg.data import synthetic_image
from posterior_jpeg.metrics.registry import METRICS, Metric, Subject, register, table_metrics
from posterior_jpeg.report import sweep_columns

ROOT = Path(__file__).resolve().parents[1]


def _brightness(subject: Subject) -> list[float]:
    """Mean level of each output over the original's: a metric no module of the package knows."""
    return (subject.outputs.mean(dim=(1, 2, 3)) / subject.original.mean()).tolist()


@pytest.fixture
def toy():
    metric = register(Metric("toy_brightness", "toy brightness", _brightness, frozenset({"original"}), "higher",
                             format=".3f", sweep=True))
    yield metric
    del METRICS[metric.name]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "truth"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(2):
        Image.fromarray(synthetic_image(rng, 64)).save(folder / f"photo_{i}.png")  # naturalness: one 64x64 patch
    return folder


def test_a_registered_metric_is_a_column_of_every_table(toy, photos, tmp_path):
    out = tmp_path / "eval"
    overrides = [f"data.ground_truth={photos}", "methods=[jpeg]", "features.inception=random", "features.lpips=random",
                 f"fid_cache={tmp_path / 'cache'}", f"out_dir={out}", "device=cpu", "progress=false"]
    assert cli(["eval", "--config", str(ROOT / "configs" / "eval.yaml"), *overrides]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    test_set = ev.TestSet(ev.load_eval_config(None, overrides).data, ev.Setting(10, "4:2:0"))
    items = [test_set.item(i) for i in range(len(test_set))]
    by_hand = np.mean([(item.decoded.mean() / item.ground_truth.mean()).item() for item in items])
    assert row["toy_brightness"] == pytest.approx(by_hand, rel=1e-6)
    with open(out / "results.csv") as table:
        (written,) = csv.DictReader(table)
    assert list(written)[-1] == "toy_brightness" and float(written["toy_brightness"]) == pytest.approx(by_hand)
    markdown = (out / "results.md").read_text()
    assert "| toy brightness ↑ |" in markdown and f"| {by_hand:.3f} |" in markdown
    assert sweep_columns()[-1] == "toy_brightness" and table_metrics()[-1] is toy


def test_a_registered_metric_is_a_yardstick_where_it_has_what_it_needs(toy, photos, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    yardsticks = importlib.import_module("val_yardsticks")
    monkeypatch.setattr(sys, "argv", ["val_yardsticks.py", "--no-model", "--qualities", "90", "--data", str(photos),
                                      "--peers", str(photos / "none.json")])
    yardsticks.main()
    lines = {line["method"]: line for line in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "toy_brightness" not in lines["ground truth"]  # the original is not measured against itself
    assert lines["libjpeg"]["toy_brightness"] == pytest.approx(1.0, abs=0.05)
    assert {"psnr", "agreement", "consistency_rmse", "blockiness", "peak8"} <= set(lines["libjpeg"])


def test_a_metric_is_measured_only_where_its_needs_are_met(toy):
    import torch

    images = torch.rand(3, 3, 16, 16)
    assert not toy.applies(Subject(images))
    assert toy.applies(Subject(images, original=images[:1]))
    assert not METRICS["pixel_std"].applies(Subject(images, repeats=3, diversity=0))
    assert METRICS["pixel_std"].applies(Subject(images, repeats=1, diversity=2))


def test_a_name_is_registered_once_and_needs_are_known(toy):
    with pytest.raises(ValueError, match="registered already"):
        register(Metric("toy_brightness", "again", _brightness))
    with pytest.raises(ValueError, match="needs come from"):
        register(Metric("toy_other", "other", _brightness, frozenset({"a crystal ball"})))
    assert "toy_other" not in METRICS
