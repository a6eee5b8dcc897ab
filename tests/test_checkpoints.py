"""Model files: broken checkpoint folders give one clear line (exit 2), configs never read the
environment, and a model outlives changes of the training config (model.yaml, migration of old
checkpoints that have config.yaml only)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from posterior_jpeg import checkpoints
from posterior_jpeg.config import ConfigError, load_config, to_yaml
from posterior_jpeg.models.generator import build_generator
from posterior_jpeg.commands.sample import main as sample_main
from posterior_jpeg.sampler import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
SECRET = "h10-secret-value-7f3a"  # an environment value that must never reach a config


@pytest.fixture(scope="module")
def train_main():
    """train.py's main(argv) -> exit status, in this process (a subprocess costs seconds of imports)."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny untrained checkpoint as train.py writes its inference files."""
    config = load_config(ROOT / "configs" / "tiny.yaml")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("good")
    checkpoints.save_inference_files(folder, build_generator(config.generator), config)
    return folder


@pytest.fixture
def jpeg(natural_rgb, pillow_jpeg, tmp_path):
    path = tmp_path / "in.jpg"
    path.write_bytes(pillow_jpeg(natural_rgb(32, 48), quality=30))
    return path


def _rewrite(name, edit):
    """A breakage: file `name` of the checkpoint replaced by edit(its bytes)."""
    def breaks(folder):
        path = folder / name
        path.write_bytes(edit(path.read_bytes() if path.is_file() else b""))
        return path
    return breaks


def _model(text):
    return _rewrite(checkpoints.MODEL, lambda _: text.encode())


def _generator_line(old, new):
    """model.yaml with one line of the generator section changed."""
    return _rewrite(checkpoints.MODEL, lambda data: data.replace(old.encode(), new.encode(), 1))


def _old_config(edit, named=checkpoints.CONFIG):
    """A checkpoint of before model.yaml (config.yaml only) whose config.yaml is edit(text); the
    line names `named`."""
    def breaks(folder):
        (folder / checkpoints.MODEL).unlink()
        path = folder / checkpoints.CONFIG
        path.write_text(edit(path.read_text()))
        return folder / named
    return breaks


def _sizes(old, new):
    """model.yaml and the weights disagree on a size: the line names the weights and model.yaml."""
    def breaks(folder):
        _generator_line(old, new)(folder)
        return folder / checkpoints.WEIGHTS
    return breaks


def _removed(name):
    def breaks(folder):
        (folder / name).unlink()
        return folder
    return breaks


def _weights_without_one_key(folder):
    path = folder / checkpoints.WEIGHTS
    tensors, _ = checkpoints.read_tensors(path)
    tensors.pop(sorted(tensors)[0])
    checkpoints.save_tensors(path, tensors)
    return path


