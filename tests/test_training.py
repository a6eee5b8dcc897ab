"""Training: configs, a tiny run end to end, exact resume, and two-process DDP on CPU."""

import dataclasses
import functools
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from posterior_jpeg import checkpoints, losses, training
from posterior_jpeg import data as data_module
from posterior_jpeg.config import ConfigError, load_config
from posterior_jpeg.data import JpegCropDataset, QualityDistribution, collate_jpeg_batch, make_loader
from posterior_jpeg.jpeg import codec
from posterior_jpeg.training import STOP_SIGNALS, TRACKER_PROJECT, PosteriorMeanStage, Trainer, _to_device, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny(out_dir, *overrides):
    return load_config(TINY, [f"out_dir={out_dir}", "progress=false", "device=cpu", *overrides])


NOT_TRAINING = {"eval.yaml", "sweep_consistency.yaml"}  # evaluation configs, tested in test_evaluate.py


@pytest.mark.parametrize(
    "path", sorted(p for p in (ROOT / "configs").glob("*.yaml") if p.name not in NOT_TRAINING), ids=lambda p: p.name
)
def test_every_shipped_training_config_loads(path):
    try:
        cfg = load_config(path)
    except ConfigError as error:  # the paper recipes name no folder: the user gives theirs
        assert "missing mandatory value: train" in str(error)
        cfg = load_config(path, ["data.train=photos"])
    assert cfg.steps > 0 and cfg.stage in ("posterior_mean", "posterior", "spread")


def test_the_multi_node_accelerate_config_is_one_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "configs" / "accelerate" / "multi_node.yaml"))
    assert (config.distributed_type, config.num_machines, config.num_processes) == ("MULTI_GPU", 2, 16)


