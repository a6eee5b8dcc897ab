"""Evaluation: the Frechet distance, FID behaviour, repeated FIDs, two processes, and the evaluate and
sweep pipelines end to end on a tiny checkpoint with random feature weights."""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from PIL import Image

from posterior_jpeg import evaluate as ev
from posterior_jpeg import sweep as sw
from posterior_jpeg.commands import main as cli
from posterior_jpeg.config import load_config
from posterior_jpeg.data import synthetic_image
from posterior_jpeg.errors import ConfigError, PosteriorJpegError, SymlinkError
from posterior_jpeg.metrics import (
    LPIPS,
    GaussianStats,
    InceptionFeatures,
    coefficient_agreement,
    frechet_distance,
)
from posterior_jpeg.metrics.diversity import mean_pairwise_distance
from posterior_jpeg.errors import StatisticsError
from posterior_jpeg.metrics.perceptual import BACKBONES
from posterior_jpeg.pixels import round_to_8_bits, to_hwc_uint8
from posterior_jpeg.pretrained import random_state
from posterior_jpeg.metrics.registry import table_metrics
from posterior_jpeg.report import Key, Tally, repeat_summary, summarize
from posterior_jpeg.sampler import PosteriorSampler
from posterior_jpeg.training import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tests run many small convolutions, which two OpenMP threads slow
    down several times over when another process holds one of a shared machine's two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------- Frechet distance
def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: the textbook formula with SciPy's general matrix square root."""
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def _spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_matches_closed_form_and_scipy():
    rng = np.random.default_rng(0)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2 exactly
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    a, b = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    closed = (mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    ours = frechet_distance(GaussianStats.from_moments(mu1, np.diag(a)), GaussianStats.from_moments(mu2, np.diag(b)))
    assert ours == pytest.approx(closed, rel=1e-10)
    # full covariances: against SciPy's sqrtm
    s1, s2 = _spd(rng, 32), _spd(rng, 32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    ours = frechet_distance(GaussianStats.from_moments(mu1, s1), GaussianStats.from_moments(mu2, s2))
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)
    # fewer samples than dimensions (the low-rank factor path) equals the covariance path
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(25, 64)) * 1.5 + 0.3
    from_features = frechet_distance(GaussianStats.from_features(x), GaussianStats.from_features(y))
    from_moments = frechet_distance(GaussianStats.from_moments(x.mean(0), np.cov(x, rowvar=False)),
                                    GaussianStats.from_moments(y.mean(0), np.cov(y, rowvar=False)))
    assert from_features == pytest.approx(from_moments, rel=1e-8)
    # many samples of known Gaussians: the estimate approaches the closed form
    mu1, mu2, a, b = np.zeros(3), np.array([1.0, 0.0, -0.5]), np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 2.0])
    x = rng.normal(size=(40000, 3)) * np.sqrt(a) + mu1
    y = rng.normal(size=(40000, 3)) * np.sqrt(b) + mu2
    closed = (mu1 - mu2) @ (mu1 - mu2) + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(GaussianStats.from_features(x), GaussianStats.from_features(y)) == pytest.approx(closed, abs=0.03)


def test_statistics_round_trip_and_read_pytorch_fid_files(tmp_path):
    rng = np.random.default_rng(1)
    stats = GaussianStats.from_features(rng.normal(size=(10, 8)))
    stats.save(tmp_path / "ours.npz")
    np.savez(tmp_path / "pytorch_fid.npz", mu=stats.mu, sigma=stats.sigma)  # what pytorch-fid --save-stats writes
    other = GaussianStats.from_features(rng.normal(size=(12, 8)) + 1)
    expected = frechet_distance(stats, other)
    for name in ("ours.npz", "pytorch_fid.npz"):
        assert frechet_distance(GaussianStats.load(tmp_path / name), other) == pytest.approx(expected, rel=1e-9)


def test_repeat_summary_and_per_image_averaging():
    mean, std = repeat_summary([4.0, 5.0, 6.0, 9.0])
    assert mean == 6.0 and std == pytest.approx(np.sqrt(((4 - 6) ** 2 + 1 + 0 + 9) / 3))
    assert repeat_summary([3.0]) == (3.0, None)
    key = Key("run", "ours")
    tally = Tally()
    for metric, index, value in [("psnr_rgb", 0, 10.0), ("psnr_rgb", 0, 20.0), ("psnr_rgb", 1, 40.0),
                                 ("consistency_rmse", 0, 1.0), ("consistency_rmse", 1, 3.0),
                                 ("coefficient_agreement", 0, (1, 64)), ("coefficient_agreement", 1, (3, 64))]:
        tally.add(key, metric, index, value)
    tally.add(Key("", "jpeg"), "consistency_rmse", 0, 7.0)  # another row's records stay apart
    summary = summarize(tally.records)[key]
    assert summary["psnr_rgb"] == 27.5  # per image over repeats (15, 40), then over images
    assert summary["images"] == 2 and summary["coefficient_agreement"] == 1 - 4 / 128