_WEIGHTS = checkpoints.WEIGHTS
BROKEN = {
    "garbage_weights": _rewrite(_WEIGHTS, lambda _: np.random.default_rng(0).bytes(5000)),
    "truncated_weights": _rewrite(_WEIGHTS, lambda data: data[: len(data) // 2]),
    "empty_weights": _rewrite(_WEIGHTS, lambda _: b""),
    "weights_missing_a_key": _weights_without_one_key,
    "no_weights": _removed(_WEIGHTS),
    "model_not_yaml": _model("generator: {trunk: [unclosed\n"),
    "model_a_yaml_list": _model("- 1\n- 2\n"),
    "model_binary": _rewrite(checkpoints.MODEL, lambda _: bytes(range(256))),
    "model_empty": _model(""),
    "model_no_generator": _model(f"format_version: {checkpoints.MODEL_FORMAT}\n"),
    "model_newer_format": _rewrite(checkpoints.MODEL, lambda data: data.replace(
        f"format_version: {checkpoints.MODEL_FORMAT}".encode(), b"format_version: 9")),
    "model_unknown_arch": _generator_line("arch: residual", "arch: transformer"),
    "model_wrong_key": _generator_line("growth:", "growht:"),
    "model_wrong_type": _generator_line("features: 16", "features: many"),
    "model_unknown_trunk": _generator_line("trunk: rrdb", "trunk: transformer"),
    "model_env_interpolation": _generator_line("trunk: rrdb", "trunk: ${oc.env:H10_SECRET}"),
    "model_other_size": _sizes("features: 16", "features: 24"),
    "model_absurd_features": _sizes("features: 16", "features: 1000000000"),
    "model_absurd_blocks": _sizes("blocks: 1", "blocks: 1000000000"),
    "old_config_not_yaml": _old_config(lambda _: "stage: [unclosed\n"),
    "old_config_a_yaml_list": _old_config(lambda _: "- stage\n"),
    "old_config_unknown_trunk": _old_config(lambda text: text.replace("trunk: rrdb", "trunk: transformer")),
    "old_config_env_interpolation": _old_config(lambda text: text.replace("out_dir: runs/tiny", "out_dir: ${oc.env:H10_SECRET}")),
    "old_config_absurd_features": _old_config(lambda text: text.replace("features: 16", "features: 1000000000", 1), _WEIGHTS),
    "no_model_files": lambda folder: (_removed(checkpoints.MODEL)(folder), _removed(checkpoints.CONFIG)(folder))[0],
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_checkpoint_is_one_line_naming_the_file_and_exit_2(case, good, jpeg, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("H10_SECRET", SECRET)
    folder = tmp_path / "checkpoint"
    shutil.copytree(good, folder)
    named = BROKEN[case](folder)
    status = sample_main([str(jpeg), "-o", str(tmp_path / "out"), "--checkpoint", str(folder), "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"sample: {named}") and SECRET not in line
    model_file = {"model": checkpoints.MODEL, "old": checkpoints.CONFIG}.get(case.split("_")[0])
    assert model_file is None or model_file in line
    assert not (tmp_path / "out" / "in_s0.png").exists()


def test_sample_py_on_a_broken_checkpoint_exits_2_without_a_traceback(good, jpeg, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(good, folder)
    (folder / checkpoints.WEIGHTS).write_bytes(b"\x00" * 100)
    result = subprocess.run([sys.executable, str(ROOT / "sample.py"), str(jpeg), "-o", str(tmp_path / "out"),
                             "--checkpoint", str(folder), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"sample: {folder / checkpoints.WEIGHTS}: not a readable safetensors file (")


def test_a_weights_mismatch_names_the_keys(good, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(good, folder)
    _generator_line("features: 16", "features: 24")(folder)
    with pytest.raises(checkpoints.CheckpointError) as caught:
        checkpoints.load_generator(folder)
    message = str(caught.value)
    assert "\n" not in message and "conv_in.bias: [16] in the file, [24] in the generator model.yaml describes" in message
    assert "of another shape (" in message and " more" in message


def test_config_files_refuse_interpolations_and_never_read_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("H10_SECRET", SECRET)
    (tmp_path / "env.yaml").write_text("out_dir: ${oc.env:H10_SECRET}\n")
    (tmp_path / "nested.yaml").write_text("data: {modes: ['4:2:0', '${oc.env:H10_SECRET}']}\n")
    with pytest.raises(ConfigError, match=r"env.yaml: out_dir: interpolations") as caught:
        load_config(tmp_path / "env.yaml")
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError, match=r"nested.yaml: data.modes\[1\]: interpolations"):
        load_config(tmp_path / "nested.yaml")
    with pytest.raises(ConfigError, match="command line: out_dir: interpolations"):
        load_config(None, ["out_dir=${oc.env:H10_SECRET}"])


@pytest.mark.parametrize("text, reason", [
    ("steps: [unclosed\n", "not valid YAML"),
    ("- steps\n", "expected a mapping of keys to values, got a list"),
    ("steps: many\n", "steps: Value 'many' of type 'str' could not be converted to Integer"),
])
def test_train_py_with_an_unusable_config_file_exits_2_with_one_line(text, reason, train_main, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert train_main(["--config", str(config)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"train.py: {config}: {reason}")


def test_init_from_weights_of_another_size_exits_2_with_one_line(good, train_main, tmp_path, capsys):
    status = train_main(["--config", str(ROOT / "configs" / "tiny.yaml"), f"init_from={good}", "generator.features=24",
                         f"out_dir={tmp_path / 'run'}", "device=cpu", "progress=false"])
    assert status == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"train.py: {good / checkpoints.WEIGHTS}: weights do not fit this run's generator (init_from)")
    assert "conv_in.bias: [16] in the file, [24] in this run's generator" in line


# ----------------------------------------------------------------------------- model files (issue 12)
def test_a_model_survives_a_change_of_the_training_config(good, tmp_path):
    """model.yaml is all inference reads: config.yaml may hold keys that TrainConfig no longer knows."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(good, folder)
    config = folder / checkpoints.CONFIG
    config.write_text(config.read_text().replace("ema_half_life_images:", "ema_renamed_again:") + "no_longer_a_key: 1\n")
    with pytest.raises(ConfigError):
        load_config(config)  # the training config itself no longer loads
    generator, model = checkpoints.load_generator(folder)
    assert model.generator == load_config(ROOT / "configs" / "tiny.yaml").generator and model.posterior_mean is None
    reference = checkpoints.read_tensors(good / checkpoints.WEIGHTS)[0]
    assert all(torch.equal(v, reference[k]) for k, v in generator.state_dict().items())


def test_an_old_checkpoint_is_migrated_from_the_generator_section_of_its_config(good, tmp_path):
    """Checkpoints of before model.yaml: only config.yaml's generator section is read, so renamed or
    removed training keys elsewhere in it do not matter."""
    folder = tmp_path / "old"
    shutil.copytree(good, folder)
    (folder / checkpoints.MODEL).unlink()
    config = folder / checkpoints.CONFIG
    config.write_text(config.read_text().replace("ema_half_life_images:", "ema_renamed_again:").replace("  r1_every: 4\n", ""))
    _, model = checkpoints.load_generator(folder)
    assert model.generator == load_config(ROOT / "configs" / "tiny.yaml").generator and model.posterior_mean is None


@pytest.mark.parametrize("version", [2, 3])
def test_a_model_file_naming_m_mean_generator_loads_up_to_format_2(tmp_path, version):
    """Formats 1 and 2 named the posterior mean M's section `mean_generator`: such a file gives the
    same model as the bundled one (format 3, `posterior_mean`); a format 3 file written so is refused."""
    folder = tmp_path / "old"
    shutil.copytree(DEFAULT_MODEL, folder)
    text = (folder / checkpoints.MODEL).read_text()
    old = text.replace(f"format_version: {checkpoints.MODEL_FORMAT}", f"format_version: {version}")
    (folder / checkpoints.MODEL).write_text(old.replace("\nposterior_mean:", "\nmean_generator:"))
    if version == 3:
        with pytest.raises(checkpoints.CheckpointError, match="mean_generator"):
            checkpoints.model_config(folder)
        return
    model = checkpoints.model_config(folder)
    assert model == checkpoints.model_config(DEFAULT_MODEL) and model.posterior_mean is not None
    generator, _ = checkpoints.load_generator(folder)
    reference = checkpoints.read_tensors(DEFAULT_MODEL / checkpoints.WEIGHTS)[0]
    assert all(torch.equal(v, reference[k]) for k, v in generator.state_dict().items())


def test_the_bundled_model_file_matches_its_training_config(tmp_path):
    """posterior_jpeg/weights/default has model.yaml (read) and config.yaml (provenance): the two
    describe the same S (config.yaml names M's run, as `anchor` then; M's architecture is in model.yaml), and
    model.yaml is what save_inference_files writes for the model it describes."""
    shutil.copy(DEFAULT_MODEL / checkpoints.CONFIG, tmp_path / checkpoints.CONFIG)
    model = checkpoints.model_config(DEFAULT_MODEL)
    assert model.generator == checkpoints.model_config(tmp_path).generator
    assert model.posterior_mean is not None and not model.posterior_mean.noise
    generator, _ = checkpoints.load_generator(DEFAULT_MODEL)
    assert (DEFAULT_MODEL / checkpoints.MODEL).read_text() == (
        checkpoints.MODEL_HEADER + to_yaml(checkpoints.model_file(generator)))
