"""Training: configs, a tiny run end to end, exact resume, and two-process DDP on CPU."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posterior_jpeg import checkpoints
from posterior_jpeg.config import ConfigError, load_config
from posterior_jpeg.training import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny(out_dir, *overrides):
    return load_config(TINY, [f"out_dir={out_dir}", "progress=false", "device=cpu", *overrides])


NOT_TRAINING = {"eval.yaml", "sweep_consistency.yaml"}  # evaluation configs, tested in test_evaluate.py


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name not in NOT_TRAINING), ids=lambda p: p.name
)
def test_every_shipped_training_config_loads(path):
    cfg = load_config(path)
    assert cfg.steps > 0 and cfg.stage in ("mmse", "posterior")


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        load_config(TINY, ["stepz=3"])
    with pytest.raises(ConfigError, match="trunk"):
        load_config(TINY, ["generator.trunk=transformer"])
    (tmp_path / "bad.yaml").write_text("loss: {consistency_kind: l1}\n")
    with pytest.raises(ConfigError, match="consistency_kind"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_train_py_reports_config_errors():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(TINY), "stepz=1"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "stepz" in result.stderr


def test_tiny_run_gives_finite_losses_a_grid_and_a_loadable_checkpoint(tmp_path):
    run_dir = train(tiny(tmp_path / "run", "steps=20", "checkpoint_every=10", "val_every=20"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for record in records:
        assert all(math.isfinite(v) for v in record.values())
    assert {"d_loss", "g_adv", "consistency", "g_total"} <= set(records[-1])
    assert (run_dir / "val" / "step_00000020.png").is_file()
    generator, model = checkpoints.load_generator(run_dir)  # a run folder -> its latest checkpoint
    assert model.generator == tiny(tmp_path).generator and checkpoints.latest_checkpoint(run_dir).name == "step_00000020"
    y = torch.rand(1, 3, 21, 35)
    out = generator(y, torch.full((1, 3, 8, 8), 10.0))
    assert out.shape == y.shape and torch.isfinite(out).all()


def test_mmse_stage_runs(tmp_path):
    run_dir = train(tiny(tmp_path / "mmse", "stage=mmse", "steps=4", "log_every=2"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]) >= {"mse", "lr"} and records[-1]["mse"] > 0


def _weights(folder: Path) -> dict:
    """Every tensor of a checkpoint's training state: G, critic, EMA and both optimizers."""
    names = ("generator", "critic", checkpoints.EMA, "optimizer_generator", "optimizer_critic")
    return {f"{name}.{k}": v for name in names for k, v in load_file(str(folder / f"{name}.safetensors")).items()}


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    common = ["steps=20", "checkpoint_every=10", "val_every=1000", "loss.moments_every=3", "loss.r1_every=2"]
    straight = train(tiny(tmp_path / "straight", *common))

    original = Trainer.train_step

    def crash_after_step_10(self, batch):
        if self.step == 12:
            raise KeyboardInterrupt  # killed between checkpoints
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_after_step_10)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "resumed", *common))
    assert checkpoints.latest_checkpoint(tmp_path / "resumed").name == "step_00000010"
    monkeypatch.setattr(Trainer, "train_step", original)
    train(tiny(tmp_path / "resumed", *common))  # resume=auto picks up step 10

    a = _weights(straight / "checkpoints" / "step_00000020")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "step_00000020")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_keep_identical_replicas(tmp_path):
    """Two CPU processes (torchrun; Accelerate picks up the gloo process group): DDP keeps the
    replicas identical and every process logs the same gathered losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"replica_{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["ema"] == ranks[1]["ema"]
    assert ranks[0]["logged"] == ranks[1]["logged"] and "g_total" in ranks[0]["logged"]


def test_anchored_run_trains_only_the_detail_network_and_samples_around_its_mean(tmp_path):
    import posterior_jpeg as pj
    from posterior_jpeg.models.generator import AnchoredGenerator, build_generator
    from posterior_jpeg.sampling import Sampler

    mean_run = train(tiny(tmp_path / "mean", "stage=mmse", "steps=4", "generator.noise=false",
                          "generator.trunk=plain", "checkpoint_every=4", "val_every=4"))
    with pytest.raises(ConfigError, match="anchor"):
        tiny(tmp_path / "both", f"anchor={mean_run}", f"mmse_model={mean_run}")
    run_dir = train(tiny(tmp_path / "anchored", f"anchor={mean_run}", "steps=4", "checkpoint_every=4",
                         "val_every=4", "loss.second_moment.start=1", "loss.second_moment.end=1", "loss.moments_every=2"))
    mean_weights = load_file(str(checkpoints.latest_checkpoint(mean_run) / checkpoints.WEIGHTS))
    anchored_weights = load_file(str(checkpoints.latest_checkpoint(run_dir) / checkpoints.WEIGHTS))
    for key, value in mean_weights.items():  # M is frozen inside G
        assert torch.equal(anchored_weights[f"mean.{key}"], value)
    assert any(k.startswith("detail.") for k in anchored_weights)

    sampler = Sampler.from_checkpoint(run_dir, device="cpu", dtype="fp32")
    assert isinstance(sampler.generator, AnchoredGenerator)
    jf = pj.read_jpeg(ROOT / "examples" / "chelsea_q10.jpg")
    y = (jf.decode() * 255).round() / 255
    mean = sampler.mmse(jf, project=False)
    expected = sampler.generator.mean(y[None], jf.qtable_tensor())[0].clamp(0, 1)
    assert torch.allclose(mean, expected, atol=1e-5)
    assert pj.metrics.coefficient_agreement(sampler.mmse(jf)[None], jf).coefficients == 1.0
    samples = sampler.sample(jf, n=2, seed=0, project=False)
    assert not torch.equal(samples[0], samples[1])
    other_mean = train(tiny(tmp_path / "mean2", "stage=mmse", "steps=4", "generator.noise=false", "seed=1",
                            "generator.trunk=plain", "checkpoint_every=4", "val_every=4"))
    warm = Trainer(tiny(tmp_path / "warm", f"anchor={other_mean}", f"init_from={run_dir}"))
    other_weights = load_file(str(checkpoints.latest_checkpoint(other_mean) / checkpoints.WEIGHTS))
    for key, value in warm.ema.state_dict().items():  # S continues, over the new anchor
        source = other_weights[key[len("mean."):]] if key.startswith("mean.") else anchored_weights[key]
        assert torch.equal(value, source), key
    with pytest.raises(pj.PosteriorJpegError, match="posterior-mean"):
        Sampler(build_generator("tiny"), "tiny").mmse(jf)  # a one-network G with noise has no M

    folder = checkpoints.latest_checkpoint(run_dir)  # as anchored runs wrote it before model.yaml
    (folder / checkpoints.MODEL).unlink()
    config = folder / checkpoints.CONFIG
    config.write_text(config.read_text() + "mean_generator: {trunk: plain, features: 16, blocks: 1, growth: 8, "
                      "table_embedding: 8, noise: false}\n")
    migrated, model = checkpoints.load_generator(folder)
    assert isinstance(migrated, AnchoredGenerator) and not model.mean_generator.noise
    assert all(torch.equal(v, anchored_weights[k]) for k, v in migrated.state_dict().items())
