"""Sampler: several posterior reconstructions of a JPEG file, each exactly consistent with it."""

from pathlib import Path

import torch

from . import checkpoints
from .jpeg.file import JpegFile
from .jpeg.projection import project as project_onto
from .models.generator import Generator, seeded_generators

DEFAULT_MODEL = Path(__file__).resolve().parent / "weights" / "default"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class Sampler:
    """Draws samples G(z_seed, y, q) for a JpegFile and projects them onto it."""

    def __init__(self, generator: Generator, source: str, device="cpu", dtype=torch.float32, batch_size: int = 4):
        self.generator = generator.to(device).eval()
        self.source = source
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path=None, device: str = "auto", dtype: str = "auto", batch_size: int = 4) -> "Sampler":
        """path: a run folder (its latest checkpoint), a checkpoint folder, a weights file, or None for
        the model bundled with the package."""
        if path is None:
            if not (DEFAULT_MODEL / checkpoints.WEIGHTS).is_file():
                raise checkpoints.CheckpointError(
                    "no default model is bundled with this installation; pass a checkpoint "
                    "(--checkpoint RUN_DIR, a folder written by train.py)"
                )
            path = DEFAULT_MODEL
        chosen = _device(device)
        generator, _ = checkpoints.load_generator(path, chosen)
        return cls(generator, str(path), chosen, _dtype(dtype, chosen), batch_size)

    @torch.no_grad()
    def sample(self, jpeg: JpegFile, n: int = 8, seed: int = 0, project: bool = True) -> torch.Tensor:
        """[n, 3, H, W] in [0, 1] on the CPU: sample i uses seed + i, whatever the batch size.

        The input y is the file decoded from its coefficients, on the 8-bit grid as in training."""
        y = (jpeg.decode(device=self.device) * 255).round() / 255
        tables = jpeg.qtable_tensor(self.device)
        outputs = []
        for start in range(0, n, self.batch_size):
            seeds = list(range(seed + start, seed + min(n, start + self.batch_size)))
            count = len(seeds)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                batch = self.generator(y.expand(count, -1, -1, -1), tables.expand(count, -1, -1, -1),
                                       seeded_generators(seeds, "cpu"))
            outputs.append(batch.float().clamp(0, 1).cpu())
        samples = torch.cat(outputs)
        return project_onto(samples, jpeg) if project else samples
