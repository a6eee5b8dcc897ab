"""Checkpoint folders: what train.py writes and what the sampler and the trainer read back.

A run folder holds one folder per checkpoint, named by its step (checkpoints/step_00001000/, ...),
and a `latest` pointer. Each checkpoint has the inference weights (generator_ema.safetensors, the
EMA of G), the run's config.yaml, and the training state that Accelerate saves for exact resume.
Only safetensors and YAML are read for inference, so loading a model never unpickles anything.
"""

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import write_atomically
from .config import TrainConfig, from_yaml, to_yaml
from .errors import PosteriorJpegError
from .models.generator import AnchoredGenerator, Generator, GeneratorConfig, build_generator

WEIGHTS = "generator_ema.safetensors"
CONFIG = "config.yaml"
LATEST = "latest"


class CheckpointError(PosteriorJpegError, FileNotFoundError):
    """A checkpoint path that holds no usable checkpoint."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if (folder / WEIGHTS).is_file() else None


def publish_checkpoint(staging: Path, run_dir: Path, step: int, keep: int) -> Path:
    """Move a fully written staging folder into place, point `latest` at it, prune old ones."""
    root = run_dir / "checkpoints"
    final = root / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    write_atomically(root / LATEST, final.name.encode())
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def save_inference_files(folder: Path, generator: Generator, config: TrainConfig) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(to_yaml(config))


def resolve(path: str | Path) -> tuple[Path, TrainConfig]:
    """A run folder (its latest checkpoint), a checkpoint folder or a weights file -> (weights, config)."""
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        folder = latest_checkpoint(path)
        if folder is None:
            raise CheckpointError(f"{path}: run folder has no complete checkpoint yet")
        path = folder
    weights = path / WEIGHTS if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (expected a run folder, a checkpoint folder or {WEIGHTS})")
    config_path = weights.parent / CONFIG
    if not config_path.is_file():
        raise CheckpointError(f"{weights}: {CONFIG} missing beside the weights")
    return weights, from_yaml(config_path.read_text())


def build_model(config: TrainConfig) -> Generator | AnchoredGenerator:
    """A freshly initialised G as a config describes it: one network, or S over a frozen M."""
    generator = build_generator(GeneratorConfig(**vars(config.generator)))
    if config.mean_generator is None:
        return generator
    return AnchoredGenerator(build_generator(GeneratorConfig(**vars(config.mean_generator))), generator)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[Generator | AnchoredGenerator, TrainConfig]:
    """Build G from a checkpoint's config and load its EMA weights (safetensors only)."""
    weights, config = resolve(path)
    generator = build_model(config)
    try:
        generator.load_state_dict(load_file(str(weights), device=str(device)))
    except RuntimeError as error:
        raise CheckpointError(f"{weights}: weights do not fit the config beside them ({error})".splitlines()[0]) from None
    return generator.to(device).eval(), config
