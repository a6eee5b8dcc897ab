"""Checkpoint folders: what train.py writes and what the sampler and the trainer read back.

A run folder holds one folder per checkpoint, named by its step (checkpoints/step_00001000/, ...),
and a `latest` file that names the newest one. A checkpoint holds:
- generator_ema.safetensors: the EMA of G, the weights used for inference;
- model.yaml: what inference needs to rebuild G (a format version and each network's section, which
  names its architecture in `arch:`, see models/registry.py);
- config.yaml: the whole training config, as provenance (inference does not read it);
- generator.safetensors, critic.safetensors, optimizer_*.safetensors, random_states_<rank>.safetensors
  and trainer.json: the training state, for exact resume.
Every file is safetensors, YAML or JSON: nothing this module reads is unpickled, so a checkpoint or
run folder from someone else cannot run code.

Checkpoints written before model.yaml existed (config.yaml only) are read through migration 0 -> 1:
the `generator` section of their config.yaml (and `mean_generator`, where an anchored run of that
time wrote M's), alone, is the model config; every other key of it is
ignored, so renaming or removing a training key breaks no model. Their training state (Accelerate's,
pickled) is never loaded: such a run continues as a new run with init_from.
Migration 1 -> 2: format 1 named no architectures; each of its sections is the one its kind had then
(residual, band_spread), which is what a section without `arch` means (`registry.network_field`).
Migration 2 -> 3: the posterior mean M's section, `mean_generator` before, is `posterior_mean`.
"""

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import write_atomically
from .config import ConfigError, TrainConfig, build_structured, read_yaml, to_yaml
from .errors import CheckpointError
from .models.generator import AnchoredGenerator, GeneratorConfig
from .models.registry import build, network_field
from .models.spread import SpreadConfig

EMA = "generator_ema"
WEIGHTS = f"{EMA}.safetensors"
MODEL = "model.yaml"
CONFIG = "config.yaml"
TRAINER = "trainer.json"
LATEST = "latest"
CHECKPOINTS = "checkpoints"  # the run folder's folder of checkpoints
MODEL_FORMAT = 3  # what this version writes; it reads MODEL_FORMATS
MODEL_FORMATS = (1, 2, 3)
MODEL_HEADER = "# posterior-jpeg model file: the architecture of G for the weights beside it\n"
_LISTED = 4  # keys named in a mismatch message before "and N more"


@dataclass
class ModelFile:
    """model.yaml: the format version and the architecture of G: `generator` alone, or, for an
    anchored G = S(z, M(y, q), q), S in `generator` and M in `posterior_mean`; antithetic: the
    anchored G is M + (S(z) - S(-z)) / 2 (see AnchoredGenerator). Each network's section names its
    architecture in `arch` (models/registry.py)."""

    format_version: int = MODEL_FORMAT
    generator: Any = network_field("generator", GeneratorConfig)
    posterior_mean: Any = network_field("generator", GeneratorConfig, optional=True)
    antithetic: bool = False
    spread: Any = network_field("spread", SpreadConfig, optional=True)  # the spread network V that sets the samples' variance (models/spread.py)

    def networks(self) -> list:
        """The config of each network the model holds."""
        return [c for c in (self.generator, self.posterior_mean, self.spread) if c is not None]

    def __post_init__(self):
        if self.antithetic and self.posterior_mean is None:
            raise ConfigError("antithetic needs an anchored model (a posterior_mean section)")
        if self.spread is not None and self.posterior_mean is None:
            raise ConfigError("spread needs an anchored model (a posterior_mean section)")


def assemble(generator, posterior_mean: torch.nn.Module | None = None, antithetic: bool = False,
             spread=None) -> torch.nn.Module:
    """A freshly initialised G from its parts' configs, for a model file and a training run alike:
    the network alone, or S (and V) over the posterior mean M given. V is built before S: a training
    run's seed draws their initial weights in that order."""
    if posterior_mean is None:
        return build(generator)
    spread_net = None if spread is None else build(spread)
    return AnchoredGenerator(posterior_mean, build(generator), antithetic, spread_net)


def build_model(model: ModelFile) -> torch.nn.Module:
    """A freshly initialised G as a model file describes it: one network, or S over a frozen M."""
    posterior_mean = None if model.posterior_mean is None else build(model.posterior_mean)
    return assemble(model.generator, posterior_mean, model.antithetic, model.spread)


def model_file(generator: torch.nn.Module) -> ModelFile:
    if isinstance(generator, AnchoredGenerator):
        return ModelFile(generator=generator.detail.config, posterior_mean=generator.mean.config,
                         antithetic=generator.antithetic,
                         spread=None if generator.spread is None else generator.spread.config)
    return ModelFile(generator=generator.config)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def _step(name: str) -> int | None:
    """The step of a checkpoint folder's name, None for any other name (paths included)."""
    match = re.fullmatch(r"step_(\d{8,})", name, re.ASCII)
    return int(match.group(1)) if match and checkpoint_name(int(match.group(1))) == name else None


