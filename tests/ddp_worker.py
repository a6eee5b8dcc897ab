"""Run by tests/test_training.py under torchrun (CPU processes, gloo): `ddp_worker.py OUT_DIR
[key=value ...]` trains the tiny config with those overrides and writes, per rank, checksums of its
generator replica, the gathered losses it logged, its first noise draws and a hash of every training
crop it was given."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from posterior_jpeg.config import load_config
from posterior_jpeg.training import Trainer

out_dir = Path(sys.argv[1])
cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                  [f"out_dir={out_dir}", "progress=false", "device=cpu", *sys.argv[2:]])
trainer = Trainer(cfg)
with torch.random.fork_rng(devices=[]):  # the run must draw what it would draw without this worker's probes
    noise = torch.randn(4).tolist()  # what this rank's noise source draws first (torch's global RNG)
crops, train_step = [], trainer.train_step


def recording_step(batch):
    crops.extend(hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in batch["x"])
    return train_step(batch)


trainer.train_step = recording_step
trainer.run()
rank = trainer.accelerator.process_index
generator = trainer.accelerator.unwrap_model(trainer.generator)
record = {
    "rank": rank,
    "world": trainer.accelerator.num_processes,
    "node": int(os.environ["GROUP_RANK"]),  # torchrun's node rank
    "local_rank": trainer.accelerator.local_process_index,
    "params": [p.detach().double().sum().item() for p in generator.parameters()],
    "ema": [p.detach().double().sum().item() for p in trainer.ema.parameters()],
    "logged": trainer.last_logged,
    "noise": noise,
    "crops": crops,
}
(out_dir / f"replica_{rank}.json").write_text(json.dumps(record))