# ----------------------------------------------------------------------------------- feature networks
@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures("random")


def _images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy(synthetic_image(rng, size)).permute(2, 0, 1).float() / 255 for _ in range(count)])


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(inception):
    images = _images(4)
    clean = GaussianStats.from_features(inception(images))
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    fids = [frechet_distance(clean, GaussianStats.from_features(inception((images + s * noise).clamp(0, 1))))
            for s in (0.05, 0.3)]
    assert frechet_distance(clean, clean) < 1e-9 * fids[0]
    assert 0 < fids[0] < fids[1]
    # an image's features do not depend on the batch it is in, nor on the other images' sizes
    alone = inception([images[1, :, :16, :24]])
    mixed = inception([images[0], images[1, :, :16, :24]])
    assert torch.allclose(alone[0], mixed[1], rtol=1e-5, atol=1e-7)


def test_weights_files_that_are_not_the_network_say_so(tmp_path):
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(PosteriorJpegError, match="does not hold"):
        InceptionFeatures(tmp_path / "wrong.pth")
    with pytest.raises(PosteriorJpegError, match="does not hold"):
        LPIPS(tmp_path / "wrong.pth")


def test_explicit_weights_files_load_through_the_same_code(tmp_path, inception):
    twin = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    torch.save(random_state(twin), tmp_path / "inception.pth")
    from_file = InceptionFeatures(tmp_path / "inception.pth")
    images = _images(2)
    assert torch.equal(from_file(images[:1]), inception(images[:1]))
    torch.save(random_state(BACKBONES["alex"][0](weights=None)), tmp_path / "alexnet.pth")  # a full state dict
    assert torch.equal(LPIPS(tmp_path / "alexnet.pth")(images[:1], images[1:]), LPIPS("random")(images[:1], images[1:]))