def _step_folders(root: Path) -> dict[int, Path]:
    """The checkpoint folders of checkpoints/ by step."""
    found = {}
    for path in root.iterdir() if root.is_dir() else []:
        step = _step(path.name)
        if step is not None and path.is_dir():
            found[step] = path
    return found


def _remove(path: Path) -> None:
    """Delete a checkpoint folder; a link is removed, never what it leads to."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path)


def _read_latest(root: Path) -> tuple[str | None, list[str]]:
    """The checkpoint name in checkpoints/latest if it is one (a bare name: never a path), and a
    note when it is not."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None, [f"{pointer}: missing, ignored"] if pointer.exists() or _step_folders(root) else []
    with pointer.open("rb") as handle:
        text = handle.read(64).decode("ascii", errors="replace").strip()
    if _step(text) is None:
        return None, [f"{pointer}: does not name a checkpoint folder ({text[:32]!r}), ignored"]
    if not (root / text).is_dir():
        return None, [f"{pointer}: names {text}, which does not exist, ignored"]
    return text, []


def checkpoint_order(run_dir: str | Path) -> tuple[list[Path], list[str]]:
    """The checkpoints of a run folder in the order to try them, and notes on what was left out.

    The one `latest` names comes first, then those of earlier steps, newest first. Folders of later
    steps are left out: they were left by a run that was restarted from an earlier checkpoint.
    Without a usable `latest`, every checkpoint, newest first. Folders whose real path is outside
    checkpoints/ (links) are never used."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return [], []
    folders = _step_folders(root)
    latest, notes = _read_latest(root)
    steps = sorted(folders, reverse=True)
    if latest is not None:
        steps = [s for s in steps if s <= _step(latest)]
    inside = root.resolve()
    order = []
    for step in steps:
        if folders[step].resolve().parent != inside:
            notes.append(f"{folders[step]}: leads outside {root}, ignored")
        else:
            order.append(folders[step])
    return order, notes


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint of a run folder that has its inference weights, or None."""
    order, _ = checkpoint_order(run_dir)
    return next((folder for folder in order if (folder / WEIGHTS).is_file()), None)


def publish_checkpoint(staging: Path, run_dir: Path, step: int, keep: int) -> Path:
    """Move a fully written staging folder into place, point `latest` at it, and prune: keep the
    newest `keep` checkpoints up to this step, this one included (keep < 1: all). Folders of later
    steps (see checkpoint_order) are left alone until the run writes over them."""
    root = run_dir / CHECKPOINTS
    final = root / checkpoint_name(step)
    if final.is_symlink() or final.exists():
        _remove(final)
    os.replace(staging, final)
    write_atomically(root / LATEST, final.name.encode())
    if keep > 0:
        folders = _step_folders(root)
        older = sorted(s for s in folders if s < step)
        for old in older[: max(len(older) - (keep - 1), 0)]:
            _remove(folders[old])
    return final


# ----------------------------------------------------------------------------- tensors
def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata)


