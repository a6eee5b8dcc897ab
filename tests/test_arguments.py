"""The command lines answer before torch loads, and show every config key with its meaning."""

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from posterior_jpeg.config import TrainConfig, key_meanings, load_config
from posterior_jpeg.evaluate import EvalConfig
from posterior_jpeg.sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "omegaconf")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _console_script(target: str) -> list[str]:
    module, function = target.split(":")
    return ["-c", f"import sys; from {module} import {function}; sys.exit({function}())"]


HELP_COMMANDS = [
    ["train.py"], ["sample.py"], ["-m", "posterior_jpeg"],
    *(["-m", "posterior_jpeg", command] for command in ("info", "project", "eval", "sweep", "sample", "weights", "pack")),
    ["-m", "posterior_jpeg", "weights", "fetch"],
    *(_console_script(target) for target in PYPROJECT["project"]["scripts"].values()),
]
ARGUMENT_ERRORS = [
    ["sample.py", "photo.jpg", "-o", "out", "--tile", "17"],
    ["sample.py", "photo.jpg"],  # -o missing
    ["train.py", "--no-such-flag"],
    ["-m", "posterior_jpeg", "project", "a.jpg"],
    ["sample.py", "photo.jpg", "-o", "out", "--quality", "500"],
    ["sample.py", "photo.jpg", "-o", "README.md"],  # a file, not a folder
    ["sample.py", "photo.jpg", "-o", "out", "--seed", str(2**64)],
    ["sample.py", "photo.jpg", "-o", "out", "--grid", "-n", "65"],
    ["-m", "posterior_jpeg", "project", "a.jpg", "b.png", "-o", "a.jpg"],
    ["-m", "posterior_jpeg", "weights", "fetch", "DIR", "--only", "resnet50"],
    ["-m", "posterior_jpeg", "pack", "photos", "shards", "--shard-size", "12"],
]


def _imported(command: list[str], *extra: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime COMMAND EXTRA` in the repo; its result and the top-level packages it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", *command, *extra], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0]
               for line in result.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    return result, modules


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_answers_without_loading_torch(command):
    result, modules = _imported(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
    assert not modules & set(HEAVY), f"--help imported {sorted(modules & set(HEAVY))}"


@pytest.mark.parametrize("command", ARGUMENT_ERRORS, ids=" ".join)
def test_argument_errors_answer_without_loading_torch(command):
    result, modules = _imported(command)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert not modules & set(HEAVY), f"an argument error imported {sorted(modules & set(HEAVY))}"


def _schemas(schema: type) -> list[type]:
    """`schema` and every config dataclass nested in it."""
    found = [schema]
    node = OmegaConf.structured(schema)
    for key in node:
        child = node._get_node(key)
        if OmegaConf.is_dict(child) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            found += _schemas(OmegaConf.get_type(child))
    return found


@pytest.mark.parametrize("root", [TrainConfig, EvalConfig, SweepConfig], ids=lambda root: root.__name__)
def test_every_config_key_has_a_meaning(root):
    for schema in _schemas(root):
        missing = {item.name for item in dataclasses.fields(schema)} - set(key_meanings(schema))
        assert not missing, f"{schema.__name__}: keys without a comment of meaning: {sorted(missing)}"


def _printed(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_print_config_lists_every_key_with_its_meaning_and_reads_back(tmp_path):
    printed = _printed(["train.py", "--config", "configs/tiny.yaml", "--print-config", "steps=7",
                        "loss.consistency.end=3.5"])
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    keys = [line.split(":")[0].strip() for line in lines]
    for schema in _schemas(TrainConfig):
        assert {item.name for item in dataclasses.fields(schema)} <= set(keys)
    assert all("  # " in line for line in lines), [line for line in lines if "  # " not in line]
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed.stdout)
    assert load_config(saved) == load_config("configs/tiny.yaml", ["steps=7", "loss.consistency.end=3.5"])


@pytest.mark.parametrize("command", [["-m", "posterior_jpeg", "eval"], ["-m", "posterior_jpeg", "sweep"]], ids=" ".join)
def test_print_config_lists_an_incomplete_config(command):
    """The keys are there to be read before a config is complete (no checkpoints, no test images)."""
    printed = _printed([*command, "--print-config"])
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout and all("  # " in line for line in printed.stdout.splitlines())


def test_print_config_refuses_an_unknown_key():
    printed = _printed(["train.py", "--print-config", "no_such_key=1"])
    assert printed.returncode == 2
    assert printed.stderr.strip() == "train.py: command line: Key 'no_such_key' not in 'TrainConfig'"


@pytest.mark.parametrize("command", [["train.py"], ["-m", "posterior_jpeg", "eval"], ["-m", "posterior_jpeg", "sweep"]],
                         ids=" ".join)
def test_help_says_how_to_see_the_keys(command):
    assert "--print-config" in _printed([*command, "--help"]).stdout


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, whether inside a function) of a package file, relative imports resolved to
    posterior_jpeg.*."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []

    def visit(node, deferred):
        for child in ast.iter_child_nodes(node):
            inside = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                base = package.rsplit(".", child.level - 1)[0] if child.level else ""
                module = ".".join(filter(None, [base, child.module or ""]))
                found.extend((module if child.module else f"{module}.{alias.name}", inside)
                             for alias in child.names)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, inside) for alias in child.names)
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def test_jobs_and_the_library_never_import_the_commands():
    """Commands stand above jobs, jobs above the library: no module outside `commands` imports it
    (not even under `if __name__ == "__main__"`); and the commands import nothing heavy at module level (their jobs load after parsing)."""
    package = ROOT / "posterior_jpeg"
    for path in package.rglob("*.py"):
        if "commands" in path.relative_to(package).parts or path.name == "__main__.py":
            continue
        upward = [name for name, _ in _imports(path) if name.startswith("posterior_jpeg.commands")]
        assert not upward, f"{path.relative_to(ROOT)} imports {upward}"
    for path in (package / "commands").glob("*.py"):
        heavy = {name.split(".")[0] for name, deferred in _imports(path) if not deferred} & set(HEAVY)
        jobs = [name for name, deferred in _imports(path) if not deferred and name.startswith("posterior_jpeg")
                and name.split(".")[1] not in ("commands", "options", "precision", "tiling")]
        assert not jobs, f"{path.relative_to(ROOT)} imports {jobs} before parsing"
        assert not heavy, f"{path.relative_to(ROOT)} imports {heavy} at parse time"


@pytest.mark.parametrize("job, command", [("evaluate", "eval"), ("sweep", "sweep")])
def test_a_job_run_as_a_module_names_the_command_in_one_line(job, command):
    """`python -m posterior_jpeg.evaluate` (the old spelling) says what to type instead, before torch loads."""
    result, modules = _imported(["-m", f"posterior_jpeg.{job}", "--help"])
    assert result.returncode == 2 and not modules & set(HEAVY)
    said = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert said == [f"python -m posterior_jpeg.{job} is now python -m posterior_jpeg {command} "
                    f"(or posterior-jpeg {command})"]


def test_the_package_runs_every_command_as_a_module():
    result = subprocess.run([sys.executable, "-m", "posterior_jpeg", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    for command in ("sample", "train", "eval", "sweep", "info", "project", "pack"):
        assert command in result.stdout