def test_training_data_is_named_explicitly(tmp_path):
    """data.train is a folder or "synthetic"; null (once synthetic) and a missing value are errors."""
    assert load_config(TINY).data.train == "synthetic"
    (tmp_path / "nodata.yaml").write_text("steps: 3\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(tmp_path / "nodata.yaml")
    with pytest.raises(ConfigError):
        load_config(TINY, ["data.train=null"])
    for bad in ("data.double_share=1.5", "data.cache_mb=-1", "data.workers=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(TINY, [bad])


def test_random_wrong_overrides_give_one_line_and_exit_2_before_anything_is_built(monkeypatch, capsys,
                                                                                   wrong_overrides):
    """Property test: whatever key and wrong value, --print-config and a real run both answer with
    exactly one line naming the key (no traceback), exit 2, and the run builds nothing."""
    from omegaconf import OmegaConf

    from posterior_jpeg import training
    from posterior_jpeg.commands.train import main as train_main
    from posterior_jpeg.config import TRAIN_RULES, TrainConfig
    from posterior_jpeg.models.spread import SpreadConfig

    monkeypatch.setattr(training, "train", lambda cfg: pytest.fail(f"a run started with {cfg}"))
    defaults = OmegaConf.merge(OmegaConf.structured(TrainConfig), {"spread": SpreadConfig()})  # optional: None
    for override in wrong_overrides(TRAIN_RULES, defaults, 80):
        key = override.split("=")[0]
        for extra in (["--print-config"], []):
            assert train_main(["--config", str(TINY), "out_dir=unused", override, *extra]) == 2, override
            out, err = capsys.readouterr()
            assert out == "" and len(err.splitlines()) == 1 and err.startswith("train.py: ") and key in err, \
                (override, err)


def test_every_violation_is_one_line_naming_its_source_value_and_range(tmp_path, capsys):
    from posterior_jpeg.commands.train import main as train_main

    (tmp_path / "bad.yaml").write_text("data:\n  train: synthetic\n  crop: 7\nsteps: 3\n")
    command = ["--config", str(tmp_path / "bad.yaml"), "ema_half_life_images=nan", "optim.betas=[0.9]", "seed=-1"]
    assert train_main(command) == 2
    assert capsys.readouterr().err.splitlines() == [
        "train.py: command line: seed=-1: must be an integer in [0, 4294967295]",
        "train.py: command line: ema_half_life_images=nan: must be a finite number > 0",
        "train.py: command line: optim.betas=[0.9]: must be two numbers in [0, 1)",
        f"train.py: {tmp_path / 'bad.yaml'}:3: data.crop=7: must be a multiple of 16 in [16, 4096]",
    ]
    assert train_main(["--config", str(tmp_path / "bad.yaml"), "data.crop=16", "steps=abc"]) == 2
    assert capsys.readouterr().err == ("train.py: command line: steps: Value 'abc' of type 'str' could not be "
                                       "converted to Integer\n")  # the command line's value, not the file's line
    assert train_main(["--config", str(TINY), "data.modes=["]) == 2
    assert capsys.readouterr().err == ("train.py: command line: data.modes=[: not a key=value override (while "
                                       "parsing a flow node)\n")


def test_a_non_finite_loss_stops_training_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                            capsys):
    from posterior_jpeg.commands.train import main as train_main

    calls = []

    def nan_from_step_3(real):
        def consistency(*args):
            calls.append(None)
            value = real(*args)
            return value * float("nan") if len(calls) >= 3 else value
        return consistency

    monkeypatch.setattr(losses, "TERMS", tuple(dataclasses.replace(term, function=nan_from_step_3(term.function))
                                               if term.name == "consistency" else term for term in losses.TERMS))
    run = tmp_path / "run"
    command = ["--config", str(TINY), f"out_dir={run}", "progress=false", "device=cpu", "steps=4", "log_every=1",
               "checkpoint_every=2", "val_every=1000"]
    assert train_main(command) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"train.py: step 3: the loss consistency, g_total became NaN or infinite; stopped without writing "
                   f"another checkpoint, so those in {run / 'checkpoints'} are the last good ones (lower optim.lr or "
                   "the loss weights, then resume)"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")) == \
        ["latest", checkpoints.checkpoint_name(2)]
    weights = load_file(run / "checkpoints" / checkpoints.checkpoint_name(2) / "generator_ema.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_an_out_dir_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    from posterior_jpeg.commands.train import main as train_main

    (tmp_path / "file").write_text("mine")
    for out_dir in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert train_main(["--config", str(TINY), f"out_dir={out_dir}", "device=cpu"]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"train.py: out_dir={out_dir}: cannot make the folder there")
    assert (tmp_path / "file").read_text() == "mine"


LINK_MESSAGE = "is a symbolic or hard link; this tool does not write through links (remove it, or choose another output folder)"


@pytest.mark.parametrize("name", ["config.yaml", "metrics.jsonl", "val", "logs", "checkpoints",
                                  "checkpoints/.staging_step_00000002", "val/step_00000002.png"])
def test_a_link_planted_in_the_run_folder_is_refused_and_what_it_leads_to_untouched(tmp_path, name, capsys):
    """The names a run writes are refused as links (those of the folder itself before anything is
    built, a checkpoint's staging folder and a grid when the run gets there); out_dir may be a link."""
    from posterior_jpeg.commands.train import main as train_main

    victim_file, victim_folder = tmp_path / "victim_file", tmp_path / "victim_folder"
    victim_file.write_text("mine")
    victim_folder.mkdir()
    real = tmp_path / "real"
    (real / name).parent.mkdir(parents=True, exist_ok=True)
    (real / name).symlink_to(victim_file if name.endswith((".yaml", ".jsonl", ".png")) else victim_folder)
    (tmp_path / "run").symlink_to(real)  # the user's own link: followed
    command = ["--config", str(TINY), f"out_dir={tmp_path / 'run'}", "progress=false", "device=cpu", "steps=2",
               "checkpoint_every=2", "val_every=2", "log_every=1"]
    assert train_main(command) == 2
    assert capsys.readouterr().err.splitlines() == [f"train.py: {tmp_path / 'run' / name}: {LINK_MESSAGE}"]
    assert victim_file.read_text() == "mine" and list(victim_folder.iterdir()) == []


def test_unknown_keys_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        load_config(TINY, ["stepz=3"])
    with pytest.raises(ConfigError, match="trunk"):
        load_config(TINY, ["generator.trunk=transformer"])
    (tmp_path / "bad.yaml").write_text("data: {train: synthetic}\nloss: {consistency_kind: l1}\n")
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
    assert all(r["images_per_second"] > 0 for r in records)
    assert 50 < records[-1]["peak_memory_mb"] < 64 * 1024  # this process's peak RSS, in MiB
    assert (run_dir / "val" / "step_00000020.png").is_file()
    # the default tracker, TensorBoard, holds the logged scalars and the validation sheet
    events = EventAccumulator(str(run_dir / "logs" / TRACKER_PROJECT), size_guidance={"images": 0})
    events.Reload()
    assert {"d_loss", "g_total", "lr"} <= set(events.Tags()["scalars"])
    logged_losses = events.Scalars("g_total")
    assert [e.step for e in logged_losses] == [r["step"] for r in records]
    assert [e.value for e in logged_losses] == pytest.approx([r["g_total"] for r in records], rel=1e-6)
    (sheet,) = events.Images("validation")
    assert sheet.step == 20
    logged = np.array(Image.open(io.BytesIO(sheet.encoded_image_string)))
    assert np.array_equal(logged, np.array(Image.open(run_dir / "val" / "step_00000020.png")))
    generator, model = checkpoints.load_generator(run_dir)  # a run folder -> its latest checkpoint
    assert model.generator == tiny(tmp_path).generator and checkpoints.latest_checkpoint(run_dir).name == "step_00000020"
    y = torch.rand(1, 3, 21, 35)
    out = generator(y, torch.full((1, 3, 8, 8), 10.0))
    assert out.shape == y.shape and torch.isfinite(out).all()


def test_the_tracker_is_chosen_by_log_with(tmp_path, monkeypatch):
    """none: metrics.jsonl alone; a tracker whose package is missing is refused, not silently dropped."""
    run_dir = train(tiny(tmp_path / "quiet", "stage=posterior_mean", "steps=2", "log_every=1", "log_with=none"))
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "logs").exists()
    monkeypatch.setattr(training, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match="log_with=wandb: its package is not installed here"):
        Trainer(tiny(tmp_path / "wandb", "log_with=wandb"))
    with pytest.raises(ConfigError, match="log_with"):
        tiny(tmp_path, "log_with=tensorbored")


def test_mmse_stage_runs(tmp_path):
    """The MMSE stage holds G alone: no critic, no critic optimizer, in the trainer or its checkpoints."""
    run_dir = train(tiny(tmp_path / "mmse", "stage=posterior_mean", "steps=4", "log_every=2"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(records[0]) >= {"mse", "lr"} and records[-1]["mse"] > 0
    files = {p.name for p in checkpoints.latest_checkpoint(run_dir).iterdir()}
    assert "generator.safetensors" in files and not {"critic.safetensors", "optimizer_critic.safetensors"} & files
    resumed = Trainer(tiny(tmp_path / "mmse", "stage=posterior_mean", "steps=6"))
    assert resumed.step == 4 and isinstance(resumed.stage, PosteriorMeanStage)
    assert set(resumed._models()) == {"generator"} and set(resumed._optimizers()) == {"optimizer_generator"}


@pytest.mark.parametrize("kind", ["pixel", "dct"])
def test_real_world_conditions_train_end_to_end(tmp_path, monkeypatch, kind):
    """Qualities 5-95, every subsampling mode and crops saved twice, through both consistency losses;
    the pixel loss never has the coefficients parsed."""
    if kind == "pixel":
        def refuse(*args, **kwargs):
            raise AssertionError("coefficients parsed for the pixel consistency loss")

        monkeypatch.setattr(data_module, "read_jpeg", refuse)
    run_dir = train(tiny(tmp_path / kind, "steps=4", "log_every=2", "val_every=1000", "checkpoint_every=1000",
                         f"loss.consistency_kind={kind}", "data.modes=['4:2:0','4:2:2','4:4:4']", "data.double_share=0.5",
                         "data.quality={kind: skewed, low: 5, high: 95, power: 1.5}"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert records[-1]["consistency"] > 0


def test_batches_reach_the_losses_as_floats_in_every_mode():
    """_to_device turns uint8 images into k / 255 and int16 coefficients into floats; in every mode
    (4:2:2 included) the codec re-encodes x to the file's coefficients exactly, so the clean crop
    has zero dead-zone consistency loss in a mixed-mode batch, and a perturbed one does not."""
    modes = ("4:4:4", "4:2:2", "4:2:0")
    dataset = JpegCropDataset(None, crop=32, qualities=QualityDistribution("skewed", 5, 95, 1.5), modes=modes, seed=3,
                              coefficients=True)
    raw = collate_jpeg_batch([dataset[counter] for counter in range(12)])
    batch = _to_device(raw, "cpu")
    assert set(batch["groups"]) == set(modes)
    for key in ("x", "y"):
        assert batch[key].dtype == torch.float32 and torch.equal(batch[key] * 255, raw[key].float())
    for mode, index in batch["groups"].items():
        encoded = codec.encode(batch["x"][index], batch["qtables"][index], mode)
        for ours, stored in zip(encoded, batch["coefficients"][mode], strict=True):
            assert stored.dtype == torch.float32 and torch.equal(ours, stored)
    (pixel_term,) = [t for t in losses.TERMS if t.name == "consistency" and t.variant[1] == "pixel"]
    (dct_term,) = [t for t in losses.TERMS if t.name == "consistency" and t.variant[1] == "dct"]
    assert dct_term.function(batch["x"], batch["coefficients"], batch["qtables"], batch["groups"]).item() == 0
    perturbed = (batch["x"] + 0.05).clamp(0, 1)
    assert dct_term.function(perturbed, batch["coefficients"], batch["qtables"], batch["groups"]).item() > 0
    y_by_mode = {mode: batch["y"][index] for mode, index in batch["groups"].items()}
    pixel = pixel_term.function(batch["x"], y_by_mode, batch["qtables"], batch["groups"]).item()
    assert 0 < pixel < losses.consistency_pixel(batch["y"], batch["x"], batch["qtables"], "4:4:4").item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_batches_reach_the_gpu_as_floats():
    loader = make_loader(None, 32, QualityDistribution(), ("4:2:0", "4:2:2"), seed=0, batch_size=4, length=4,
                         coefficients=True, pin_memory=True)
    batch = next(iter(loader))
    assert batch["x"].is_pinned() and batch["coefficients"]["4:2:0"][0].is_pinned()
    moved = _to_device(batch, "cuda")
    assert moved["x"].is_cuda and moved["x"].dtype == torch.float32
    assert torch.equal(moved["y"].cpu(), _to_device(batch, "cpu")["y"])


def _compiled_tiny_run(tmp_path, monkeypatch, device: str, backend: str | None = None) -> tuple[list[dict], list[int]]:
    """A tiny posterior run with bf16 autocast, torch.compile and channels_last on `device`, whose
    steps alternate moment steps (batch 4 + 2 x 4 draws) and plain ones (batch 4). Returns its log
    records and dynamo's count of compiled graphs after each step. `backend` (e.g. "aot_eager")
    replaces Inductor where only dynamo's guards are under test: they decide recompiles, and
    Inductor takes minutes on a small CPU."""
    from torch._dynamo.utils import counters

    if backend:
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    torch._dynamo.reset()
    counters.clear()
    graphs, original = [], Trainer.train_step

    def counting(self, batch):
        result = original(self, batch)
        graphs.append(counters["stats"]["unique_graphs"])
        return result

    monkeypatch.setattr(Trainer, "train_step", counting)
    cfg = load_config(TINY, [f"out_dir={tmp_path / device}", "progress=false", f"device={'cpu' if device == 'cpu' else 'auto'}",
                             "compile=true", "mixed_precision=bf16", "channels_last=true", "steps=3",
                             "loss.moments_every=2", "log_every=1", "val_every=3", "checkpoint_every=3"])
    AcceleratorState._reset_state()  # the process-wide state keeps the first run's precision (fp32)
    try:
        run_dir = train(cfg)
    finally:
        AcceleratorState._reset_state()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, graphs


def _check_compiled_run(records: list[dict], graphs: list[int]) -> None:
    assert [r["step"] for r in records] == [1, 2, 3] and "first_moment" in records[0]
    assert records[1]["first_moment"] == records[0]["first_moment"]  # a plain step logs the last moment step's value
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert graphs[0] > 0 and graphs == [graphs[0]] * 3  # the plain step after a moment step compiled nothing new


def test_compiled_generator_keeps_one_graph_across_moment_steps(tmp_path, monkeypatch):
    """bf16 autocast + torch.compile + channels_last on CPU: G's batch dimension is dynamic, so the
    moment steps' larger batch does not recompile (the unmarked forward compiles a second graph)."""
    _check_compiled_run(*_compiled_tiny_run(tmp_path, monkeypatch, "cpu", backend="aot_eager"))


@pytest.mark.slow
def test_tiny_run_with_bf16_compile_and_channels_last_on_cpu(tmp_path, monkeypatch):
    """The same run through Inductor, as a user's compile=true runs (minutes on a small CPU)."""
    _check_compiled_run(*_compiled_tiny_run(tmp_path, monkeypatch, "cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_run_with_bf16_compile_and_channels_last_on_cuda(tmp_path, monkeypatch):
    _check_compiled_run(*_compiled_tiny_run(tmp_path, monkeypatch, "cuda"))
    run_dir = tmp_path / "cuda"
    generator, _ = checkpoints.load_generator(run_dir, torch.device("cuda"))
    assert next(generator.parameters()).is_cuda


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


TWO_RANKS = ["steps=12", "log_every=1", "checkpoint_every=1000", "val_every=1000", "batch_size=2",
             "loss.moment_images=1", "loss.moment_samples=2", "loss.moments_every=3", "loss.r1_every=2"]


def _torchrun(out_dir: Path, overrides: list[str], *launcher: str) -> subprocess.Popen:
    """tests/ddp_worker.py under one torchrun agent (CPU processes, gloo) with `launcher`'s options."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, str(ROOT / "tests" / "ddp_worker.py"),
               str(out_dir), *overrides]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _replicas(out_dir: Path, world: int, steps: int) -> list[dict]:
    """What each rank of a ddp_worker run recorded, after checking what holds for every run: the
    same world everywhere, identical replicas and gathered losses, its own noise and its own crops."""
    ranks = [json.loads((out_dir / f"replica_{r}.json").read_text()) for r in range(world)]
    assert [r["rank"] for r in ranks] == list(range(world)) and {r["world"] for r in ranks} == {world}
    for other in ranks[1:]:
        assert other["params"] == ranks[0]["params"] and other["ema"] == ranks[0]["ema"]
        assert other["logged"] == ranks[0]["logged"] and "g_total" in other["logged"]
    assert len({tuple(r["noise"]) for r in ranks}) == world  # each rank draws its own z
    crops = [crop for r in ranks for crop in r["crops"]]
    assert len(crops) == len(set(crops)) == world * steps * 2  # batch_size=2; no crop seen by two ranks, or twice
    return ranks


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """A finished 2-process run of TWO_RANKS (one torchrun, ddp_worker.py)."""
    out_dir = tmp_path_factory.mktemp("two_ranks")
    launch = _torchrun(out_dir, TWO_RANKS, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                       "--master_port", str(_free_port()))
    _, err = launch.communicate(timeout=600)
    assert launch.returncode == 0, err[-3000:]
    return out_dir


def test_two_processes_keep_identical_replicas(two_ranks):
    """Two CPU processes (torchrun; Accelerate picks up the gloo process group): DDP keeps the
    replicas identical, every process logs the same gathered losses, each rank draws its own noise
    and gets its own crops."""
    _replicas(two_ranks, 2, 12)


@pytest.mark.slow  # 4 processes and 2 torchrun agents: about 40 s on 2 shared cores
def test_two_nodes_of_two_ranks_keep_identical_replicas(tmp_path):
    """Two torchrun agents as two "nodes" of 2 ranks each, meeting at a c10d rendezvous on
    127.0.0.1 (as README's multi-node recipe starts one agent per node): 4 ranks, numbered node by
    node, train with identical replicas, their own noise and rank-disjoint crops."""
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_torchrun(tmp_path, [*TWO_RANKS, "steps=4"], "--nnodes", "2", "--nproc_per_node", "2",
                       "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two_nodes")
             for _ in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    ranks = _replicas(tmp_path, 4, 4)
    assert sorted((r["node"], r["local_rank"]) for r in ranks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["rank"] == 2 * r["node"] + r["local_rank"] for r in ranks)

# Stand-ins for SLURM's commands, for configs/slurm/train.sbatch on one machine. srun: SLURM_NTASKS
# tasks with their SLURM_* ids, each in its own process group (pid and stderr in $LOGS); its status
# is the highest of the tasks', as srun's. scontrol: node 0 is 127.0.0.1; a requeue is noted in $LOGS.
FAKE_SRUN = """#!/bin/bash
shift
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 setsid "$@" 2> "$LOGS/stderr_$i.txt" &
    pids+=($!)
    echo $! > "$LOGS/pid_$i"
done
status=0
for pid in "${pids[@]}"; do wait $pid; s=$?; [ $s -gt $status ] && status=$s; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/bash
case $1 in show) echo 127.0.0.1 ;; requeue) echo "$2" >> "$LOGS/requeued" ;; esac
"""


def _sbatch(logs: Path, out_dir: Path, overrides: list[str]) -> subprocess.Popen:
    """configs/slurm/train.sbatch as a SLURM job of 2 tasks on one node would run it (the tiny
    config, on CPU), with srun and scontrol replaced by the stand-ins above."""
    logs.mkdir(parents=True, exist_ok=True)
    bin_dir = logs / "bin"
    bin_dir.mkdir(exist_ok=True)
    python = f"#!/bin/bash\nexec {sys.executable} \"$@\"\n"  # this interpreter (a venv's needs its own path)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("python", python)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "LOGS": str(logs),
           "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "node0", "SLURM_NTASKS": "2", "SLURM_CPUS_PER_TASK": "1",
           "MASTER_PORT": str(_free_port())}
    command = ["bash", str(ROOT / "configs" / "slurm" / "train.sbatch"), str(TINY), f"out_dir={out_dir}",
               "progress=false", "device=cpu", *overrides]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_to_a_slurm_job_stops_both_ranks_after_one_step_requeues_and_the_resume_is_exact(two_ranks,
                                                                                                  tmp_path):
    """configs/slurm/train.sbatch, 2 tasks. SIGTERM mid-run to the batch shell and to rank 1 with
    its loader worker (not to rank 0: the ranks must agree): both ranks finish the same step, one
    checkpoint of it is written, both exit 75 and the script requeues the job; the requeued job
    resumes and ends with the weights of the uninterrupted torchrun run (byte for byte)."""
    run, overrides = tmp_path / "run", [*TWO_RANKS, "data.workers=1"]  # a loader worker, which the signal reaches too
    job = _sbatch(tmp_path / "first", run, overrides)
    metrics = run / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):  # step 2 done
        assert job.poll() is None, "the run ended before the signal"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    os.killpg(int((tmp_path / "first" / "pid_1").read_text()), signal.SIGTERM)
    signalled = len(metrics.read_text().splitlines())
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 75, output
    assert (tmp_path / "first" / "requeued").read_text() == "1234\n"
    folder = checkpoints.latest_checkpoint(run)
    step = int(folder.name.split("_")[1])
    assert signalled <= step < 12 and [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == [folder.name]
    for rank, cause in ((0, "a stop signal to another process"), (1, "SIGTERM")):
        assert (tmp_path / "first" / f"stderr_{rank}.txt").read_text().splitlines()[-1] == (
            f"train.py: step {step}: stopped on {cause} after a checkpoint of this step ({folder}); run the same "
            "command to resume (exit status 75: requeue)")

    job = _sbatch(tmp_path / "requeued", run, overrides)
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0 and not (tmp_path / "requeued" / "requeued").exists(), output
    a = _weights(two_ranks / "checkpoints" / checkpoints.checkpoint_name(12))
    b = _weights(run / "checkpoints" / checkpoints.checkpoint_name(12))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_anchored_run_trains_only_the_detail_network_and_samples_around_its_mean(tmp_path):
    import posterior_jpeg as pj
    from posterior_jpeg.models.generator import AnchoredGenerator, build_generator
    from posterior_jpeg.sampler import PosteriorSampler

    posterior_mean_run = train(tiny(tmp_path / "mean", "stage=posterior_mean", "steps=4", "generator.noise=false",
                          "generator.trunk=plain", "checkpoint_every=4", "val_every=4"))
    with pytest.raises(ConfigError, match="posterior_mean and moment_posterior_mean are both set"):
        tiny(tmp_path / "both", f"posterior_mean={posterior_mean_run}", f"moment_posterior_mean={posterior_mean_run}")
    with pytest.raises(ConfigError, match="antithetic needs posterior_mean"):
        tiny(tmp_path / "lone", "antithetic=true")
    run_dir = train(tiny(tmp_path / "anchored", f"posterior_mean={posterior_mean_run}", "steps=4", "checkpoint_every=4", "antithetic=true",
                         "val_every=4", "loss.second_moment.start=1", "loss.second_moment.end=1", "loss.moments_every=2"))
    posterior_mean_weights = load_file(str(checkpoints.latest_checkpoint(posterior_mean_run) / checkpoints.WEIGHTS))
    anchored_weights = load_file(str(checkpoints.latest_checkpoint(run_dir) / checkpoints.WEIGHTS))
    for key, value in posterior_mean_weights.items():  # M is frozen inside G
        assert torch.equal(anchored_weights[f"mean.{key}"], value)
    assert any(k.startswith("detail.") for k in anchored_weights)
    # moment steps are the even-numbered ones (0, 2), the log step 4 runs step 3: eq. 7 is still logged
    assert "second_moment" in json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])

    sampler = PosteriorSampler.from_checkpoint(run_dir, device="cpu", dtype="fp32", posterior_mean_flips=1)  # M once, unflipped
    assert isinstance(sampler.generator, AnchoredGenerator) and sampler.generator.antithetic
    jf = pj.read_jpeg(ROOT / "examples" / "chelsea_q10.jpg")
    y = (jf.decode() * 255).round() / 255
    mean = sampler.posterior_mean_decode(jf, project=False)
    expected = sampler.generator.mean(y[None], jf.qtable_tensor())[0].clamp(0, 1)
    assert torch.allclose(mean, expected, atol=1e-5)
    assert pj.metrics.coefficient_agreement(sampler.posterior_mean_decode(jf)[None], jf).coefficients == 1.0
    samples = sampler.sample(jf, n=2, seed=0, project=False)
    assert not torch.equal(samples[0], samples[1])
    other_posterior_mean = train(tiny(tmp_path / "mean2", "stage=posterior_mean", "steps=4", "generator.noise=false", "seed=1",
                            "generator.trunk=plain", "checkpoint_every=4", "val_every=4"))
    warm = Trainer(tiny(tmp_path / "warm", f"posterior_mean={other_posterior_mean}", f"init_from={run_dir}"))
    other_weights = load_file(str(checkpoints.latest_checkpoint(other_posterior_mean) / checkpoints.WEIGHTS))
    for key, value in warm.ema.state_dict().items():  # S continues, over the new anchor
        source = other_weights[key[len("mean."):]] if key.startswith("mean.") else anchored_weights[key]
        assert torch.equal(value, source), key
    with pytest.raises(pj.PosteriorJpegError, match="posterior-mean"):
        PosteriorSampler(build_generator("tiny"), "tiny").posterior_mean_decode(jf)  # a one-network G with noise has no M

    folder = checkpoints.latest_checkpoint(run_dir)  # as anchored runs wrote it before model.yaml
    (folder / checkpoints.MODEL).unlink()
    config = folder / checkpoints.CONFIG
    config.write_text(config.read_text() + "mean_generator: {trunk: plain, features: 16, blocks: 1, growth: 8, "
                      "table_embedding: 8, noise: false}\n")
    migrated, model = checkpoints.load_generator(folder)
    assert isinstance(migrated, AnchoredGenerator) and not model.posterior_mean.noise and migrated.antithetic
    assert all(torch.equal(v, anchored_weights[k]) for k, v in migrated.state_dict().items())


def test_settings_that_cannot_work_are_refused_at_config_time(tmp_path):
    """fp16 with R1 (unscaled penalty gradients underflow) and a device the run would not honour."""
    with pytest.raises(ConfigError, match="fp16 with R1"):
        tiny(tmp_path, "mixed_precision=fp16")
    tiny(tmp_path, "mixed_precision=fp16", "loss.r1={kind: constant, start: 0.0, end: 0.0}")  # no R1: allowed
    tiny(tmp_path, "mixed_precision=fp16", "stage=posterior_mean")
    with pytest.raises(ConfigError, match="device='cuda:1': must be one of auto, cpu"):
        tiny(tmp_path, "device=cuda:1")


def test_ema_half_life_is_counted_in_images_and_the_old_key_says_what_to_write(tmp_path):
    """beta = 0.5 ** (images per step / half-life): after half-life images an old weight's share
    halves, whatever the batch, accumulation or process count. `ema:` (a decay per step) is refused
    with the key to write instead, from a file, the command line and --print-config."""
    from posterior_jpeg.training import _ema_beta

    for overrides, world in ((["batch_size=4"], 1), (["batch_size=2", "grad_accumulation=2"], 1), (["batch_size=1", "loss.moment_images=1"], 4)):
        cfg = tiny(tmp_path, "ema_half_life_images=64", *overrides)
        assert math.isclose(_ema_beta(cfg, world) ** (64 / 4), 0.5)
    (tmp_path / "old.yaml").write_text("ema: 0.999\ndata: {train: synthetic}\n")
    for attempt in (lambda: load_config(tmp_path / "old.yaml"), lambda: tiny(tmp_path, "ema=0.99")):
        with pytest.raises(ConfigError, match="ema_half_life_images: N"):
            attempt()
    with pytest.raises(ConfigError, match="ema_half_life_images=0.0: must be a finite number > 0"):
        tiny(tmp_path, "ema_half_life_images=0")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(tmp_path / "old.yaml"), "--print-config"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "ema_half_life_images" in result.stderr


def test_old_spellings_of_renamed_keys_still_load_with_a_warning(tmp_path):
    """`anchor`, `mmse_model` and `stage: mmse` (the posterior mean M's old names) load as
    posterior_mean, moment_posterior_mean and stage posterior_mean, each with a RenamedWarning that
    names the new spelling; old and new spelling of one key together are refused."""
    from posterior_jpeg.errors import RenamedWarning

    (tmp_path / "old.yaml").write_text("stage: mmse\nanchor: runs/m\ndata: {train: synthetic}\n")
    with pytest.warns(RenamedWarning) as caught:
        cfg = load_config(tmp_path / "old.yaml", ["stage=posterior", "antithetic=true"])
    assert (cfg.stage, cfg.posterior_mean) == ("posterior", "runs/m")
    assert sorted(str(w.message) for w in caught) == [
        f"{tmp_path / 'old.yaml'}: anchor is now posterior_mean (the old spelling still works)",
        f"{tmp_path / 'old.yaml'}: stage: mmse is now stage: posterior_mean (the old spelling still works)"]
    with pytest.warns(RenamedWarning) as caught:
        cfg = tiny(tmp_path, "stage=mmse", "mmse_model=runs/m")
    assert len(caught) == 2 and "command line: mmse_model is now moment_posterior_mean" in str(caught[0].message)
    assert (cfg.stage, cfg.moment_posterior_mean) == ("posterior_mean", "runs/m")
    with pytest.raises(ConfigError, match="anchor and posterior_mean are both set"):
        tiny(tmp_path, "anchor=runs/m", "posterior_mean=runs/m")


def test_ema_follows_its_decay():
    from posterior_jpeg.training import _update_ema

    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in ema.parameters()]
    _update_ema(ema, model, 0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p.detach())


@pytest.mark.parametrize("units", ["avx512_bf16", None], ids=["bf16-units", "no-units"])
def test_auto_precision_follows_the_cpu_and_the_run_records_what_ran(units, tmp_path, monkeypatch):
    """mixed_precision auto (the default): bf16 autocast with channels_last G on a CPU with bf16 units,
    fp32 NCHW on one without (forced both ways here); the run's config.yaml says which ran."""
    from posterior_jpeg import precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: units)
    AcceleratorState._reset_state()  # the process-wide state would keep an earlier run's precision
    try:
        trainer = Trainer(tiny(tmp_path, "steps=2", "log_every=1"))
        run_dir = trainer.run()
        autocast = trainer.accelerator.mixed_precision
    finally:
        AcceleratorState._reset_state()
    expected = "bf16" if units else "fp32"
    assert autocast == {"bf16": "bf16", "fp32": "no"}[expected]
    weight = trainer.accelerator.unwrap_model(trainer.generator).conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == bool(units) != weight.is_contiguous()
    saved = load_config(run_dir / "config.yaml")
    assert (saved.mixed_precision, saved.channels_last) == (expected, bool(units))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["g_total"]) for r in records)


def test_spread_stage_trains_only_v_over_a_finished_model(tmp_path):
    import posterior_jpeg as pj
    from posterior_jpeg.sampler import PosteriorSampler

    posterior_mean_run = train(tiny(tmp_path / "mean", "stage=posterior_mean", "steps=2", "generator.noise=false",
                          "generator.trunk=plain", "checkpoint_every=2", "val_every=2"))
    model_run = train(tiny(tmp_path / "model", f"posterior_mean={posterior_mean_run}", "steps=2", "checkpoint_every=2",
                           "antithetic=true", "val_every=2"))
    spread = ("spread.features=8", "spread.blocks=1", "spread.table_embedding=8")
    with pytest.raises(ConfigError, match="stage spread"):
        tiny(tmp_path / "lone", "stage=spread", f"posterior_mean={posterior_mean_run}", *spread)
    run_dir = train(tiny(tmp_path / "spread", "stage=spread", f"posterior_mean={model_run}", f"init_from={model_run}",
                         "antithetic=true", "steps=6", "log_every=2", "checkpoint_every=6", "val_every=6", *spread))
    before = load_file(str(checkpoints.latest_checkpoint(model_run) / checkpoints.WEIGHTS))
    after = load_file(str(checkpoints.latest_checkpoint(run_dir) / checkpoints.WEIGHTS))
    for key, value in before.items():  # M and S are frozen
        assert torch.equal(after[key], value), key
    initial = Trainer(tiny(tmp_path / "fresh", "stage=spread", f"posterior_mean={model_run}", f"init_from={model_run}",
                           "antithetic=true", *spread)).ema.state_dict()
    changed = [k for k in after if k.startswith("spread.") and not torch.equal(after[k], initial[k])]
    assert changed  # V learned
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["deviance"]) for r in records)

    s_run = train(tiny(tmp_path / "s_under_v", f"posterior_mean={run_dir}", f"init_from={run_dir}", "antithetic=true",
                       "steps=2", "checkpoint_every=2", "val_every=2", *spread))  # S trains, V stays
    s_weights = load_file(str(checkpoints.latest_checkpoint(s_run) / checkpoints.WEIGHTS))
    assert all(torch.equal(s_weights[k], after[k]) for k in after if k.startswith("spread."))
    assert any(not torch.equal(s_weights[k], after[k]) for k in after if k.startswith("detail."))
    spread = checkpoints.model_config(checkpoints.latest_checkpoint(run_dir)).spread
    assert checkpoints.model_config(checkpoints.latest_checkpoint(s_run)).spread == spread  # V's gains go with V
    assert spread.gain_intercept != [0.0] * 3 and spread.gain_slope != [0.0] * 3  # fitted at the last step
    sampler = PosteriorSampler.from_checkpoint(run_dir, device="cpu", dtype="fp32")
    assert sampler.generator.spread.config == spread
    jf = pj.read_jpeg(ROOT / "examples" / "chelsea_q10.jpg")
    samples = sampler.sample(jf, n=2, seed=0)
    assert not torch.equal(samples[0], samples[1])
    assert pj.metrics.coefficient_agreement(samples, jf).coefficients == 1.0


SIGNALLED = ["steps=12", "log_every=1", "checkpoint_every=5", "val_every=1000", "loss.moments_every=3",
             "loss.r1_every=2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run of the SIGNALLED settings."""
    return train(tiny(tmp_path_factory.mktemp("straight"), *SIGNALLED))


@pytest.mark.parametrize("number", [signal.SIGUSR1, signal.SIGINT], ids=lambda n: n.name)  # SIGTERM: the SLURM test
def test_a_stop_signal_ends_the_step_checkpoints_it_and_exits_75_and_the_resume_is_exact(number, straight, tmp_path,
                                                                                         monkeypatch, capsys):
    """The signal arrives in the middle of step 7 (not a checkpoint step): the step finishes, a
    checkpoint of it is written, the command says so in one line and exits 75; the same command
    then resumes and ends with the weights of the uninterrupted run. Handlers are restored after."""
    from posterior_jpeg.commands.train import main as train_main
    from posterior_jpeg.errors import TrainingStopped

    original = Trainer.train_step

    def signal_in_step_7(self, batch):
        if self.step == 6:
            os.kill(os.getpid(), number)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", signal_in_step_7)
    run = tmp_path / "stopped"
    command = ["--config", str(TINY), f"out_dir={run}", "progress=false", "device=cpu", *SIGNALLED]
    handlers = [signal.getsignal(n) for n in STOP_SIGNALS]
    assert train_main(command) == TrainingStopped.exit_status == 75
    assert [signal.getsignal(n) for n in STOP_SIGNALS] == handlers
    folder = run / "checkpoints" / checkpoints.checkpoint_name(7)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"train.py: step 7: stopped on {number.name} after a checkpoint of this step ({folder}); run the same "
        "command to resume (exit status 75: requeue)")
    assert checkpoints.latest_checkpoint(run) == folder
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 8))

    monkeypatch.setattr(Trainer, "train_step", original)
    assert train_main(command) == 0
    a = _weights(straight / "checkpoints" / checkpoints.checkpoint_name(12))
    b = _weights(run / "checkpoints" / checkpoints.checkpoint_name(12))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    original = Trainer.train_step

    def interrupt_twice(self, batch):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupt_twice)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, *SIGNALLED))
    assert checkpoints.latest_checkpoint(tmp_path) is None  # no checkpoint: the user asked for now
