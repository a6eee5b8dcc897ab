"""Networks by name (models/registry.py): an architecture written in this file alone trains, is
checkpointed and samples through the package's own paths; model files of before `arch` load; an
architecture that is not registered is a one-line error naming the ones that are."""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import posterior_jpeg as pj
from posterior_jpeg import checkpoints
from posterior_jpeg.commands.sample import main as sample_main
from posterior_jpeg.config import ConfigError, load_config
from posterior_jpeg.models import registry
from posterior_jpeg.models.generator import AnchoredGenerator, GeneratorConfig
from posterior_jpeg.models.noise import full_resolution_noise, noise_source
from posterior_jpeg.models.spread import SpreadConfig
from posterior_jpeg.sampler import DEFAULT_MODEL, PosteriorSampler
from posterior_jpeg.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


# ----------------------------------------------------------------------------- a new architecture
@dataclass
class ToyConfig:
    arch: str = "toy"  # the architecture's name in the registry
    width: int = 8  # hidden channels
    noise: bool = True  # false: a deterministic network (a posterior mean M)

    def __post_init__(self):
        if self.width < 1:
            raise ValueError(f"toy width must be positive, got {self.width}")


class Toy(nn.Module):
    """y + conv(lrelu(conv([y, z]))) at full resolution, z drawn through the package's noise source
    (so that the sampler's position-keyed noise keys it)."""

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3 + config.noise, config.width, 3, padding=1)
        self.conv2 = nn.Conv2d(config.width, 3, 3, padding=1)

    def forward(self, y: torch.Tensor, qtables: torch.Tensor, noise=None) -> torch.Tensor:
        inputs = [2.0 * y - 1.0]
        if self.config.noise:
            inputs.append(full_resolution_noise(noise_source(noise, len(y)), y, fields=1).to(y))
        return y + 0.1 * self.conv2(F.leaky_relu(self.conv1(torch.cat(inputs, dim=1)), 0.2))


@pytest.fixture
def toy(monkeypatch):
    """"toy" registered for this test alone (the registry as it was comes back afterwards)."""
    monkeypatch.setattr(registry, "ARCHITECTURES", dict(registry.ARCHITECTURES))
    registry.register("toy", "generator", ToyConfig)(Toy)


def toy_config(tmp_path: Path, name: str, generator: str, *lines: str) -> Path:
    """configs/tiny.yaml with its generator line replaced (and lines added): the one config a new
    architecture needs."""
    text = re.sub(r"(?m)^generator: .*$", f"generator: {generator}", TINY.read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(text + "".join(f"{line}\n" for line in lines))
    return path


def tiny_run(config: Path, out_dir: Path, *overrides: str) -> Path:
    return train(load_config(config, [f"out_dir={out_dir}", "progress=false", "device=cpu", "steps=2",
                                      "log_every=1", "val_every=2", "checkpoint_every=2", *overrides]))


def test_a_new_architecture_trains_as_m_and_as_s_and_samples_through_the_sampler(toy, tmp_path, natural_rgb,
                                                                                  pillow_jpeg):
    """The toy network as the posterior mean M (stage posterior_mean) and as the detail network S over it
    (stage posterior, antithetic): both runs' model files name it, the sample command loads the
    finished run, and its samples and M's decode are consistent with the file."""
    posterior_mean_run = tiny_run(toy_config(tmp_path, "toy_mean", "{arch: toy, width: 8, noise: false}"), tmp_path / "mean",
                        "stage=posterior_mean")
    run_dir = tiny_run(toy_config(tmp_path, "toy_detail", "{arch: toy, width: 4}", "antithetic: true"),
                       tmp_path / "detail", f"posterior_mean={posterior_mean_run}")
    model = checkpoints.model_config(checkpoints.latest_checkpoint(run_dir))
    assert model.generator == ToyConfig(width=4) and model.posterior_mean == ToyConfig(noise=False)
    assert "arch: toy" in (checkpoints.latest_checkpoint(run_dir) / checkpoints.MODEL).read_text()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2] and all(np.isfinite(r["g_total"]) for r in metrics)

    jpeg = tmp_path / "in.jpg"
    jpeg.write_bytes(pillow_jpeg(natural_rgb(40, 56, 0), quality=30))
    out = tmp_path / "out"
    assert sample_main([str(jpeg), "-n", "2", "-o", str(out), "--checkpoint", str(run_dir), "--quiet",
                        "--device", "cpu"]) == 0
    jf = pj.read_jpeg(jpeg)
    samples = [torch.from_numpy(np.array(Image.open(out / f"in_s{i}.png"))).permute(2, 0, 1) / 255.0 for i in range(2)]
    assert all(s.shape == (3, 40, 56) for s in samples) and not torch.equal(samples[0], samples[1])
    assert all(pj.metrics.coefficient_agreement(s, jf).coefficients >= 0.9999 for s in samples)

    sampler = PosteriorSampler.from_checkpoint(run_dir, device="cpu", dtype="fp32", tile=32, overlap=0)
    assert isinstance(sampler.generator, AnchoredGenerator) and isinstance(sampler.generator.mean, Toy)
    assert pj.metrics.coefficient_agreement(sampler.posterior_mean_decode(jf)[None], jf).coefficients == 1.0
    tiled = sampler.sample(jf, n=1, seed=3, project=False)  # position-keyed noise through the toy's own maps
    whole = PosteriorSampler.from_checkpoint(run_dir, device="cpu", dtype="fp32", tile=None).sample(jf, n=1, seed=3,
                                                                                          project=False)
    assert tiled.shape == whole.shape == (1, 3, 40, 56)
    assert (tiled - whole).abs()[..., 20:28, 36:52].max() < 1e-5  # away from the seams (a tile at 16, 32), the same


