"""README and MODEL_CARD as a new user meets them (issue 23, item 7): README's Python blocks run as
written, in order; its test command is the one CI runs; every command they quote names a script,
config and options that exist; they state current facts, not their history."""

import argparse
import re
from pathlib import Path

import pytest
import torch

from posterior_jpeg.commands import sample, train

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "MODEL_CARD.md")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
COMMANDS = {"sample.py": sample, "train.py": train}  # the entry points whose parsers live in commands/
# Phrases of a lab notebook: a figure's history, a past machine or session, an issue's number.
HISTORY = re.compile(
    r"\bissue \d+|\bearlier session|\bprevious release|\brelease before|\bpredates\b|\bbefore this change"
    r"|\bnot re-measured|\bAVX2 only\b|\bwas \d|\bbefore:",
    re.I,
)


def text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", text("README.md"), re.S)


def quoted_commands(document: str) -> list[str]:
    """Every command line the document quotes: the lines of its fenced blocks and its inline code."""
    blocks = FENCE.findall(document)
    inline = re.findall(r"`([^`]+)`", FENCE.sub("", document))
    lines = [line for block in blocks for line in block.splitlines()]
    return [" ".join(command.split("#")[0].split()) for command in lines + inline]


def options_of(script: str) -> set[str]:
    """The options a quoted script takes: its command's parser, or for a bench script, its source."""
    if script in COMMANDS:
        return set(COMMANDS[script].configure(argparse.ArgumentParser())._option_string_actions)
    return set(re.findall(r'"(--[a-z][a-z0-9-]*)"', text(script)))


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


def test_readme_test_command_is_the_one_ci_runs():
    section = text("README.md").split("\n## Test\n", 1)[1].split("\n## ", 1)[0]
    (command,) = FENCE.findall(section)
    ci_lines = [line for line in text(".ci/run").splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == command.strip() == "python -m pytest"


@pytest.mark.parametrize("name", DOCS)
def test_quoted_scripts_configs_and_options_exist(name):
    checked = 0
    for command in quoted_commands(text(name)):
        for path in re.findall(r"\b((?:bench|examples|configs|tests)/[\w./-]+\.(?:py|yaml|sbatch|png|jpg))", command):
            assert (ROOT / path).is_file(), f"{name}: `{command}` names {path}, which does not exist"
        script = re.search(r"\b((?:bench|examples|tests)/\w+\.py|sample\.py|train\.py)\b", command)
        if script is None:
            continue
        options = options_of(script.group(1))
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command[script.end():]):
            assert option in options, f"{name}: `{command}`: {script.group(1)} has no option {option}"
            checked += 1
    assert checked > 5


@pytest.mark.parametrize("name", DOCS)
def test_docs_state_current_facts_not_their_history(name):
    found = [match.group(0) for match in HISTORY.finditer(text(name))]
    assert found == [], f"{name}: {found}"


def test_history_pattern_catches_a_lab_notebook():
    notebook = "0.63 -> 0.71 (was 0.27 in the previous release; issue 20), measured in an earlier session"
    assert len(HISTORY.findall(notebook)) == 4
