"""Run by tests/test_training.py under torchrun with 2 CPU processes: trains the tiny
config and writes, per rank, a checksum of its generator replica and the gathered losses it logged."""

import json
import sys
from pathlib import Path

import torch

from posterior_jpeg.config import load_config
from posterior_jpeg.training import Trainer

out_dir = Path(sys.argv[1])
cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                  [f"out_dir={out_dir}", "steps=4", "log_every=2", "batch_size=2", "loss.moment_images=1",
                   "loss.moment_samples=2", "loss.moments_every=2", "loss.r1_every=2", "progress=false",
                   "val_every=1000", "checkpoint_every=1000", "device=cpu"])
trainer = Trainer(cfg)
noise = torch.randn(4).tolist()  # what this rank's noise source draws first (torch's global RNG)
trainer.run()
rank = trainer.accelerator.process_index
generator = trainer.accelerator.unwrap_model(trainer.generator)
record = {
    "rank": rank,
    "world": trainer.accelerator.num_processes,
    "params": [p.detach().double().sum().item() for p in generator.parameters()],
    "ema": [p.detach().double().sum().item() for p in trainer.ema.parameters()],
    "logged": trainer.last_logged,
    "noise": noise,
}
(out_dir / f"replica_{rank}.json").write_text(json.dumps(record))
