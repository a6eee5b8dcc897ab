"""README's Python blocks run as written, in order, as a new user would paste them (issue 23, item 7)."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_readme_python_blocks_run_in_order(monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3  # the JPEG core, sampling from Python, the yardsticks
    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    jf, x, samples = namespace["jf"], namespace["x"], namespace["samples"]
    assert x.shape[1:] == samples.shape[1:] == (3, *jf.size)
    assert namespace["pj"].metrics.coefficient_agreement(samples, jf).differing_coefficients == 0  # exact outputs