def read_tensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and string metadata of a safetensors file, or a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), "pt", device=str(device)) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def check_fits(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """CheckpointError, on one line with the keys, unless `tensors` has exactly the keys and shapes
    of `expected` (a module's state_dict)."""
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    shapes = [k for k in expected.keys() & tensors.keys() if tensors[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
    if shapes:
        first = sorted(shapes)[0]
        problems.append(f"{len(shapes)} of another shape ({_listed(shapes)}; {first}: "
                        f"{list(tensors[first].shape)} in the file, {list(expected[first].shape)} in {what})")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {what}: {'; '.join(problems)}")


def load_weights(module: torch.nn.Module, path: Path, what: str, prefix: str = "") -> None:
    """Load a safetensors state dict (its keys under `prefix`, the prefix dropped) into `module`
    after checking that it fits (init_from)."""
    tensors, _ = read_tensors(path)
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    check_fits(tensors, module.state_dict(), path, what)
    module.load_state_dict(tensors)


# ----------------------------------------------------------------------------- inference
def save_inference_files(folder: Path, generator: torch.nn.Module, config: TrainConfig) -> None:
    """The EMA weights, model.yaml (what inference reads) and config.yaml (provenance)."""
    save_tensors(folder / WEIGHTS, generator.state_dict())
    (folder / MODEL).write_text(MODEL_HEADER + to_yaml(model_file(generator)))
    (folder / CONFIG).write_text(to_yaml(config))


def _section(node: DictConfig, key: str, path: Path) -> DictConfig:
    value = node.get(key)
    if not isinstance(value, DictConfig):
        raise CheckpointError(f"{path}: no `{key}` section (a mapping)")
    return value


def model_config(folder: Path) -> ModelFile:
    """G's architecture for the weights in `folder`: model.yaml, else migration from config.yaml."""
    model, config = folder / MODEL, folder / CONFIG
    try:
        if model.is_file():
            node = read_yaml(model)
            version = node.get("format_version")
            if version not in MODEL_FORMATS:
                raise CheckpointError(f"{model}: format_version {version!r} is not one of "
                                      f"{', '.join(map(str, MODEL_FORMATS))} (written by another version of posterior-jpeg?)")
            _section(node, "generator", model)
            if version < 3 and "mean_generator" in node:  # migration 2 -> 3
                node.posterior_mean = node.pop("mean_generator")
            node.format_version = MODEL_FORMAT  # migrations 1 -> 2 -> 3: see the module's note
            return build_structured(ModelFile, [node], model)
        if config.is_file():  # migration 0 -> 1: the generator (and mean_generator) sections of the training config
            node = read_yaml(config)
            mean = node.get("mean_generator")
            sections = {"generator": _section(node, "generator", config),
                        "posterior_mean": None if mean is None else _section(node, "mean_generator", config),
                        "antithetic": mean is not None and bool(node.get("antithetic", False))}  # only an anchored G mirrors S
            return build_structured(ModelFile, [OmegaConf.create(sections)], config)
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    raise CheckpointError(f"{folder}: neither {MODEL} nor {CONFIG} beside {WEIGHTS}")


def resolve(path: str | Path) -> tuple[Path, ModelFile]:
    """A run folder (its latest checkpoint), a checkpoint folder or a weights file -> (weights, G's model file)."""
    path = Path(path)
    if path.is_dir() and (path / CHECKPOINTS).is_dir():
        folder = latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"{path}: run folder has no complete checkpoint yet")
        path = folder
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise CheckpointError(f"{path}: no checkpoint here (expected a run folder, a checkpoint folder or {WEIGHTS})")
    return weights, model_config(weights.parent)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelFile]:
    """Build G from a checkpoint's model file and load its EMA weights (safetensors only).

    The config is checked against the weights file before G is built for real (on the meta device,
    which allocates nothing), so absurd sizes are refused instead of exhausting memory."""
    weights, model = resolve(path)
    tensors, _ = read_tensors(weights, device)
    what = f"the generator {MODEL if (weights.parent / MODEL).is_file() else CONFIG} describes"
    blocks = sum(getattr(network, "blocks", 0) for network in model.networks())  # where a config counts its blocks
    if blocks > len(tensors):  # every block has weights; building 10**9 empty blocks would hang
        raise CheckpointError(f"{weights}: weights do not fit {what}: {len(tensors)} tensors cannot hold {blocks} blocks")
    try:
        with torch.device("meta"):
            expected = build_model(model).state_dict()
    except RuntimeError as error:  # sizes whose storage overflows
        raise CheckpointError(f"{weights}: {what} cannot be built ({str(error).splitlines()[0]})") from None
    check_fits(tensors, expected, weights, what)
    generator = build_model(model)
    generator.load_state_dict(tensors)
    return generator.to(device).eval(), model


# ----------------------------------------------------------------------------- training state
@dataclass
class RandomStates:
    """One process's random number generators: python, numpy, torch on the CPU and on each GPU."""

    python: tuple
    numpy: tuple
    torch: torch.Tensor
    cuda: list[torch.Tensor]

    @classmethod
    def capture(cls) -> "RandomStates":
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)


@dataclass
class TrainingState:
    """A checkpoint's training state, read and checked against the run before anything is changed."""

    step: int
    models: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict]
    scaler: dict | None
    random: RandomStates


def _random_file(rank: int) -> str:
    return f"random_states_{rank}.safetensors"


def save_random_states(folder: Path, rank: int) -> None:
    """This process's random states (every process writes its own), as tensors + JSON scalars."""
    states = RandomStates.capture()
    version, words, gauss = states.python
    _, keys, position, has_gauss, cached = states.numpy
    tensors = {"python": torch.tensor(words, dtype=torch.int64), "numpy": torch.from_numpy(keys.astype(np.int64)),
               "torch": states.torch, **{f"cuda.{i}": state for i, state in enumerate(states.cuda)}}
    metadata = {"python": json.dumps([version, gauss]), "numpy": json.dumps([int(position), int(has_gauss), float(cached)])}
    save_tensors(folder / _random_file(rank), tensors, metadata)