def test_an_architecture_that_is_not_registered_is_one_line_listing_those_that_are(toy, tmp_path):
    path = toy_config(tmp_path, "unet", "{arch: unet, width: 8}")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}:12: generator.arch='unet': must be one of residual, toy"
    with pytest.raises(ConfigError, match=r"^command line: critic.arch='toy': must be one of resnet$"):
        load_config(TINY, ["critic.arch=toy"])  # a generator is no critic
    with pytest.raises(ConfigError, match="width"):  # the architecture's own arguments are checked
        load_config(toy_config(tmp_path, "narrow", "{arch: toy, width: 0}"))
    with pytest.raises(ConfigError, match="features"):  # and only its own
        load_config(toy_config(tmp_path, "mixed", "{arch: toy, features: 16}"))
    switched = load_config(TINY, ["generator.arch=residual", "spread.features=8", "posterior_mean=somewhere"])
    assert switched.spread == SpreadConfig(features=8)  # a section filled without `arch`: its default


def test_registration_names_its_config_once(toy):
    with pytest.raises(ValueError, match="registered already"):
        registry.register("toy", "generator", ToyConfig)
    with pytest.raises(ValueError, match="arch: str = 'blob'"):
        registry.register("blob", "generator", ToyConfig)
    with pytest.raises(ValueError, match="unknown network kind"):
        registry.register("toy", "encoder", ToyConfig)
    with pytest.raises(ValueError, match="no architecture is registered"):
        registry.build(ToyConfig(arch="residual"))
    assert isinstance(registry.build(ToyConfig()), Toy) and registry.names("generator") == ["residual", "toy"]


# ----------------------------------------------------------------------------- old files
def test_every_shipped_config_names_the_architectures_it_always_had():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name in ("eval.yaml", "sweep_consistency.yaml"):
            continue
        cfg = load_config(path, ["data.train=photos"])
        assert (cfg.generator.arch, cfg.critic.arch) == ("residual", "resnet"), path.name
        assert cfg.spread is None or cfg.spread.arch == "band_spread", path.name


def test_a_model_file_of_format_1_loads_as_the_architectures_of_its_time(tmp_path):
    """Format 1 named no architectures: the bundled model.yaml without its `arch` lines, as it was
    written then, gives the same model and the same network."""
    folder = tmp_path / "old"
    shutil.copytree(DEFAULT_MODEL, folder)
    text = (folder / checkpoints.MODEL).read_text()
    old = re.sub(r"(?m)^  arch: .*\n", "", text).replace(f"format_version: {checkpoints.MODEL_FORMAT}", "format_version: 1")
    old = old.replace("\nposterior_mean:", "\nmean_generator:")  # M's section, as named before format 3
    assert "arch:" not in old and "format_version: 1\n" in old and "mean_generator:" in old
    (folder / checkpoints.MODEL).write_text(old)
    model = checkpoints.model_config(folder)
    assert model == checkpoints.model_config(DEFAULT_MODEL) and model.format_version == checkpoints.MODEL_FORMAT
    assert model.generator == GeneratorConfig(trunk="plain", features=64, blocks=8, table_embedding=64,
                                              full_res_features=8)
    generator, _ = checkpoints.load_generator(folder)
    reference = checkpoints.read_tensors(DEFAULT_MODEL / checkpoints.WEIGHTS)[0]
    assert all(torch.equal(v, reference[k]) for k, v in generator.state_dict().items())
