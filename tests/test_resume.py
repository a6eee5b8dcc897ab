"""Resuming hostile and damaged run folders: nothing is ever unpickled, `latest` never leads out of
the run folder, a damaged checkpoint falls back to the previous whole one (and says so), and a run
folder with nothing usable is refused instead of silently restarted."""

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from posterior_jpeg import checkpoints
from posterior_jpeg.config import load_config
from posterior_jpeg.errors import CheckpointError
from posterior_jpeg.sampler import PosteriorSampler
from posterior_jpeg.training import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
STEP_2, STEP_4 = checkpoints.checkpoint_name(2), checkpoints.checkpoint_name(4)


def tiny(out_dir, *overrides):
    return load_config(ROOT / "configs" / "tiny.yaml",
                       [f"out_dir={out_dir}", "progress=false", "device=cpu", "val_every=1000", *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run with whole checkpoints at steps 2 and 4."""
    return train(tiny(tmp_path_factory.mktemp("run") / "run", "steps=4", "checkpoint_every=2", "keep_checkpoints=0"))


@pytest.fixture
def copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def resume(run_dir, *overrides) -> Trainer:
    return Trainer(tiny(run_dir, "steps=8", *overrides))


class WritesAFile:
    """Unpickling this creates the file `marker`: proof that a loader ran a foreign pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant(path: Path, marker: Path) -> None:
    """A pickle payload in the formats torch.load reads (zip) and pickle.load reads."""
    if path.suffix in (".pkl", ".json", ".yaml") or path.name == checkpoints.LATEST:
        path.write_bytes(pickle.dumps(WritesAFile(marker)))
    else:
        torch.save(WritesAFile(marker), path)


# Every name a loader of ours or of Accelerate's load_state might read in a checkpoint folder.
READ = ["generator.safetensors", "critic.safetensors", checkpoints.WEIGHTS, "optimizer_generator.safetensors",
        "optimizer_critic.safetensors", "random_states_0.safetensors", checkpoints.TRAINER]
NOT_READ = [checkpoints.MODEL, checkpoints.CONFIG, "custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
            "optimizer_1.bin", "model.safetensors", "model_1.safetensors", "pytorch_model.bin", "scaler.pt"]


@pytest.mark.parametrize("name", READ + NOT_READ)
def test_no_file_of_a_checkpoint_is_ever_unpickled(name, copy, tmp_path, capsys):
    """A payload in each place of the newest checkpoint (resume=auto, then resume=PATH)."""
    marker = tmp_path / "code_ran"
    folder = copy / "checkpoints" / STEP_4
    plant(folder / name, marker)
    trainer = resume(copy)
    assert not marker.exists()
    if name in READ:  # the damaged checkpoint is passed over, with the file named
        assert trainer.step == 2 and f"passed over {folder / name}: " in capsys.readouterr().err
        with pytest.raises(CheckpointError, match=f"^{folder / name}: "):  # a checkpoint asked for by name
            resume(copy, f"resume={folder}")
    else:
        assert trainer.step == 4
    assert not marker.exists()


@pytest.mark.parametrize("name", [checkpoints.WEIGHTS, checkpoints.MODEL])
def test_the_sampler_never_unpickles_either(name, copy, tmp_path):
    marker = tmp_path / "code_ran"
    plant(copy / "checkpoints" / STEP_4 / name, marker)
    with pytest.raises(CheckpointError, match=f"^{copy / 'checkpoints' / STEP_4 / name}: "):
        PosteriorSampler.from_checkpoint(copy, device="cpu")
    assert not marker.exists()


def test_a_planted_run_folder_is_refused_and_runs_nothing(copy, tmp_path):
    """Every file of every checkpoint a pickle payload, `latest` too: no code runs, and the run
    stops with one line instead of starting over in someone else's folder."""
    marker = tmp_path / "code_ran"
    for folder in (copy / "checkpoints").iterdir():
        for path in folder.iterdir() if folder.is_dir() else [folder]:
            plant(path, marker)
    with pytest.raises(CheckpointError, match=r"no usable checkpoint to resume from \(") as caught:
        resume(copy)
    assert "\n" not in str(caught.value) and not marker.exists()


def test_latest_never_leads_outside_the_run_folder(copy, tmp_path, capsys):
    """A `latest` that names a path, and a checkpoint folder that is a link to elsewhere, are
    ignored: the foreign checkpoint (a newer step, and whole) is never used."""
    elsewhere = tmp_path / "elsewhere" / checkpoints.checkpoint_name(6)
    shutil.copytree(copy / "checkpoints" / STEP_4, elsewhere)
    (elsewhere / checkpoints.TRAINER).write_text('{"step": 6, "scaler": null}')
    pointer = copy / "checkpoints" / checkpoints.LATEST
    for target in (f"../../elsewhere/{elsewhere.name}", str(elsewhere)):
        pointer.write_text(target)
        assert resume(copy).step == 4
        assert "does not name a checkpoint folder" in capsys.readouterr().err
    (copy / "checkpoints" / elsewhere.name).symlink_to(elsewhere, target_is_directory=True)
    pointer.write_text(elsewhere.name)
    assert resume(copy).step == 4
    assert f"{copy / 'checkpoints' / elsewhere.name}: leads outside" in capsys.readouterr().err


# ----------------------------------------------------------------------------- damaged runs
@pytest.mark.parametrize("pointer", [b"step_00000099", b"\x00\xffgarbage", b""])
def test_a_dangling_or_garbage_latest_resumes_the_newest_whole_checkpoint(pointer, copy, capsys):
    (copy / "checkpoints" / checkpoints.LATEST).write_bytes(pointer)
    trainer = resume(copy)
    assert trainer.step == 4
    err = capsys.readouterr().err
    assert f"{copy / 'checkpoints' / checkpoints.LATEST}: " in err


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(copy, capsys):
    weights = copy / "checkpoints" / STEP_4 / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    trainer = resume(copy)
    assert trainer.step == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"train: passed over {weights}: not a readable safetensors file")


def test_a_truncated_random_state_is_not_ignored(copy, capsys):
    """Without the RNG states the resume would not be exact: the checkpoint is passed over."""
    states = copy / "checkpoints" / STEP_4 / "random_states_0.safetensors"
    states.write_bytes(states.read_bytes()[: os.path.getsize(states) - 8])
    assert resume(copy).step == 2
    assert f"passed over {states}: not a readable safetensors file" in capsys.readouterr().err


def test_a_random_state_of_the_wrong_size_is_not_ignored(copy, capsys):
    states = copy / "checkpoints" / STEP_4 / "random_states_0.safetensors"
    tensors, metadata = checkpoints.read_tensors(states)
    checkpoints.save_tensors(states, {**tensors, "torch": tensors["torch"][:100]}, metadata)
    assert resume(copy).step == 2
    assert f"passed over {states}: not a usable random state" in capsys.readouterr().err


def test_a_run_folder_with_nothing_usable_is_refused_not_restarted(copy):
    for step in (STEP_2, STEP_4):
        (copy / "checkpoints" / step / checkpoints.TRAINER).unlink()
    with pytest.raises(CheckpointError) as caught:
        resume(copy)
    message = str(caught.value)
    assert message.startswith(f"{copy}: no usable checkpoint to resume from (")
    assert f"{STEP_4}/{checkpoints.TRAINER}: missing; " in message and "resume=null to start over" in message
    assert resume(copy, "resume=null").step == 0  # starting over is a choice the user makes


def test_a_checkpoint_of_the_pickled_format_says_how_to_continue(copy):
    folder = copy / "checkpoints" / STEP_4
    (folder / "generator.safetensors").rename(folder / "model.safetensors")  # Accelerate's names
    with pytest.raises(CheckpointError, match=f"older posterior-jpeg .* init_from={folder}$"):
        resume(copy, f"resume={folder}")


def test_pruning_never_deletes_the_checkpoint_just_written(copy):
    """keep_checkpoints=1 with a stale folder of a later step (left by a run restarted from an
    earlier checkpoint): the new checkpoint stays, `latest` names it, older ones are pruned."""
    stale = copy / "checkpoints" / checkpoints.checkpoint_name(50)
    shutil.copytree(copy / "checkpoints" / STEP_4, stale)
    train(tiny(copy, "steps=6", "checkpoint_every=2", "keep_checkpoints=1", f"resume={copy / 'checkpoints' / STEP_2}"))
    names = sorted(p.name for p in (copy / "checkpoints").iterdir())
    assert names == [checkpoints.LATEST, checkpoints.checkpoint_name(6), stale.name]
    assert checkpoints.latest_checkpoint(copy).name == checkpoints.checkpoint_name(6)
    assert resume(copy).step == 6  # resume=auto follows `latest`, not the stale later folder


def test_the_fp16_loss_scale_is_saved_and_restored(copy, tmp_path):
    """The GradScaler of fp16 runs (CUDA only in Accelerate) goes through trainer.json; a CPU scaler
    has the same state_dict."""
    trainer = resume(copy)
    models, optimizers = {**trainer._models(), checkpoints.EMA: trainer.ema}, trainer._optimizers()
    scaler = torch.amp.GradScaler("cpu", init_scale=12.0)
    checkpoints.save_training_state(tmp_path, 4, trainer._models(), optimizers, scaler)
    checkpoints.save_inference_files(tmp_path, trainer.ema, trainer.cfg)
    checkpoints.save_random_states(tmp_path, 0)
    fresh = torch.amp.GradScaler("cpu")
    state = checkpoints.read_training_state(tmp_path, models, optimizers, fresh, 0, 1)
    checkpoints.apply_training_state(state, models, optimizers, fresh)
    assert fresh.get_scale() == 12.0
    with pytest.raises(CheckpointError, match="no fp16 loss-scaler state"):
        checkpoints.read_training_state(copy / "checkpoints" / STEP_4, models, optimizers, fresh, 0, 1)


def test_pruning_removes_a_link_never_what_it_leads_to(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / checkpoints.checkpoint_name(1)).symlink_to(outside, target_is_directory=True)
    staging = root / ".staging"
    staging.mkdir()
    checkpoints.publish_checkpoint(staging, tmp_path / "run", 2, keep=1)
    assert sorted(p.name for p in root.iterdir()) == [checkpoints.LATEST, checkpoints.checkpoint_name(2)]
    assert (outside / "precious.txt").read_text() == "keep me"