def save_training_state(folder: Path, step: int, models: dict, optimizers: dict, scaler) -> None:
    """What exact resume needs besides the EMA (main process): each model's weights, each
    optimizer's tensors with its param groups as JSON metadata, the step and the fp16 loss scale."""
    for name, model in models.items():
        save_tensors(folder / f"{name}.safetensors", model.state_dict())
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        tensors = {f"{index}.{key}": value for index, entries in state["state"].items() for key, value in entries.items()}
        save_tensors(folder / f"{name}.safetensors", tensors, {"param_groups": json.dumps(state["param_groups"])})
    record = {"step": step, "scaler": scaler.state_dict() if scaler is not None else None}
    (folder / TRAINER).write_text(json.dumps(record))


def _read_trainer(folder: Path, scaler) -> dict:
    path = folder / TRAINER
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error})") from None
    step = record.get("step") if isinstance(record, dict) else None
    if type(step) is not int or step < 0:
        raise CheckpointError(f"{path}: no step count in it")
    named = _step(folder.name)
    if named is not None and named != step:
        raise CheckpointError(f"{path}: says step {step}, the folder's name another")
    if scaler is not None and not isinstance(record.get("scaler"), dict):
        raise CheckpointError(f"{path}: no fp16 loss-scaler state (written by a run without fp16?)")
    return record


def _read_optimizer(path: Path, optimizer, what: str) -> dict:
    """An optimizer's state dict from its file, checked against `optimizer`'s parameters."""
    tensors, metadata = read_tensors(path)
    try:
        groups = json.loads(metadata["param_groups"])
    except (KeyError, ValueError):
        raise CheckpointError(f"{path}: no param_groups metadata") from None
    expected = optimizer.state_dict()["param_groups"]
    if not (isinstance(groups, list) and len(groups) == len(expected) and all(
            isinstance(g, dict) and g.keys() == e.keys() and g["params"] == e["params"] for g, e in zip(groups, expected))):
        raise CheckpointError(f"{path}: parameter groups do not fit {what}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        match = re.fullmatch(r"(\d+)\.(\w+)", key, re.ASCII)
        index = int(match.group(1)) if match else len(params)
        if index >= len(params) or (value.dim() > 0 and value.shape != params[index].shape):
            raise CheckpointError(f"{path}: state {key} does not fit {what}")
        state.setdefault(index, {})[match.group(2)] = value
    return {"state": state, "param_groups": groups}


def _read_random_states(path: Path) -> RandomStates:
    """Random states from their file, each tried on a throwaway generator first."""
    tensors, metadata = read_tensors(path)
    try:
        version, gauss = json.loads(metadata["python"])
        position, has_gauss, cached = json.loads(metadata["numpy"])
        cuda = [tensors[f"cuda.{i}"] for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
        states = RandomStates((version, tuple(tensors["python"].tolist()), gauss),
                              ("MT19937", tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, cached),
                              tensors["torch"], cuda)
        random.Random().setstate(states.python)
        np.random.RandomState().set_state(states.numpy)
        torch.Generator().set_state(states.torch)
    except KeyError as error:
        raise CheckpointError(f"{path}: random state {error} missing") from None
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a usable random state ({str(error).splitlines()[0]})") from None
    return states


def read_training_state(folder: Path, models: dict, optimizers: dict, scaler, rank: int, world: int) -> TrainingState:
    """Read every file of a checkpoint and check it against this run's models and optimizers,
    changing nothing: a CheckpointError names the first file that is missing, unreadable or does
    not fit. Every process checks the random states of all processes, so all make the same choice."""
    if (folder / "model.safetensors").is_file() and not (folder / "generator.safetensors").is_file():
        raise CheckpointError(f"{folder}: written by an older posterior-jpeg (Accelerate's pickled state, never "
                              f"loaded); start a new run from its weights with init_from={folder}")
    record = _read_trainer(folder, scaler)
    weights = {}
    for name, model in models.items():
        path = folder / f"{name}.safetensors"
        tensors, _ = read_tensors(path)
        check_fits(tensors, model.state_dict(), path, f"this run's {name}")
        weights[name] = tensors
    states = {name: _read_optimizer(folder / f"{name}.safetensors", optimizer, f"this run's {name}")
              for name, optimizer in optimizers.items()}
    randoms = [_read_random_states(folder / _random_file(r)) for r in range(world)]
    return TrainingState(record["step"], weights, states, record["scaler"], randoms[rank])


def apply_training_state(state: TrainingState, models: dict, optimizers: dict, scaler) -> None:
    for name, model in models.items():
        model.load_state_dict(state.models[name])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state.optimizers[name])
    if scaler is not None:
        scaler.load_state_dict(state.scaler)
    state.random.restore()
