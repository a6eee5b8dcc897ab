"""Pretrained feature-network weights: the upstream table, each loader finding its file through
weights.dir and $POSTERIOR_JPEG_WEIGHTS (files written from randomly initialised networks, in
upstream's format), one-line errors for a missing file and a wrong hash, and `weights fetch` served
by file:// URLs."""

import dataclasses
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import pytorch_fid.inception
import torch
import torchvision
from torchvision.models import AlexNet_Weights, VGG16_Weights, VGG19_Weights

from posterior_jpeg.atomic import file_digest
from posterior_jpeg.commands import main as cli
from posterior_jpeg.commands.weights import FILE_NAMES
from posterior_jpeg.config import load_config
from posterior_jpeg.data import synthetic_image
from posterior_jpeg.errors import MissingWeightsError, PosteriorJpegError
from posterior_jpeg.evaluate import Runner, load_eval_config
from posterior_jpeg.metrics import LPIPS, InceptionFeatures
from posterior_jpeg.models import VGGFeatures
from posterior_jpeg.models.features import _vgg19_layers
from posterior_jpeg.pretrained import ENVIRONMENT, FILES, random_state
from posterior_jpeg.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_holds_the_files_the_libraries_download():
    """Same URLs as pytorch-fid and torchvision (lpips takes its backbones from torchvision), and
    each expected hash is the one the URL's file name carries (torch.hub's -<sha256 prefix>. rule)."""
    assert FILES["inception"].url == pytorch_fid.inception.FID_WEIGHTS_URL
    assert FILES["vgg19"].url == VGG19_Weights.IMAGENET1K_V1.url
    assert FILES["alexnet"].url == AlexNet_Weights.IMAGENET1K_V1.url
    assert FILES["vgg16"].url == VGG16_Weights.IMAGENET1K_V1.url
    for entry in FILES.values():
        assert re.search(r"-([a-f0-9]+)\.", entry.filename).group(1) == entry.sha256_prefix
    assert FILE_NAMES == tuple(FILES)


def _images(count: int, size: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.stack([torch.from_numpy(synthetic_image(rng, size)).permute(2, 0, 1).float() / 255
                        for _ in range(count)])


def _vgg19_expected(state):
    network = VGGFeatures("random")
    network.layers.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    return network


# name -> (upstream-format state of a random network, loader(weights, folder), reference network, input side)
LOADERS = {
    "inception": (lambda: random_state(torchvision.models.inception_v3(num_classes=1008, aux_logits=False,
                                                                       weights=None, init_weights=False)),
                  lambda weights, folder: InceptionFeatures(weights, folder),
                  lambda state: InceptionFeatures("random"), 32),
    "vgg19": (lambda: {f"features.{k}": v for k, v in random_state(_vgg19_layers()).items()},
              lambda weights, folder: VGGFeatures(weights, folder), _vgg19_expected, 32),
    "alexnet": (lambda: {f"features.{k}": v for k, v in random_state(torchvision.models.alexnet().features).items()},
                lambda weights, folder: LPIPS(weights, "alex", folder), lambda state: LPIPS("random", "alex"), 32),
}


def _output(network, images):
    with torch.no_grad():
        return network(images[:1], images[1:]) if isinstance(network, LPIPS) else network(images)


@pytest.mark.parametrize("name", LOADERS)
def test_each_loader_finds_its_file_by_weights_dir_or_environment_and_checks_it(name, tmp_path, monkeypatch):
    make_state, load, reference, size = LOADERS[name]
    state = make_state()
    folder = tmp_path / "weights"
    folder.mkdir()
    upstream = folder / FILES[name].filename
    torch.save(state, upstream)
    images = _images(2, size)
    expected = _output(reference(state), images)

    # the random network's file cannot carry upstream's hash: one line that says how to get the real one
    with pytest.raises(PosteriorJpegError) as error:
        load(None, folder)
    message = str(error.value)
    assert "\n" not in message and str(upstream) in message and FILES[name].sha256_prefix in message
    assert f"python -m posterior_jpeg weights fetch {folder}" in message

    # with the table's hash set to the file's, the folder from the config and from the environment both load it
    monkeypatch.setitem(FILES, name, dataclasses.replace(FILES[name], sha256_prefix=file_digest(upstream)[:8]))
    torch.testing.assert_close(_output(load(None, folder), images), expected)
    monkeypatch.setenv(ENVIRONMENT, str(folder))
    torch.testing.assert_close(_output(load(None, None), images), expected)

    # an explicit file under another name still wins, loaded as it is
    copy = tmp_path / "mine.pth"
    torch.save(state, copy)
    upstream.unlink()
    torch.testing.assert_close(_output(load(copy, folder), images), expected)

    # missing: one line naming the file and the command that fetches it
    with pytest.raises(MissingWeightsError) as error:
        load(None, folder)
    message = str(error.value)
    assert "\n" not in message and str(upstream) in message
    assert f"python -m posterior_jpeg weights fetch {folder}" in message and FILES[name].option in message
    with pytest.raises(MissingWeightsError, match=re.escape(str(tmp_path / "nowhere.pth"))):
        load(tmp_path / "nowhere.pth", folder)


def test_without_a_folder_the_hub_cache_is_searched_and_named(tmp_path, monkeypatch):
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(MissingWeightsError) as error:
        LPIPS()
    message = str(error.value)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "weights fetch DIR" in message and "features.lpips=PATH" in message


def test_training_and_evaluation_read_weights_dir(tmp_path, monkeypatch):
    """The config key reaches every loader: an empty weights.dir is named in the errors."""
    monkeypatch.delenv(ENVIRONMENT, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"out_dir={tmp_path / 'run'}", "device=cpu", "progress=false", "stage=posterior",
        "loss.perceptual={kind: constant, start: 0.1, end: 0.1}", f"weights.dir={empty}"])
    with pytest.raises(MissingWeightsError, match=re.escape(str(empty / FILES["vgg19"].filename))):
        Trainer(cfg)
    truth = tmp_path / "truth"
    truth.mkdir()
    cfg = load_eval_config(None, ["methods=[jpeg]", f"data.ground_truth={truth}", f"weights.dir={empty}",
                                  "device=cpu", "progress=false"])
    with pytest.raises(MissingWeightsError, match=re.escape(str(empty / FILES["inception"].filename))):
        Runner(cfg)


