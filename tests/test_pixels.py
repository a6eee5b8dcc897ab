"""One helper per small job: 8-bit rounding, HWC uint8 <-> CHW float, weight files, errors, precision."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from posterior_jpeg import errors
from posterior_jpeg.commands.sample import build_parser as build_sample_parser
from posterior_jpeg.config import ConfigError, DataConfig, load_config
from posterior_jpeg.data import QualityDistribution
from posterior_jpeg.pretrained import read_state_file
from posterior_jpeg.pixels import round_to_8_bits, to_chw_float, to_hwc_uint8, to_uint8
from posterior_jpeg.precision import PRECISIONS, torch_dtype

PACKAGE = Path(__file__).resolve().parents[1] / "posterior_jpeg"
SOURCES = {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def test_8_bit_rounding_clamps_and_rounds_to_the_nearest_level():
    values = torch.tensor([-0.2, 0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 127.4 / 255, 1.0, 1.3])
    assert to_uint8(values).tolist() == [0, 0, 0, 1, 127, 255, 255]
    assert torch.equal(round_to_8_bits(values) * 255, to_uint8(values).float())


def test_hwc_uint8_and_chw_float_are_inverse():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = to_chw_float(array)
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert torch.equal(image[:, 2, 4] * 255, torch.from_numpy(array[2, 4]).float())
    assert np.array_equal(to_hwc_uint8(image), array)


def test_8_bit_rounding_is_written_once():
    """[0, 1] -> 8 bits and HWC uint8 -> CHW float only in pixels.py (the rounding grid is one choice)."""
    pattern = re.compile(r"\* 255(\.0)?\)\.round\(\)|permute\(2, 0, 1\)(\[None\])?\.float\(\) / 255")
    found = [f"{path.name}: {line.strip()}" for path, text in SOURCES.items() if path.name != "pixels.py"
             for line in text.splitlines() if pattern.search(line)]
    assert not found, found


def test_weight_files_are_read_in_one_place(tmp_path):
    loaders = [path.name for path, text in SOURCES.items() for _ in re.findall(r"torch\.load\(|\bload_file\(", text)]
    assert loaders == ["pretrained.py", "pretrained.py"]
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "w.pth")
    assert torch.equal(read_state_file(tmp_path / "w.pth")["w"], state["w"])


def test_every_error_class_lives_in_errors_py():
    elsewhere = []
    for path, text in SOURCES.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and any(getattr(base, "id", "").endswith(("Error", "Warning"))
                                                       for base in node.bases):
                if path.name != "errors.py":
                    elsewhere.append(f"{path.name}: {node.name}")
    assert not elsewhere, elsewhere
    assert issubclass(errors.ConfigError, errors.PosteriorJpegError)


def test_the_quality_config_is_the_quality_sampler():
    assert DataConfig.__dataclass_fields__["quality"].type is QualityDistribution
    cfg = load_config("configs/tiny.yaml", ["data.quality.kind=uniform", "data.quality.low=20", "data.quality.high=20"])
    assert isinstance(cfg.data.quality, QualityDistribution)
    assert cfg.data.quality.draw(np.random.default_rng(0)) == 20
    with pytest.raises(ConfigError, match="data.quality.low=0: must be an integer in \\[1, 100\\]"):
        load_config("configs/tiny.yaml", ["data.quality.low=0"])


def test_one_precision_vocabulary():
    assert load_config("configs/tiny.yaml", ["mixed_precision=bf16"]).mixed_precision == "bf16"
    with pytest.raises(ConfigError, match="written 'no' before: now 'fp32'"):
        load_config("configs/tiny.yaml", ["mixed_precision=no"])
    dtype = next(action for action in build_sample_parser()._actions if action.dest == "dtype")
    assert tuple(dtype.choices) == ("auto", *PRECISIONS)
    assert [torch_dtype(name) for name in PRECISIONS] == [torch.float32, torch.bfloat16, torch.float16]