# ----------------------------------------------------------------------------------- pipelines
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny trained checkpoint, three 32-pixel ground-truth images and a shared FID cache."""
    root = tmp_path_factory.mktemp("evaluation")
    truth = root / "truth"
    truth.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(synthetic_image(rng, 32)).save(truth / f"image_{i}.png")
    run = train(load_config(ROOT / "configs" / "tiny.yaml", [
        f"out_dir={root / 'tiny'}", "progress=false", "device=cpu", "steps=2", "checkpoint_every=2",
        "val_every=1000", "log_every=1"]))
    return {"root": root, "truth": truth, "run": run, "cache": root / "fid_cache"}


def _eval_overrides(ws, out_dir, *extra) -> list[str]:
    return [f"checkpoints=[{ws['run']}]", f"mmse_checkpoint={ws['run']}", "methods=[jpeg,mmse,ours,ours_p,ours_a]",
            f"data.ground_truth={ws['truth']}", "repeats=2", "samples=2", "features.inception=random",
            "features.lpips=random", f"fid_cache={ws['cache']}", f"out_dir={out_dir}", "device=cpu",
            "progress=false", *extra]


@pytest.fixture(scope="module")
def single_process(workspace):
    out_dir = workspace["root"] / "single"
    code = cli(["eval", "--config", str(ROOT / "configs" / "eval.yaml"), *_eval_overrides(workspace, out_dir)])
    assert code == 0
    return json.loads((out_dir / "results.json").read_text()), out_dir


def test_evaluate_end_to_end(single_process, workspace, inception):
    results, out_dir = single_process
    assert {p.name for p in out_dir.iterdir()} >= {"results.json", "results.csv", "results.md"}
    rows = {row["method"]: row for row in results["rows"]}
    assert list(rows) == ["JPEG (libjpeg)", "MMSE", "Ours", "Ours-P", "Ours-A"]
    assert all(row["images"] == 3 and row["fid"] > 0 for row in rows.values())
    ours = rows["Ours"]
    assert len(ours["fid_repeats"]) == 2 and ours["fid_repeats"][0] != ours["fid_repeats"][1]
    assert (ours["fid"], ours["fid_std"]) == pytest.approx(repeat_summary(ours["fid_repeats"]))
    assert rows["Ours-P"]["consistency_rmse"] == 0.0 and rows["Ours-P"]["coefficient_agreement"] == 1.0
    assert ours["consistency_rmse"] > 0 and ours["pixel_std"] > 0 and ours["pairwise_lpips"] > 0
    assert rows["MMSE"]["pixel_std"] is None and rows["Ours-A"]["fid_std"] is None
    table = (out_dir / "results.md").read_text()
    assert "NOT comparable" in table and "| Ours-P |" in table and "3 from" in table

    # repeat 1 recomputed by hand: one sample per image with seed i * SEED_STRIDE + 1, against the cached reference
    (cached,) = workspace["cache"].glob("*.npz")
    sampler = PosteriorSampler.from_checkpoint(workspace["run"], device="cpu", dtype="auto")
    test_set = ev.TestSet(ev.load_eval_config(None, _eval_overrides(workspace, "x")).data, ev.Setting(10, "4:2:0"))
    features = []
    for i in range(len(test_set)):
        jpeg = test_set.item(i).jpeg
        features.append(inception(round_to_8_bits(sampler.sample(jpeg, n=1, seed=i * ev.SEED_STRIDE + 1, project=False))))
    by_hand = frechet_distance(GaussianStats.load(cached), GaussianStats.from_features(torch.cat(features)))
    assert ours["fid_repeats"][1] == pytest.approx(by_hand, rel=1e-6)


def test_one_draw_gives_each_repeat_the_sample_of_its_seed(workspace):
    """Samples are drawn once per image, max(repeats, samples) of them: repeat r's output is the
    sample of seed i * SEED_STRIDE + r, the same bits as when each repeat drew its own."""
    cfg = ev.load_eval_config(None, [*_eval_overrides(workspace, workspace["root"] / "draw"), "methods=[ours,ours_p,ours_a]",
                                     "repeats=3", "samples=2", "dtype=fp32"])
    runner = ev.Runner(cfg)
    item = ev.TestSet(cfg.data, ev.Setting(10, "4:2:0")).item(1)
    outputs = runner.outputs(item)
    label = Path(workspace["run"]).name
    ours, projected, mean = (outputs[Key(label, m)] for m in ("ours", "ours_p", "ours_a"))
    assert (ours.repeats, ours.diversity, len(ours.images)) == (3, 2, 3) and len(projected.images) == 3
    assert (mean.repeats, mean.diversity, len(mean.images)) == (1, 0, 1)
    sampler = PosteriorSampler.from_checkpoint(workspace["run"], device="cpu", dtype="fp32")
    alone = torch.cat([sampler.sample(item.jpeg, n=1, seed=ev.SEED_STRIDE + r, project=False) for r in range(3)])
    assert torch.equal(round_to_8_bits(alone), ours.images)
    assert torch.equal(round_to_8_bits(alone[:2].mean(0, keepdim=True)), mean.images)
    assert coefficient_agreement(projected.images, item.jpeg).coefficients == 1.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_give_the_same_results_as_one(single_process, workspace):
    """torchrun with 2 CPU processes (Accelerate's state picks up the gloo process group)."""
    out_dir = workspace["root"] / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "posterior_jpeg", "eval",
               "--config", str(ROOT / "configs" / "eval.yaml"), *_eval_overrides(workspace, out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((out_dir / "results.json").read_text())
    one = single_process[0]
    assert two["header"]["processes"] == 2 and one["header"]["processes"] == 1
    assert len(two["rows"]) == len(one["rows"])
    for a, b in zip(one["rows"], two["rows"]):
        assert a["method"] == b["method"] and a["images"] == b["images"]
        assert b["fid_repeats"] == pytest.approx(a["fid_repeats"], rel=1e-5)
        for metric in (m.name for m in table_metrics()):
            if a[metric] is None:  # a metric that does not apply to this method
                assert b[metric] is None, (a["method"], metric)
            else:
                assert b[metric] == pytest.approx(a[metric], rel=1e-6), (a["method"], metric)


def test_real_jpeg_folder_without_ground_truth_and_a_bad_file(workspace, pillow_jpeg, natural_rgb):
    folder = workspace["root"] / "jpegs"
    folder.mkdir()
    for i in range(2):
        (folder / f"photo_{i}.jpg").write_bytes(pillow_jpeg(natural_rgb(32, 48, seed=i), quality=20))
    gray = Image.fromarray(natural_rgb(32, 48, seed=2)).convert("L")  # one-channel samples, measured as RGB
    (folder / "photo_gray.jpg").write_bytes(pillow_jpeg(gray, quality=20))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    cfg = ev.load_eval_config(ROOT / "configs" / "eval.yaml", [
        f"checkpoints=[{workspace['run']}]", "methods=[jpeg,ours,ours_p]", f"data.jpegs={folder}", "repeats=1",
        "samples=2", "features.lpips=random", f"out_dir={workspace['root'] / 'jpegs_out'}", "device=cpu", "progress=false"])
    results = ev.evaluate(cfg)  # no FID reference: Inception is not even built
    assert list(results["skipped"]) == [str(folder / "broken.jpg")]
    rows = {row["method"]: row for row in results["rows"]}
    assert all(r["images"] == 3 and r["fid"] is None and r["psnr_rgb"] is None for r in rows.values())
    assert rows["Ours-P"]["consistency_rmse"] == 0.0 and rows["Ours"]["pixel_std"] > 0
    assert rows["JPEG (libjpeg)"]["subsampling"] is None


def _jpeg_only_job(truth: Path, out_dir: Path, cache: Path, *extra) -> list[str]:
    return ["methods=[jpeg]", f"data.ground_truth={truth}", "data.crop=full", "features.inception=random",
            "features.lpips=random", f"fid_cache={cache}", f"out_dir={out_dir}", "device=cpu", "progress=false", *extra]


def test_sixteen_bit_and_too_small_ground_truth(tmp_path):
    """A 16-bit PNG measures like its 8-bit twin (it used to be read as pure white: PSNR 100 against a
    white decode); an 8x8 image, too small for LPIPS, is skipped with its reason (it used to end the
    job with a traceback); a cached reference that cannot be read is computed again."""
    rng = np.random.default_rng(5)
    grays = [synthetic_image(rng, 32)[..., 0] for _ in range(2)]
    for folder, to_file in (("eight", lambda g: g), ("sixteen", lambda g: g.astype(np.uint16) * 257)):
        (tmp_path / folder).mkdir()
        for i, gray in enumerate(grays):
            Image.fromarray(to_file(gray)).save(tmp_path / folder / f"image_{i}.png")
        Image.fromarray(to_file(grays[0][:8, :8])).save(tmp_path / folder / "tiny.png")
    assert Image.open(tmp_path / "sixteen" / "image_0.png").mode == "I;16"
    assert np.array_equal(ev.load_image(tmp_path / "sixteen" / "image_1.png", "full"), np.stack([grays[1]] * 3, axis=-1))
    cache = tmp_path / "cache"
    rows = {}
    for folder in ("eight", "sixteen"):
        results = ev.evaluate(ev.load_eval_config(ROOT / "configs" / "eval.yaml", _jpeg_only_job(
            tmp_path / folder, tmp_path / f"{folder}_out", cache / folder)), print_table=False)
        tiny = str(tmp_path / folder / "tiny.png")
        assert results["skipped"] == {tiny: f"{tiny}: 8x8 is smaller than the 31x31 pixels LPIPS needs; not measured"}
        (rows[folder],) = results["rows"]
    assert rows["eight"]["images"] == 2 and rows["eight"]["psnr_rgb"] < 40
    for name in ("psnr_rgb", "psnr_y", "lpips", "fid"):
        assert rows["sixteen"][name] == pytest.approx(rows["eight"][name], rel=1e-9), name
    (cached,) = (cache / "eight").glob("*.npz")
    cached.write_bytes(b"cut short by a full disk")
    again = ev.evaluate(ev.load_eval_config(ROOT / "configs" / "eval.yaml", _jpeg_only_job(
        tmp_path / "eight", tmp_path / "again", cache / "eight")), print_table=False)
    assert again["rows"][0]["fid"] == pytest.approx(rows["eight"]["fid"], rel=1e-9)
    assert GaussianStats.load(cached).count == 3  # the reference takes the tiny image too (Inception resizes)


def test_lpips_knows_the_smallest_image_it_measures():
    for net, side in (("alex", 31), ("vgg", 16)):
        lpips = LPIPS("random", net)
        assert lpips.min_size == side
        assert lpips(torch.rand(1, 3, side, side + 9), torch.rand(1, 3, side, side + 9)).shape == (1,)
        with pytest.raises(ValueError, match=f"LPIPS \\({net}\\) needs images of at least {side}x{side} pixels"):
            lpips(torch.rand(1, 3, side - 1, 64), torch.rand(1, 3, side - 1, 64))


def test_lpips_features_once_give_the_package_distances():
    """LPIPS from features computed once per image equals the lpips package's forward on each pair."""
    lpips = LPIPS("random")
    images = _images(4, size=40, seed=7)
    direct = lpips.model(images[:2], images[2:], normalize=True).flatten()
    assert torch.allclose(lpips(images[:2], images[2:]), direct, rtol=1e-5, atol=1e-7)
    pairs = [lpips.model(images[i : i + 1], images[j : j + 1], normalize=True).item()
             for i, j in itertools.combinations(range(4), 2)]
    assert mean_pairwise_distance(lpips.features(images), lpips) == pytest.approx(np.mean(pairs), rel=1e-5)
    assert mean_pairwise_distance(lpips.features(images[:2]), lpips) == pytest.approx(pairs[0], rel=1e-5)


def test_unusable_fid_statistics_are_refused_with_one_line(tmp_path):
    np.save(tmp_path / "array.npy", np.zeros(3))
    np.savez(tmp_path / "nokeys.npz", means=np.zeros(3))
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    np.savez(tmp_path / "nan.npz", mu=np.zeros(2), sigma=np.full((2, 2), np.nan))
    np.savez(tmp_path / "objects.npz", mu=np.array([{}], dtype=object), sigma=np.zeros((1, 1)))
    whole = (tmp_path / "shapes.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not statistics at all")
    reasons = {"garbage.npz": "not an .npz file", "array.npy": "not an .npz file", "cut.npz": "not an .npz file",
               "objects.npz": "not an .npz file", "nokeys.npz": "need arrays mu and sigma, found means",
               "shapes.npz": "do not fit", "nan.npz": "not finite", "missing.npz": "cannot read"}
    for name, reason in reasons.items():
        with pytest.raises(StatisticsError) as error:
            GaussianStats.load(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: ") and reason in str(error.value), str(error.value)


def test_a_bad_fid_reference_ends_the_job_with_one_line(workspace, tmp_path, capsys):
    (tmp_path / "garbage.npz").write_bytes(b"not statistics at all")
    GaussianStats.from_features(np.random.default_rng(0).normal(size=(4, 8))).save(tmp_path / "small.npz")
    for name, reason in (("garbage.npz", "not an .npz file of FID statistics"),
                         ("small.npz", "statistics of 8-d features; FID's Inception pool3 features are 2048-d")):
        overrides = _jpeg_only_job(workspace["truth"], tmp_path / "out", tmp_path / "cache",
                                   f"data.fid_reference={tmp_path / name}")
        assert cli(["eval", "--config", str(ROOT / "configs" / "eval.yaml"), *overrides]) == 1
        assert capsys.readouterr().err == f"posterior-jpeg eval: {tmp_path / name}: {reason}" + (
            " (it does not start like a zip archive)\n" if name == "garbage.npz" else "\n")


def test_cli_reports_config_and_weights_errors(workspace, tmp_path, monkeypatch, capsys):
    config = str(ROOT / "configs" / "eval.yaml")
    assert cli(["eval", "--config", config, "repeatz=2"]) == 2
    assert "repeatz" in capsys.readouterr().err
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    overrides = [f"checkpoints=[{workspace['run']}]", f"data.ground_truth={workspace['truth']}", f"out_dir={tmp_path}/o"]
    assert cli(["eval", "--config", config, *overrides]) == 1
    assert "FID Inception weights not found" in capsys.readouterr().err


def test_sweep_end_to_end_and_resume(workspace, monkeypatch):
    out_dir = workspace["root"] / "sweep"
    overrides = [
        f"out_dir={out_dir}", f"train_config={ROOT / 'configs' / 'tiny.yaml'}",
        "train_overrides=[steps=2,checkpoint_every=2,val_every=1000,progress=false,device=cpu]",
        "lambda_values=[5]", f"points=[{{name: given, checkpoint: '{workspace['run']}'}}]",
        f"eval.data.ground_truth={workspace['truth']}", "eval.data.crop=mod16", "eval.qualities=[10]",
        "eval.methods=[jpeg,ours]", "eval.repeats=1", "eval.samples=2", "eval.features.inception=random",
        "eval.features.lpips=random", f"eval.fid_cache={workspace['cache']}", "eval.device=cpu", "eval.progress=false"]
    cfg = sw.load_sweep_config(ROOT / "configs" / "sweep_consistency.yaml", overrides)
    result = sw.run_sweep(cfg)
    assert [(r["point"], r["method"]) for r in result["rows"]] == [
        ("JPEG (libjpeg)", "JPEG (libjpeg)"), ("lambda_C=5", "Ours"), ("given", "Ours")]
    assert result["rows"][1]["lambda_c"] == "5" and all(r["fid"] > 0 for r in result["rows"])
    (plot,) = result["plots"]
    assert Path(plot).stat().st_size > 10_000 and Image.open(plot).size[0] > 500
    assert "lambda_C=5" in (out_dir / "sweep.md").read_text() and (out_dir / "sweep.csv").is_file()
    trained = load_config(out_dir / "runs" / "lambda_C=5" / "config.yaml")
    assert (trained.loss.consistency.start, trained.loss.consistency.end) == (5.0, 5.0)

    def forbidden(*_, **__):
        raise AssertionError("a finished point was recomputed")

    monkeypatch.setattr(sw, "train", forbidden)
    monkeypatch.setattr(sw, "evaluate", forbidden)
    again = sw.run_sweep(cfg)
    assert again["rows"] == result["rows"]
    changed = sw.load_sweep_config(ROOT / "configs" / "sweep_consistency.yaml", [*overrides, "eval.seed=1"])
    with pytest.raises(AssertionError, match="recomputed"):  # other eval settings: evaluated again
        sw.run_sweep(changed)


# ----------------------------------------------------------------------------------- result pages
def zoom_transforms(browser, group: int) -> list[str]:
    return browser.run(f"return [...document.querySelectorAll('.zoom-group')[{group}].querySelectorAll('img')]"
                       ".map(i => i.style.transform)")


def check_page_in_chromium(browser, page: Path, images: int) -> None:
    """Loads with every image shown, no console error, no request outside the folder; a wheel on a
    crop zooms its whole row and no other."""
    browser.load(page)
    shown = browser.load_every_image()
    assert len(shown) == images and all(image["width"] > 0 for image in shown), shown
    frame = browser.driver.find_elements("css selector", ".zoom-group .frame")[1]
    before = zoom_transforms(browser, 1)
    browser.run("const f = arguments[0], r = f.getBoundingClientRect(); f.dispatchEvent(new WheelEvent('wheel',"
                " {deltaY: -500, clientX: r.left + 5, clientY: r.top + 5, bubbles: true, cancelable: true}))", frame)
    zoomed = zoom_transforms(browser, 0)
    assert len(set(zoomed)) == 1 and "scale(1)" not in zoomed[0] and zoom_transforms(browser, 1) == before
    assert browser.console_errors() == []
    assert all(url.startswith(("file://", "data:")) for url in browser.requested_urls())


def test_evaluation_crops_are_the_measured_outputs(single_process, workspace):
    """The page's crops come from the evaluation's own pass (no second draw): every method's, of
    repeat 0, the originals and decodes exact, Ours-P consistent."""
    results, out_dir = single_process
    rows = json.loads((out_dir / "crops" / "crops.json").read_text())
    assert [r["image"] for r in rows] == ["image_0.png", "image_1.png", "image_2.png"]
    methods = ["original", "JPEG (libjpeg)", "MMSE", "Ours", "Ours-P", "Ours-A"]
    assert all([c["method"] for c in r["crops"]] == methods for r in rows)
    # the crops are the evaluated outputs: original and libjpeg decode of image 1, Ours-P consistent
    item = ev.TestSet(ev.load_eval_config(None, _eval_overrides(workspace, "x")).data, ev.Setting(10, "4:2:0")).item(1)
    crops = {c["method"]: np.array(Image.open(out_dir / c["file"])) for c in rows[1]["crops"]}
    for method, image in (("original", item.ground_truth), ("JPEG (libjpeg)", item.decoded)):
        assert np.array_equal(crops[method], (image[0] * 255).round().byte().permute(1, 2, 0).numpy())
    projected = torch.from_numpy(crops["Ours-P"]).permute(2, 0, 1).float() / 255
    assert coefficient_agreement(projected, item.jpeg).coefficients == 1.0
    sampler = PosteriorSampler.from_checkpoint(workspace["run"], device="cpu", dtype="auto")
    first = to_hwc_uint8(sampler.sample(item.jpeg, n=1, seed=ev.SEED_STRIDE, project=False)[0])
    assert np.array_equal(crops["Ours"], first)  # sample 0 of image 1, the same bits


def test_evaluation_page_shows_table_and_crops_of_every_method(single_process, browser):
    out_dir = single_process[1]
    methods = ["original", "JPEG (libjpeg)", "MMSE", "Ours", "Ours-P", "Ours-A"]
    page = (out_dir / "index.html").read_text()
    assert "NOT comparable" in page and "<td>Ours-P</td>" in page
    check_page_in_chromium(browser, out_dir / "index.html", images=3 * len(methods))


def test_sweep_page_shows_plot_table_and_crops_across_points(workspace, browser):
    out_dir = workspace["root"] / "sweep_page"
    points = ", ".join(f"{{name: {name}, checkpoint: '{workspace['run']}'}}" for name in ("first", "second"))
    cfg = sw.load_sweep_config(ROOT / "configs" / "sweep_consistency.yaml", [
        f"out_dir={out_dir}", "lambda_values=[]", f"points=[{points}]", f"eval.data.ground_truth={workspace['truth']}",
        "eval.methods=[jpeg,ours_p]", "eval.repeats=1", "eval.samples=2", "eval.features.inception=random",
        "eval.features.lpips=random", f"eval.fid_cache={workspace['cache']}", "eval.device=cpu", "eval.progress=false"])
    result = sw.run_sweep(cfg)
    page = (out_dir / "index.html").read_text()
    (plot,) = result["plots"]
    assert f'src="{Path(plot).name}"' in page
    for link in ("baselines/index.html", "points/first/index.html", "points/second/index.html"):
        assert f'href="{link}"' in page and (out_dir / link).is_file()
    assert page.count("<b>first: Ours-P</b>") == page.count("<b>second: Ours-P</b>") == 3
    check_page_in_chromium(browser, out_dir / "index.html", images=1 + 3 * 4)  # plot; original, JPEG, 2 points


def test_an_anchored_model_reports_calibration_around_its_mean(workspace):
    """The bundled model has an M: its posterior rows measure the samples' spread around it; the
    baselines and a model without M have no such figure."""
    from posterior_jpeg.sampler import DEFAULT_MODEL

    cfg = ev.load_eval_config(ROOT / "configs" / "eval.yaml", [
        f"checkpoints=[{DEFAULT_MODEL}]", "methods=[jpeg,ours,ours_p]", f"data.ground_truth={workspace['truth']}",
        "repeats=1", "samples=3", "data.limit=2", "features.lpips=random", "features.inception=random", "dtype=fp32",
        f"fid_cache={workspace['cache']}",
        f"out_dir={workspace['root'] / 'calibration_out'}", "device=cpu", "progress=false"])
    rows = {row["method"]: row for row in ev.evaluate(cfg, print_table=False)["rows"]}
    for method in ("Ours", "Ours-P"):
        assert rows[method]["calibration"] > 0 and -1 <= rows[method]["calibration_rank"] <= 1
        assert np.isfinite(rows[method]["psnr_gap"])
    assert rows["JPEG (libjpeg)"]["calibration"] is None


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_a_sweep_point_name_is_a_plain_folder_name(name):
    """A point's runs and evaluations are folders named after it: '..' would write into the sweep's own."""
    with pytest.raises(ConfigError, match="not start with '.'"):
        sw.load_sweep_config(ROOT / "configs" / "sweep_consistency.yaml", [f"points=[{{name: '{name}', checkpoint: x}}]"])


# ----------------------------------------------------------------------------------- config rules and out_dir
EVAL_YAML = str(ROOT / "configs" / "eval.yaml")
LINK_MESSAGE = "is a symbolic or hard link; this tool does not write through links (remove it, or choose another output folder)"


@pytest.fixture
def nothing_built(monkeypatch):
    """An evaluation that gets as far as building its devices and networks fails the test."""
    monkeypatch.setattr(ev, "PartialState", lambda **_: pytest.fail("the job started"))


def test_random_wrong_eval_overrides_give_one_line_and_exit_2_before_anything_is_built(nothing_built, capsys,
                                                                                        wrong_overrides):
    """Property test, as for training: whatever checked key of an evaluation config and wrong value,
    --print-config and a real job both answer with exactly one line naming the key, exit 2."""
    from omegaconf import OmegaConf

    defaults = OmegaConf.merge(OmegaConf.structured(ev.EvalConfig), {"data": {"limit": 1}})  # optional: None
    for override in wrong_overrides(ev.EVAL_RULES, defaults, 60):
        key = override.split("=")[0]
        for extra in (["--print-config"], []):
            code = cli(["eval", "--config", EVAL_YAML, "data.ground_truth=unused", "methods=[jpeg]", override, *extra])
            out, err = capsys.readouterr()
            assert code == 2 and out == "" and len(err.splitlines()) == 1, (override, err)
            assert err.startswith("posterior-jpeg eval: ") and key in err, (override, err)


@pytest.mark.parametrize("override, line", [
    ("data.crop=7", "command line: data.crop='7': must be full, mod16 or an integer in [32, 4096]"),
    ("data.crop=100000", "command line: data.crop='100000': must be full, mod16 or an integer in [32, 4096]"),
    ("seed=-1", "command line: seed=-1: must be an integer in [0, 4294967295]"),
    ("out_dir=/proc/x", "out_dir=/proc/x: cannot make the folder there (No such file or directory)"),
])
def test_an_unusable_eval_config_is_one_line_naming_key_value_and_range(nothing_built, capsys, override, line):
    """Issue 24: each of these ran (crop 7: every image skipped, exit 0; 100000: 30 GB per image; a
    negative seed) or ended in a traceback (/proc/x)."""
    assert cli(["eval", "--config", EVAL_YAML, "data.ground_truth=unused", "methods=[jpeg]", override]) == 2
    assert capsys.readouterr().err == f"posterior-jpeg eval: {line}\n"


def test_eval_on_cuda_without_cuda_is_one_line_before_anything_is_built(nothing_built, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli(["eval", "--config", EVAL_YAML, "data.ground_truth=unused", "methods=[jpeg]", "device=cuda"]) == 2
    assert capsys.readouterr().err == ("posterior-jpeg eval: device=cuda: CUDA is not available here "
                                       "(use device=cpu or auto)\n")


def test_an_evaluation_that_measures_no_image_fails_with_one_line(tmp_path, capsys):
    """Every test image skipped (here: under the 31 pixels LPIPS needs) is a failure, not an empty table."""
    truth = tmp_path / "truth"
    truth.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(truth / f"t{i}.png")
    command = ["eval", "--config", EVAL_YAML, f"data.ground_truth={truth}", "data.crop=full", "methods=[jpeg]",
               "features.inception=random", "features.lpips=random", f"fid_cache={tmp_path / 'cache'}",
               f"out_dir={tmp_path / 'out'}", "device=cpu", "progress=false"]
    assert cli(command) == 1
    assert capsys.readouterr().err == (f"posterior-jpeg eval: none of the 2 test images could be measured; the first: "
                                       f"{truth / 't0.png'}: 20x20 is smaller than the 31x31 pixels LPIPS needs; "
                                       "not measured\n")


@pytest.mark.parametrize("name", ["results.json", "results.csv", "results.md", "index.html", "crops"])
def test_a_link_planted_in_the_eval_out_dir_is_refused_before_anything_is_built(nothing_built, tmp_path, capsys,
                                                                                 name):
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).symlink_to(victim)
    command = ["eval", "--config", EVAL_YAML, "data.ground_truth=unused", "methods=[jpeg]", f"out_dir={tmp_path / 'out'}"]
    assert cli(command) == 2
    assert capsys.readouterr().err == f"posterior-jpeg eval: {tmp_path / 'out' / name}: {LINK_MESSAGE}\n"
    assert victim.read_text() == "mine"


def test_the_sweep_checks_its_eval_section_by_the_same_rules(capsys):
    command = ["sweep", "--config", str(ROOT / "configs" / "sweep_consistency.yaml"), "eval.data.ground_truth=unused",
               "eval.data.crop=7", "points=[]", "lambda_values=[1]"]
    assert cli(command) == 2
    assert capsys.readouterr().err == ("posterior-jpeg sweep: eval section: data.crop='7': must be full, mod16 or an "
                                       "integer in [32, 4096]\n")


@pytest.mark.parametrize("name", ["runs", "points", "baselines", "points/given", "runs/lambda_C=1"])
def test_a_link_planted_in_the_sweep_out_dir_is_refused_before_anything_is_trained(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sw, "train", lambda cfg: pytest.fail("a point was trained"))
    monkeypatch.setattr(sw, "evaluate", lambda cfg, print_table=True: pytest.fail("a point was evaluated"))
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "sweep"
    (out / name).parent.mkdir(parents=True)
    (out / name).symlink_to(victim)
    cfg = sw.load_sweep_config(ROOT / "configs" / "sweep_consistency.yaml", [
        f"out_dir={out}", f"train_config={ROOT / 'configs' / 'tiny.yaml'}", "lambda_values=[1]",
        "points=[{name: given, checkpoint: somewhere}]", "eval.data.ground_truth=unused"])
    with pytest.raises(SymlinkError, match=f"{out / name}: is a symbolic"):
        sw.run_sweep(cfg)
    assert list(victim.iterdir()) == []


def test_a_sweep_plot_is_not_written_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (tmp_path / "fid_vs_consistency_q5_420.png").symlink_to(victim)
    row = {"point": "a", "method": "Ours", "quality": 5, "subsampling": "4:2:0", "fid": 10.0, "fid_std": 1.0,
           "consistency_rmse": 0.5}
    with pytest.raises(SymlinkError):
        sw.plot([row], tmp_path, random_weights=False)
    assert victim.read_text() == "mine"