def _serve(tmp_path, monkeypatch, contents: dict[str, bytes]) -> None:
    """Point every table entry at a file:// URL holding `contents[name]`, with the hash of those bytes."""
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    for name, data in contents.items():
        path = served / FILES[name].filename
        path.write_bytes(data)
        monkeypatch.setitem(FILES, name, dataclasses.replace(FILES[name], url=path.as_uri(),
                                                             sha256_prefix=file_digest(path)[:8]))


def test_fetch_downloads_checks_and_prints_sha256(tmp_path, monkeypatch, capsys):
    alexnet = tmp_path / "alexnet.pth"
    torch.save({f"features.{k}": v for k, v in random_state(torchvision.models.alexnet().features).items()}, alexnet)
    contents = {name: f"{name} weights".encode() for name in FILES}
    contents["alexnet"] = alexnet.read_bytes()
    _serve(tmp_path, monkeypatch, contents)
    folder = tmp_path / "offline" / "weights"
    assert cli(["weights", "fetch", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{file_digest(folder / FILES[n].filename)}  {folder / FILES[n].filename}" for n in FILES]
    assert sorted(p.name for p in folder.iterdir()) == sorted(entry.filename for entry in FILES.values())
    assert all((folder / FILES[n].filename).read_bytes() == data for n, data in contents.items())
    images = _images(2, 32)
    torch.testing.assert_close(LPIPS(folder=folder)(images[:1], images[1:]), LPIPS("random")(images[:1], images[1:]))

    # files already there with the right hash are kept, not downloaded again
    def offline(*_, **__):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert cli(["weights", "fetch", str(folder), "--only", "alexnet"]) == 0
    assert capsys.readouterr().out.split() == [file_digest(folder / FILES["alexnet"].filename),
                                               str(folder / FILES["alexnet"].filename)]
    # a damaged file is downloaded again; a failing download is one line and leaves nothing behind
    (folder / FILES["vgg19"].filename).write_bytes(b"truncated")
    assert cli(["weights", "fetch", str(folder), "--only", "vgg19"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "download failed" in error and "no network" in error
    assert not any(p.name.endswith(".part") for p in folder.iterdir())


def test_fetch_keeps_nothing_whose_hash_is_wrong(tmp_path, monkeypatch, capsys):
    _serve(tmp_path, monkeypatch, {"inception": b"what upstream published"})
    (tmp_path / "served" / FILES["inception"].filename).write_bytes(b"what the mirror served instead")
    folder = tmp_path / "weights"
    assert cli(["weights", "fetch", str(folder), "--only", "inception"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "does not start with" in error and "nothing was kept" in error
    assert list(folder.iterdir()) == []
