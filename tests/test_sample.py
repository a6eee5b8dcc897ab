"""Sampling: the PosteriorSampler's tiling and noise, and the sample command end to end on small JPEGs."""

import dataclasses
import errno
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import jpeglib
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

import posterior_jpeg as pj
from posterior_jpeg import checkpoints, precision, sample_job
from posterior_jpeg.commands import main as cli_main
from posterior_jpeg.config import load_config
from posterior_jpeg.jpeg import tables
from posterior_jpeg.jpeg.color import rgb_to_ycbcr
from posterior_jpeg.models.generator import AnchoredGenerator, GeneratorConfig, build_generator
from posterior_jpeg.commands.sample import main
from posterior_jpeg.sample_job import apply_orientation, expand_inputs, undo_orientation
from posterior_jpeg.models.noise import PositionalNoise, normal_from_bits
from posterior_jpeg.sampler import PosteriorSampler, tile_spans

ROOT = Path(__file__).resolve().parents[1]
RECEPTIVE_RADIUS = 80  # pixels: the tiny G's 18 convs at 1/4 resolution reach 72, plus unshuffle alignment


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These small images gain nothing from a second thread, and on a busy machine OpenMP threads
    wait for each other at every barrier (10x slower): one thread keeps this file fast anywhere."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny generator saved as train.py saves a checkpoint (weights + config)."""
    config = load_config(ROOT / "configs" / "tiny.yaml")
    torch.manual_seed(0)
    generator = build_generator(GeneratorConfig(**vars(config.generator)))
    folder = tmp_path_factory.mktemp("checkpoint")
    checkpoints.save_inference_files(folder, generator, config)
    return folder


@pytest.fixture
def write_jpeg(natural_rgb, pillow_jpeg, tmp_path):
    def write(name, height=64, width=96, seed=0, **options):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        options.setdefault("quality", 50)
        path.write_bytes(pillow_jpeg(natural_rgb(height, width, seed), **options))
        return path

    return write


def read_png(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float() / 255


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_cli_writes_samples_mean_std_grid_and_a_manifest(checkpoint, write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("photo.jpg", 64, 96, quality=40)
    out = tmp_path / "out"
    args = [str(jpeg), "-n", "3", "-o", str(out), "--checkpoint", str(checkpoint), "--sample-mean", "--std", "--grid"]
    assert main([*args, "--quiet", "--device", "cpu"]) == 0
    assert capsys.readouterr() == ("", "")  # quiet: nothing but errors
    names = {"photo_s0.png", "photo_s1.png", "photo_s2.png", "photo_mean.png", "photo_std.png", "photo_grid.png"}
    assert {p.name for p in out.iterdir()} == names | {"manifest.jsonl"}
    jf = pj.read_jpeg(jpeg)
    samples = [read_png(out / f"photo_s{i}.png") for i in range(3)]
    for name in names:
        image = Image.open(out / name)
        assert image.mode == "RGB" and image.format == "PNG"
    assert Image.open(out / "photo_grid.png").size == (6 * 96 + 5 * 4, 64)  # y | 3 samples | mean | std
    for sample in [*samples, read_png(out / "photo_mean.png")]:
        assert pj.metrics.coefficient_agreement(sample, jf).coefficients >= 0.9999
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])

    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["sample"] * 3 + ["mean", "std", "grid"]  # one line per output
    assert [r["seed"] for r in records[:3]] == [0, 1, 2] and all(r["seeds"] == [0, 1, 2] for r in records[3:])
    assert [Path(r["output"]).name for r in records] == [
        "photo_s0.png", "photo_s1.png", "photo_s2.png", "photo_mean.png", "photo_std.png", "photo_grid.png"]
    record = records[0]
    assert record["input"] == str(jpeg)
    assert record["input_sha256"] == hashlib.sha256(jpeg.read_bytes()).hexdigest()
    weights = checkpoint / checkpoints.WEIGHTS
    assert record["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["model"] == {"format_version": 3, "posterior_mean": None, "generator": {
        "arch": "residual", "trunk": "rrdb", "features": 16, "blocks": 1, "growth": 8, "table_embedding": 8, "full_res_features": 0,
        "noise": True}, "antithetic": False, "spread": None}
    assert record["projected"] is True and record["seconds"] > 0
    assert record["coefficient_agreement"] >= 0.9999 and record["block_agreement"] >= 0.99
    assert record["consistency_rmse"] < 0.1


def test_a_seed_reproduces_its_sample_whatever_the_batch_or_run(checkpoint, write_jpeg, tmp_path):
    jpeg = write_jpeg("a.jpg", 96, 128, quality=30, subsampling="4:4:4")
    common = ["--checkpoint", str(checkpoint), "--quiet", "--tile", "64"]
    assert main([str(jpeg), "-n", "2", "--seed", "5", "-o", str(tmp_path / "one"), *common]) == 0
    assert main([str(jpeg), "-n", "2", "--seed", "5", "-o", str(tmp_path / "two"), *common]) == 0
    assert main([str(jpeg), "-n", "1", "--seed", "6", "-o", str(tmp_path / "three"), *common]) == 0
    for name in ("a_s5.png", "a_s6.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one" / "a_s6.png").read_bytes() == (tmp_path / "three" / "a_s6.png").read_bytes()
    assert (tmp_path / "one" / "a_s5.png").read_bytes() != (tmp_path / "one" / "a_s6.png").read_bytes()
    jf = pj.read_jpeg(jpeg)
    assert pj.metrics.coefficient_agreement(read_png(tmp_path / "one" / "a_s5.png"), jf).coefficients >= 0.9999


@pytest.mark.parametrize("forced", [True, False])
def test_the_sample_command_prints_records_and_keys_its_choice(forced, monkeypatch, checkpoint, write_jpeg, tmp_path,
                                                              capsys):
    """auto's choice is printed once, recorded in each manifest line and part of an output's recipe:
    a rerun in another precision does not pass the other precision's outputs off as its own."""
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "avx512_bf16" if forced else None)
    jpeg = write_jpeg("a.jpg", 48, 64, quality=30)
    out = tmp_path / "out"
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]) == 0
    expected = "bf16" if forced else "fp32"
    assert capsys.readouterr().err.count(f"precision {expected}") == 1
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["dtype"] for r in records] == [expected] and records[0]["coefficient_agreement"] == 1.0
    other = ["--dtype", "fp32" if forced else "bf16", "--quiet"]
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), *other]) == 1
    assert "with these options; pass --overwrite" in capsys.readouterr().err
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), *other, "--overwrite"]) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["dtype"] for r in records] == [expected, other[1]]


def test_a_photo_of_several_tiles_shows_its_tiles_moving(checkpoint, write_jpeg, tmp_path, capsys):
    """A big photo takes a minute per sample on a CPU: a second bar counts its tiles, per network;
    `--quiet` shows neither bar."""
    jpeg = write_jpeg("big.jpg", 96, 128, quality=30)
    common = [str(jpeg), "-n", "2", "--checkpoint", str(checkpoint), "--tile", "64", "--device", "cpu"]
    assert main([*common, "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    tiles = len(tile_spans(96, 64, 32)) * len(tile_spans(128, 64, 32))
    assert tiles > 1
    for network in ("sample 0", "sample 1"):
        assert f"  {network}:   0%|" in err and f" 0/{tiles} [" in err and "tile/s" in err
    assert main([*common, "-o", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_positional_noise_is_standard_normal_and_keyed_by_place():
    features = torch.zeros(2, 1, 256, 256)
    noise = PositionalNoise([0, 2**40 + 1]).like(features)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1) < 0.01
    assert (noise[0] - noise[1]).abs().mean() > 1  # seeds differ
    tile = PositionalNoise([0, 2**40 + 1], top=32, left=48).like(features[..., :64, :80])
    assert torch.equal(tile, noise[..., 32:96, 48:128])  # the same noise at the same place
    assert torch.isfinite(normal_from_bits(torch.tensor([0, 2**32 - 1]))).all()  # extreme hashes


def test_tile_spans_cover_the_axis_on_a_16_pixel_grid():
    for length in range(1, 1200, 7):
        spans = tile_spans(length, 256, 32)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % 16 == 0 and end - start <= 256 for start, end in spans)
        assert all(a[1] - b[0] >= 32 for a, b in zip(spans, spans[1:]))
    assert tile_spans(1000, 0, 32) == tile_spans(1000, None, 32) == [(0, 1000)]


def test_tiles_blending_and_noise_stay_on_the_model_device():
    """On the "meta" device any host tensor mixed into a tile, a blending weight or the noise would
    raise (device mismatch): the sampler's work stays on the model's device until the one copy out."""
    for generator in (build_generator("tiny"), AnchoredGenerator(build_generator(
            GeneratorConfig(trunk="plain", features=8, blocks=1, noise=False)), build_generator("tiny"), True)):
        sampler = PosteriorSampler(generator, "tiny", device="meta", tile=32, overlap=16)
        y, tables_ = torch.empty(3, 48, 64, device="meta"), torch.empty(3, 8, 8, device="meta")
        out = sampler.generate(y, tables_, 1)
        assert out.device.type == "meta" and out.shape == (1, 3, 48, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampler_matches_the_cpu_and_its_samples_are_exact(checkpoint, natural_rgb, pillow_jpeg, monkeypatch):
    """Tiled, blended and projected on the GPU: fp32 raw samples agree with the CPU's (TF32
    convolutions off, which would round to 10 bits), bf16 ones (the GPU default) are close, and the
    projected samples re-encode to the file's coefficients."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(200, 280, 5), quality=30))
    cpu = PosteriorSampler.from_checkpoint(checkpoint, "cpu", "fp32", tile=128, overlap=32).sample(jf, 2, seed=1, project=False)
    cuda = PosteriorSampler.from_checkpoint(checkpoint, "cuda", "fp32", tile=128, overlap=32)
    assert cuda.device.type == "cuda" and (cuda.sample(jf, 2, seed=1, project=False) - cpu).abs().max() <= 1e-4
    bf16 = PosteriorSampler.from_checkpoint(checkpoint, "cuda", "auto", tile=128, overlap=32)
    assert bf16.dtype == torch.bfloat16
    projected = bf16.sample(jf, 2, seed=1)
    assert projected.device.type == "cpu" and (projected - cpu).abs().mean() <= 4 / 255
    assert pj.metrics.coefficient_agreement(projected, jf).coefficients >= 0.9999


def _tiling_error(checkpoint, jf, overlap):
    """(tiled - untiled) raw outputs, and the tile edges inside the image per axis."""
    untiled = PosteriorSampler.from_checkpoint(checkpoint, "cpu", "fp32", tile=None)
    tiled = PosteriorSampler.from_checkpoint(checkpoint, "cpu", "fp32", tile=192, overlap=overlap)
    difference = tiled.sample(jf, 2, seed=3, project=False) - untiled.sample(jf, 2, seed=3, project=False)
    edges = []
    for length in jf.size:
        spans = tile_spans(length, 192, overlap)
        edges.append(torch.tensor([s for s, _ in spans[1:]] + [e for _, e in spans[:-1]]))
    return difference, edges


def test_tiles_match_the_whole_image_away_from_seams_and_blend_without_steps(checkpoint, natural_rgb, pillow_jpeg):
    """An image that fits both ways (its size not a multiple of 16: G pads the edge tiles): tiled and
    untiled agree exactly wherever G's receptive field stays inside one tile, differ by little
    near the seams, and that difference has no step at a seam (hard stitching has)."""
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(250, 330, 4), quality=50))
    difference, (row_edges, col_edges) = _tiling_error(checkpoint, jf, overlap=32)
    assert len(row_edges) == len(col_edges) == 2  # two tiles per axis
    near_row = ((torch.arange(250)[:, None] - row_edges).abs() <= RECEPTIVE_RADIUS).any(1)
    near_col = ((torch.arange(330)[:, None] - col_edges).abs() <= RECEPTIVE_RADIUS).any(1)
    far = ~(near_row[:, None] | near_col[None, :])
    assert far.sum() > 1000
    assert difference[..., far].abs().max() <= 1e-5
    assert difference.abs().max() <= 4 / 255

    def worst_step(diff):
        across_cols = (diff[..., 1:] - diff[..., :-1]).abs().mean(dim=(0, 1, 2)).max()
        across_rows = (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean(dim=(0, 1, 3)).max()
        return max(across_cols, across_rows).item()

    assert worst_step(difference) <= 1 / 255
    hard, _ = _tiling_error(checkpoint, jf, overlap=0)
    assert worst_step(hard) > 2 / 255  # the measure does see seams


def test_orientation_is_applied_and_the_icc_profile_embedded(checkpoint, write_jpeg, tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise
    jpeg = write_jpeg("turned.jpg", 64, 112, quality=60, exif=exif.tobytes(), icc_profile=icc)
    out = tmp_path / "out"
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--std", "--quiet"]) == 0
    png = Image.open(out / "turned_s0.png")
    assert png.size == (64, 112)  # width x height as displayed
    assert png.info.get("icc_profile") == icc
    assert "icc_profile" not in Image.open(out / "turned_std.png").info  # a false-colour chart
    shown = np.array(ImageOps.exif_transpose(Image.open(jpeg)).convert("RGB")).astype(np.float32)
    assert np.abs(np.array(png).astype(np.float32) - shown).mean() < 4  # same way up as a viewer shows it
    stored = np.ascontiguousarray(np.rot90(np.array(png), k=1))  # undo the clockwise turn
    jf = pj.read_jpeg(jpeg)
    agreement = pj.metrics.coefficient_agreement(torch.from_numpy(stored).permute(2, 0, 1).float() / 255, jf)
    assert agreement.coefficients >= 0.9999
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["orientation_applied"] == 6
    # one more sample and the mean: the kept sample is read back into stored orientation for the mean
    more = ["-n", "2", "--sample-mean", "--checkpoint", str(checkpoint), "--quiet"]
    assert main([str(jpeg), "-o", str(out), *more]) == 0 and main([str(jpeg), "-o", str(tmp_path / "fresh"), *more]) == 0
    assert (out / "turned_mean.png").read_bytes() == (tmp_path / "fresh" / "turned_mean.png").read_bytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    array = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    expected = np.array(ImageOps.exif_transpose(image))
    ours = apply_orientation(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, expected)
    back = undo_orientation(torch.from_numpy(ours).permute(2, 0, 1), orientation)  # how a rerun reads a kept sample
    assert np.array_equal(back.permute(1, 2, 0).numpy(), array)


def test_bad_inputs_are_reported_one_line_each_and_skipped(checkpoint, write_jpeg, tmp_path, capsys):
    good = write_jpeg("good.jpg")
    data = good.read_bytes()
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    cmyk = io.BytesIO()
    Image.new("CMYK", (16, 16), (10, 20, 30, 40)).save(cmyk, "JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(cmyk.getvalue())
    sof = data.index(b"\xff\xc0")  # claim 60000 x 60000 pixels in the frame header
    (tmp_path / "huge.jpg").write_bytes(data[: sof + 5] + b"\xea\x60\xea\x60" + data[sof + 9 :])
    bad = ["text.jpg", "cut.jpg", "cmyk.jpg", "huge.jpg", "missing.jpg"]
    out = tmp_path / "out"
    names = ["text.jpg", "cut.jpg", "good.jpg", "cmyk.jpg", "huge.jpg", "missing.jpg"]
    inputs = [str(tmp_path / name) for name in names]
    assert main([*inputs, "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(bad)
    for name, reason in zip(bad, ["not a JPEG", "truncated", "CMYK", "exceeds", "no such file"]):
        assert any(line.startswith(str(tmp_path / name)) and reason in line for line in lines), (name, lines)
    assert sorted(p.name for p in out.iterdir()) == ["good_s0.png", "manifest.jsonl"]


def test_existing_outputs_are_kept_without_overwrite(checkpoint, write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    common = [str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    assert main(common) == 0
    (out / "x_s0.png").write_bytes(b"mine")
    capsys.readouterr()
    assert main(common) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "x_s0.png").read_bytes() == b"mine"
    assert main([*common, "--overwrite"]) == 0
    assert Image.open(out / "x_s0.png").size == (96, 64)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2  # appended, one line per sample


@pytest.mark.parametrize("name", ["lock", "manifest", "output", "thumbs"])
def test_links_planted_in_out_lead_no_write_out_of_it(checkpoint, write_jpeg, tmp_path, capsys, name):
    """A link inside OUT where the run writes (the lock, the manifest, an output, the thumbnails'
    folder) is refused with one line and its target is left as it was; OUT itself may be a link."""
    jpeg = write_jpeg("x.jpg")
    victims, real = tmp_path / "victims", tmp_path / "real"
    victims.mkdir()
    real.mkdir()
    victim = victims / "f"
    victim.write_bytes(b"the user's\n")
    out = tmp_path / "out"
    out.symlink_to(real)
    planted = {"lock": ".posterior-jpeg.lock", "manifest": "manifest.jsonl", "output": "x_s0.png", "thumbs": "thumbs"}
    (out / planted[name]).symlink_to(victims if name == "thumbs" else victim)
    command = [str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet", "--html"]
    expected = {"lock": 2, "manifest": 2, "output": 1, "thumbs": 1}[name]
    assert main([*command, *(["--overwrite"] if name == "output" else [])]) == expected
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{out / planted[name]}: is a symbolic or hard link" in err[0], err
    assert sorted(p.name for p in victims.iterdir()) == ["f"] and victim.read_bytes() == b"the user\'s\n"
    assert (out / planted[name]).is_symlink()


def test_only_the_tools_own_stale_temporaries_are_removed_and_each_is_named(checkpoint, write_jpeg, tmp_path,
                                                                            capsys, dead_pid):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid()
    stale = f".posterior-jpeg-{pid}-0123456789abcdef.tmp"
    users = [".report.2024.tmp", ".a.b.99999999.tmp", f".x_s0.png.{pid}.tmp"]
    for name in (stale, *users):
        (out / name).write_bytes(b"data")
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert f"sample: {out / stale}: removed, a temporary file left by a killed run" in err
    assert not (out / stale).exists() and all((out / name).read_bytes() == b"data" for name in users)


def test_a_folder_sampled_into_itself_skips_its_own_outputs(checkpoint, write_jpeg, tmp_path, capsys):
    folder = write_jpeg("d/x.jpg").parent
    command = [str(folder), "-n", "1", "-o", str(folder), "--format", "jpeg", "--checkpoint", str(checkpoint)]
    assert main(command) == 0
    capsys.readouterr()
    assert main(command) == 0  # x_s0.jpg is found in the folder now: an output, not an input
    assert f"sample: {folder / 'x_s0.jpg'}: skipped, an output of an earlier run (manifest.jsonl records it)" in \
        capsys.readouterr().err
    assert sorted(p.name for p in folder.glob("*.jpg")) == ["x.jpg", "x_s0.jpg"]


def test_an_input_is_never_replaced_even_with_overwrite(checkpoint, write_jpeg, tmp_path, capsys):
    photo = write_jpeg("d/x.jpg")
    other = write_jpeg("d/x_s0.jpg", seed=5)  # the user's own photo, named like x.jpg's first sample
    before = other.read_bytes()
    command = [str(photo.parent), "-n", "1", "-o", str(photo.parent), "--format", "jpeg", "--overwrite", "--quiet",
               "--checkpoint", str(checkpoint)]
    assert main(command) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{photo}: its output {other} would replace an input of this run; inputs are never replaced, "
                   "not even with --overwrite (sample into another -o folder)"]
    assert other.read_bytes() == before and (photo.parent / "x_s0_s0.jpg").is_file()


def test_memory_and_the_wait_for_the_first_sample_do_not_follow_n(checkpoint, write_jpeg, tmp_path, monkeypatch):
    """-n two million: the run plans nothing per seed up front, so the first samples come at once and
    Python's memory stays that of a few images (stopped by Ctrl-C after two samples)."""
    import tracemalloc

    jpeg = write_jpeg("x.jpg", 32, 48)
    made, real_write = [], sample_job.Job.write

    def stop_after_two(self, output, data, line, began):
        real_write(self, output, data, line, began)
        made.append(output.name)
        if len(made) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sample_job.Job, "write", stop_after_two)
    tracemalloc.start()
    try:
        code = main([str(jpeg), "-n", "2000000", "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint),
                     "--quiet"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 130 and made == ["x_s0.png", "x_s1.png"]
    assert peak < 30 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_summaries_are_sums_kept_as_samples_come():
    """The mean and std map from running sums equal those of the stacked samples."""
    samples = torch.randint(0, 256, (5, 3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    moments = sample_job.Moments()
    for pixels in samples:
        moments.add(pixels)
    stack = samples.float() / 255
    assert torch.allclose(moments.mean(), stack.mean(dim=0), atol=1e-6)
    assert torch.allclose(moments.std(), stack.std(dim=0), atol=1e-6)
    single = sample_job.Moments()
    single.add(samples[0])
    assert torch.equal(single.std(), torch.zeros(3, 8, 12))


@pytest.mark.parametrize("options, message", [
    (["--grid", "-n", "65"], "--grid: a contact sheet holds at most 64 samples, -n is 65"),
    (["--sample-mean", "-n", "100001"], "--sample-mean and --std summarise at most 100000 samples, -n is 100001"),
    (["--seed", str(2**64 - 1), "-n", "2"], f"--seed {2**64 - 1} -n 2: the last seed would pass 2^64 - 1"),
])
def test_requests_that_cannot_fit_are_refused_before_anything_runs(options, message, tmp_path, capsys):
    assert main(["x.jpg", "-o", str(tmp_path / "out"), *options]) == 2
    assert capsys.readouterr().err == f"sample: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_old_option_spellings_still_work_with_one_warning_line_each(capsys):
    """--mean, --mmse and --mean-flips (before "sample mean" and "posterior mean" had one word each)
    set what --sample-mean, --posterior-mean and --posterior-mean-flips set, hidden from --help."""
    from posterior_jpeg.commands.sample import build_parser, options

    parser = build_parser()
    new = options(parser.parse_args(["x.jpg", "-o", "out", "--sample-mean", "--posterior-mean",
                                     "--posterior-mean-flips", "2"]))
    assert capsys.readouterr().err == ""
    old = options(parser.parse_args(["x.jpg", "-o", "out", "--mean", "--mmse", "--mean-flips", "2"]))
    assert old == new and (old.sample_mean, old.posterior_mean, old.posterior_mean_flips) == (True, True, 2)
    assert capsys.readouterr().err.splitlines() == [
        f"sample.py: warning: {was} is now {now} (the old spelling still works)"
        for was, now in (("--mean", "--sample-mean"), ("--mmse", "--posterior-mean"),
                         ("--mean-flips", "--posterior-mean-flips"))]
    assert "--mmse" not in parser.format_help() and "--posterior-mean-flips" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["x.jpg", "-o", "out", "--mean-flips", "3"])  # the choices of the new spelling


def test_the_old_name_of_the_posterior_sampler_imports_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="posterior_jpeg.Sampler is now posterior_jpeg.PosteriorSampler"):
        assert issubclass(pj.Sampler, PosteriorSampler)
    assert "Sampler" not in pj.__all__ and pj.PosteriorSampler is PosteriorSampler


def test_code_written_against_the_old_sampler_spellings_gets_the_same_outputs_and_a_warning(anchored, write_jpeg):
    """`Sampler.from_checkpoint(mean_flips=)`, `.mmse`, `.mean_of`, `samples(mean=)` and `.mean_network`:
    what README once taught still runs, each use naming its new spelling."""
    jf = pj.read_jpeg(write_jpeg("old.jpg", quality=20))
    new = PosteriorSampler.from_checkpoint(anchored, device="cpu", dtype="fp32", posterior_mean_flips=2)
    with pytest.warns(DeprecationWarning) as caught:
        old = pj.Sampler.from_checkpoint(anchored, device="cpu", dtype="fp32", mean_flips=2)
        assert old.mean_network is old.posterior_mean_network and old.posterior_mean_flips == 2
        assert torch.equal(old.mmse(jf), new.posterior_mean_decode(jf))
        m = old.mean_of(jf)
        assert torch.equal(m, new.posterior_mean_of(jf))
        [sample] = old.samples(jf, [3], mean=m)
        assert torch.equal(sample.image, next(iter(new.samples(jf, [3], posterior_mean=m))).image)
    assert [str(w.message) for w in caught][1:] == [
        f"Sampler.{was} is now PosteriorSampler.{now}" for was, now in (
            ("mean_flips", "posterior_mean_flips"), ("mean_network", "posterior_mean_network"),
            ("mmse", "posterior_mean_decode"), ("mean_of", "posterior_mean_of"),
            ("samples(mean=)", "samples(posterior_mean=)"))]


def test_seeds_outside_64_bits_are_refused(capsys):
    for seed in (str(2**64), "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["x.jpg", "-o", "out", "--seed", seed])
        assert stop.value.code == 2 and f"must be in [0, 2^64), got {seed}" in capsys.readouterr().err


def test_control_characters_of_names_are_printed_escaped(checkpoint, tmp_path, capsys):
    bad = tmp_path / "a\x1b[31mred\nforged line.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main([str(bad), "-n", "1", "-o", str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and len(err.splitlines()) == 1
    assert err.startswith(str(tmp_path / "a\\x1b[31mred\\x0aforged line.jpg") + ": not a JPEG")


def test_recursion_never_follows_a_link_out_of_the_tree(write_jpeg, tmp_path):
    inside = write_jpeg("tree/sub/x.jpg")
    write_jpeg("outside/deep/y.jpg")
    (tmp_path / "tree" / "link").symlink_to(tmp_path / "outside")
    tree = tmp_path / "tree"
    for argument in (str(tree), f"{tree}/**/*.jpg"):
        files, errors = expand_inputs([argument], recursive=True)
        assert files == [inside] and errors == [], (argument, files)


def test_a_checkpoint_that_is_some_other_file_is_named_in_the_error(write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("x.jpg")
    readme = ROOT / "README.md"
    assert main([str(jpeg), "-o", str(tmp_path / "out"), "--checkpoint", str(readme), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"sample: {readme}: no checkpoint here")


def test_ctrl_c_leaves_only_complete_files(checkpoint, write_jpeg, tmp_path, monkeypatch, capsys):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    original = os.write
    calls = []

    def interrupted_second_write(descriptor, data):
        if bytes(data[:4]) == b"\x89PNG":
            calls.append(descriptor)
            if len(calls) == 2:  # Ctrl-C half-way through writing the second PNG
                original(descriptor, data[: len(data) // 2])
                raise KeyboardInterrupt
        return original(descriptor, data)

    monkeypatch.setattr(os, "write", interrupted_second_write)
    command = [str(jpeg), "-n", "3", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    assert main(command) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "x_s0.png"]
    assert leftovers(out) == []
    monkeypatch.setattr(os, "write", original)
    assert Image.open(out / "x_s0.png").size == (96, 64)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1
    first = (out / "x_s0.png").stat()
    assert main(command) == 0  # the same command again completes the run
    assert sorted(p.name for p in out.glob("*.png")) == ["x_s0.png", "x_s1.png", "x_s2.png"]
    assert (out / "x_s0.png").stat().st_mtime_ns == first.st_mtime_ns  # kept, not made again
    assert [json.loads(line)["seed"] for line in (out / "manifest.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_same_stem_from_two_folders_is_reported_not_overwritten(checkpoint, write_jpeg, tmp_path, capsys):
    first = write_jpeg("a/x.jpg", seed=1)
    second = write_jpeg("b/X.jpeg", seed=2)
    out = tmp_path / "out"
    assert main([str(first), str(second), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(str(second)) and str(first) in err
    record = json.loads((out / "manifest.jsonl").read_text())
    assert record["input"] == str(first)


def test_inputs_are_files_folders_and_globs(write_jpeg, tmp_path):
    a = write_jpeg("in/a.jpg")
    b = write_jpeg("in/sub/b.JPEG")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    folder = str(tmp_path / "in")
    assert expand_inputs([folder], recursive=False) == ([a], [])
    assert expand_inputs([folder], recursive=True) == ([a, b], [])
    assert expand_inputs([f"{folder}/*.jpg", str(a)], recursive=False) == ([a], [])  # no repeats
    assert expand_inputs([f"{folder}/**/*.JPEG"], recursive=True) == ([b], [])
    files, errors = expand_inputs([str(tmp_path / "in" / "sub"), f"{folder}/*.png", str(tmp_path / "nope.jpg")], False)
    assert files == [b] and len(errors) == 2
    assert "no files match" in errors[0] and "no such file" in errors[1]


def test_posterior_jpeg_sample_subcommand_and_its_summary(checkpoint, write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("y.jpg")
    out = tmp_path / "out"
    assert cli_main(["sample", str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "sampled 1 file(s)" in captured.out and "sample" in captured.err  # summary, progress bar
    assert (out / "y_s0.png").is_file()


def test_missing_default_model_says_how_to_pass_a_checkpoint(write_jpeg, tmp_path, monkeypatch, capsys):
    import posterior_jpeg.sampler as sampling

    monkeypatch.setattr(sampling, "DEFAULT_MODEL", tmp_path / "no-model-here")
    jpeg = write_jpeg("z.jpg")
    assert cli_main(["sample", str(jpeg), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "--checkpoint" in captured.err
    assert captured.out == ""


def test_sample_py_uses_the_bundled_default_model(write_jpeg, tmp_path):
    jpeg = write_jpeg("d.jpg")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / "sample.py"), str(jpeg), "-n", "2", "-o", str(out), "--quiet"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == ["d_s0.png", "d_s1.png"]
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert record["checkpoint"].endswith("weights/default") and record["coefficient_agreement"] >= 0.9999


def test_bundled_default_model_gives_different_deblocked_consistent_samples():
    """What a newcomer sees on the shipped example: samples that differ from one another, without
    the decode's 8x8 grid, and exactly consistent with the file (the previous stopgap model had a
    per-pixel std of 0.0008 here)."""
    jpeg = pj.read_jpeg(ROOT / "examples" / "chelsea_q10.jpg")
    samples = PosteriorSampler.from_checkpoint(None).sample(jpeg, n=2, seed=0)
    decode = (jpeg.decode() * 255).round()[None] / 255
    assert pj.metrics.per_pixel_std(samples) > 0.002
    assert pj.metrics.blockiness(samples) < 0.6 * pj.metrics.blockiness(decode)
    assert pj.metrics.coefficient_agreement(samples, jpeg).coefficients == 1.0


# ---------------------------------------------------------------------------------- batch runs
def run_sample_py(*args, **popen):
    """sample.py in a process of its own (one thread, this checkout's package)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *map(str, args)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def outputs_state(out: Path) -> dict[str, tuple]:
    """Each PNG's inode and modification time: a file made again gets new ones."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}


def test_a_run_killed_mid_way_is_completed_by_the_same_command(checkpoint, write_jpeg, tmp_path, dead_pid):
    """SIGKILL a real run after its first outputs, plant the temporary a kill can leave, and run the
    same command again: exactly the missing outputs are made, equal to an uninterrupted run's."""
    inputs = [write_jpeg(f"in/p{i}.jpg", 64, 96, seed=i) for i in range(3)]
    options = ["-n", "4", "--sample-mean", "--checkpoint", str(checkpoint), "--quiet", "--device", "cpu"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main([*map(str, inputs), "-o", str(reference), *options]) == 0
    expected = sorted(p.name for p in reference.glob("*.png"))
    assert len(expected) == 15

    run = run_sample_py(*inputs, "-o", out, *options)
    deadline = time.monotonic() + 300
    while not ((out / "manifest.jsonl").is_file() and (out / "manifest.jsonl").read_bytes().count(b"\n") >= 2):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.01)
    run.kill()
    run.wait()
    before = outputs_state(out)
    assert 0 < len(before) < len(expected)  # killed part-way
    stale = out / f".posterior-jpeg-{dead_pid()}-0123456789abcdef.tmp"
    stale.write_bytes(b"half a png")

    assert main([*map(str, inputs), "-o", str(out), *options]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == expected
    for name in expected:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    after = outputs_state(out)
    assert {name: after[name] for name in before} == before  # nothing that was complete is made again
    assert leftovers(out) == []  # the stale temporary is gone, and so is the lock
    last = {Path(r["output"]).name: r for r in manifest_records(out)}
    assert sorted(last) == expected
    assert all(r["output_sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest() for name, r in last.items())


@pytest.mark.parametrize("what", ["manifest", "png"])
def test_a_full_disk_fails_the_file_cleanly_and_a_rerun_completes_it(checkpoint, write_jpeg, tmp_path, monkeypatch,
                                                                    capsys, what):
    """The disk fills while the second output is written (its PNG, or its manifest line: write(2)
    then writes part of it): that input fails with one line, no half record or file is left, the
    next input goes on, and the same command completes the run once there is room again."""
    inputs = [write_jpeg("a.jpg", seed=1), write_jpeg("b.jpg", seed=2)]
    out = tmp_path / "out"
    command = [*map(str, inputs), "-n", "2", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    real_write = os.write
    writes = []

    def short_record(descriptor, data):
        if bytes(data[:8]) == b'{"input"':
            writes.append(data)
            if len(writes) == 2:
                return real_write(descriptor, data[: len(data) // 2])
        return real_write(descriptor, data)

    def png_fills_the_disk(descriptor, data):
        if bytes(data[:4]) == b"\x89PNG":
            writes.append(data)
            if len(writes) == 2:
                real_write(descriptor, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)

    monkeypatch.setattr(os, "write", short_record if what == "manifest" else png_fills_the_disk)
    assert main(command) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{inputs[0]}: cannot write outputs") and "No space left" in err[0]
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("*.png")) == ["a_s0.png", "b_s0.png", "b_s1.png"]
    assert leftovers(out) == []
    assert [Path(r["output"]).name for r in manifest_records(out)] == ["a_s0.png", "b_s0.png", "b_s1.png"]
    before = outputs_state(out)
    assert main(command) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a_s0.png", "a_s1.png", "b_s0.png", "b_s1.png"]
    assert {name: outputs_state(out)[name] for name in before} == before
    assert [Path(r["output"]).name for r in manifest_records(out)] == ["a_s0.png", "b_s0.png", "b_s1.png", "a_s1.png"]


def test_a_torn_last_manifest_line_is_cut_before_appending(checkpoint, write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    torn = '{"input": "old.jpg", "outp'  # its writer died half-way
    (out / "manifest.jsonl").write_text('{"input": "old.jpg", "output": "old_s0.png"}\n' + torn)
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint)]) == 0
    assert f"cut off a torn last line ({len(torn)} bytes)" in capsys.readouterr().err
    assert [Path(r["output"]).name for r in manifest_records(out)] == ["old_s0.png", "x_s0.png"]


def test_outputs_not_recorded_as_this_commands_are_kept_without_overwrite(checkpoint, write_jpeg, tmp_path, capsys):
    jpeg = write_jpeg("x.jpg")
    other = write_jpeg("other/x.jpg", seed=9)
    out = tmp_path / "out"
    common = ["-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    assert main([str(jpeg), *common]) == 0
    made = (out / "x_s0.png").read_bytes()
    assert main([str(other), *common]) == 1  # another input with the same stem
    assert main([str(jpeg), *common, "--no-project"]) == 1  # other options
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("does not record it" in line and "--overwrite" in line for line in err)
    assert (out / "x_s0.png").read_bytes() == made
    assert main([str(jpeg), *common, "--no-project", "--overwrite"]) == 0
    assert manifest_records(out)[-1]["projected"] is False


def test_a_second_run_into_the_same_folder_is_refused(checkpoint, write_jpeg, tmp_path, capsys, hold_lock):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    command = [str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err == f"sample: {out}: another run (pid {holder.pid}) is writing into this folder; wait for it to end or choose another output folder\n"
    assert not list(out.glob("*.png"))
    holder.kill()  # killed while holding it: its lock file stays, and is taken over
    holder.wait()
    assert main(command) == 0 and (out / "x_s0.png").is_file()


def test_two_runs_started_at_once_never_make_an_output_twice(checkpoint, write_jpeg, tmp_path):
    inputs = [write_jpeg(f"in/p{i}.jpg", 64, 96, seed=i) for i in range(3)]
    out = tmp_path / "out"
    runs = [run_sample_py(*inputs, "-n", "3", "-o", out, "--checkpoint", checkpoint, "--quiet") for _ in range(2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results)[0] == 0, results
    for code, err in results:  # the other one was refused, or found everything done when it started
        assert code == 0 or (code == 2 and "another run" in err), results
    names = [Path(r["output"]).name for r in manifest_records(out)]
    assert sorted(names) == sorted(p.name for p in out.glob("*.png")) and len(names) == 9


# ---------------------------------------------------------------------------------- grayscale
def test_grayscale_files_give_grayscale_samples_and_pngs(checkpoint, natural_rgb, pillow_jpeg, tmp_path):
    """One channel through the sampler, the projection and the PNGs (mode L); the earlier RGB
    samples of a grayscale file differed between channels by a level here and there."""
    jpeg = tmp_path / "g.jpg"
    jpeg.write_bytes(pillow_jpeg(Image.fromarray(natural_rgb(64, 96, 3)).convert("L"), quality=30))
    jf = pj.read_jpeg(jpeg)
    assert jf.sampling == "gray"
    sampler = PosteriorSampler.from_checkpoint(checkpoint, "cpu", "fp32")
    assert sampler.sample(jf, 2, seed=0).shape == sampler.sample(jf, 2, seed=0, project=False).shape == (2, 1, 64, 96)
    for flags in ([], ["--no-project"]):
        out = tmp_path / f"out{len(flags)}"
        assert main([str(jpeg), "-n", "2", "-o", str(out), "--checkpoint", str(checkpoint), "--sample-mean", "--std", "--grid",
                     "--quiet", *flags]) == 0
        modes = {p.name: Image.open(p).mode for p in out.glob("*.png")}
        assert modes == {"g_s0.png": "L", "g_s1.png": "L", "g_mean.png": "L", "g_std.png": "RGB", "g_grid.png": "RGB"}
    for name in ("g_s0.png", "g_s1.png", "g_mean.png"):  # projected: consistent as one channel
        pixels = torch.from_numpy(np.array(Image.open(tmp_path / "out0" / name)))[None].float() / 255
        assert pj.metrics.coefficient_agreement(pixels, jf).coefficients == 1.0, name
    assert all(r["coefficient_agreement"] == 1.0 for r in manifest_records(tmp_path / "out0")[:2])


@pytest.mark.parametrize("tint", [(0, 0, 0), (20, 0, -15)], ids=["gray", "toned"])
def test_a_flat_chroma_file_keeps_the_decodes_chroma_in_every_output(checkpoint, natural_rgb, pillow_jpeg, tint):
    """A gray (or uniformly toned) photo saved as a colour JPEG has flat chroma planes; the untrained
    G adds colour everywhere, which the outputs must not carry: their chroma is the decode's."""
    gray = natural_rgb(64, 96, 5).mean(axis=2, keepdims=True).clip(30, 220)
    image = np.clip(np.rint(gray + np.array(tint)), 0, 255).astype(np.uint8).repeat(1, axis=2)
    jf = pj.read_jpeg(pillow_jpeg(image, quality=10))
    colour = pj.read_jpeg(pillow_jpeg(natural_rgb(64, 96, 5), quality=10))
    assert jf.flat_chroma and not colour.flat_chroma and jf.sampling == "4:2:0"
    sampler = PosteriorSampler.from_checkpoint(checkpoint, "cpu", "fp32")
    expected = rgb_to_ycbcr(255 * jf.decode()[None])[:, 1:]
    for images in (sampler.sample(jf, 2, seed=0, project=False), sampler.sample(jf, 2, seed=0)):
        chroma = rgb_to_ycbcr(255 * images)[:, 1:]
        assert (chroma - expected).abs().max() < 1.0  # within the 8-bit rounding of RGB
    assert pj.metrics.coefficient_agreement(sampler.sample(jf, 2, seed=0), jf).coefficients == 1.0
    colour_chroma = rgb_to_ycbcr(255 * sampler.sample(colour, 1, seed=0, project=False))[:, 1:]
    colour_decoded = rgb_to_ycbcr(255 * colour.decode()[None])[:, 1:]
    assert (colour_chroma - colour_decoded).abs().max() > 1.0  # other files keep G's colour


def test_the_posterior_mean_over_flips_is_flip_equivariant_and_one_flip_is_m_alone():
    """M averaged over the four flips of the (16-padded) image commutes with flipping the input; a
    single run of M does not (its 1/4-resolution head treats pixel positions differently)."""
    torch.manual_seed(0)
    m = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8, noise=False))
    y = torch.rand(3, 48, 64)  # a multiple of 16: flipping keeps the block grid
    tables = torch.full((2, 8, 8), 20.0)
    errors = {}
    for flips in (1, 4):
        sampler = PosteriorSampler(m, "test", posterior_mean_flips=flips, tile=None)
        errors[flips] = max((sampler.posterior_mean(y.flip(dims), tables) - sampler.posterior_mean(y, tables).flip(dims))
                            .abs().max().item() for dims in ((-1,), (-2,)))
    assert errors[4] < 1e-5 < 1e-3 < errors[1], errors
    with torch.no_grad():
        assert torch.equal(PosteriorSampler(m, "test", posterior_mean_flips=1, tile=None).posterior_mean(y, tables), m(y[None], tables)[0])
    odd = torch.rand(3, 37, 50)  # other sizes: flipped on the padded image, cropped back
    assert PosteriorSampler(m, "test", tile=None).posterior_mean(odd, tables).shape == odd.shape


# ---------------------------------------------------------------------------------- libjpeg's warnings
CORRUPT = "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9"


def test_a_files_libjpeg_warnings_are_printed_once_with_its_name_and_recorded(checkpoint, write_jpeg, tmp_path,
                                                                             monkeypatch, capsys):
    jpeg = write_jpeg("w.jpg")
    real_read = sample_job.read_jpeg
    monkeypatch.setattr(sample_job, "read_jpeg", lambda path: dataclasses.replace(real_read(path), warnings=(CORRUPT,)))
    for quiet, out in ((False, tmp_path / "loud"), (True, tmp_path / "quiet")):
        assert main([str(jpeg), "-n", "2", "-o", str(out), "--checkpoint", str(checkpoint), "--sample-mean",
                     *(["--quiet"] if quiet else [])]) == 0
        err = capsys.readouterr().err
        assert err.count(CORRUPT) == (0 if quiet else 1)
        assert quiet or f"{jpeg}: warning: {CORRUPT}\n" in err
        assert [r["warnings"] for r in manifest_records(out)] == [[CORRUPT]] * 3


def test_libjpegs_caution_while_measuring_is_caught_and_named(checkpoint, natural_rgb, tmp_path, capfd):
    """Tables above 255 make libjpeg print a caution on stderr at every re-encode of the consistency
    measurement; it used to reach the terminal bare, even with --quiet."""
    jpeg = tmp_path / "coarse.jpg"
    coarse = np.stack([tables.ijg_tables(50)[0], tables.ijg_tables(5)[1] * 2]).astype(np.uint16)  # up to 510
    jpeglib.from_spatial(np.ascontiguousarray(natural_rgb(64, 96, 5))).write_spatial(str(jpeg), qt=coarse)
    capfd.readouterr()  # the caution of writing it
    caution = "Caution: quantization tables are too coarse for baseline JPEG"
    for quiet, out in ((False, tmp_path / "loud"), (True, tmp_path / "quiet")):
        assert main([str(jpeg), "-n", "2", "-o", str(out), "--checkpoint", str(checkpoint),
                     *(["--quiet"] if quiet else [])]) == 0
        err = capfd.readouterr().err
        assert err.count(caution) == (0 if quiet else 1), err
        assert quiet or f"{jpeg}: warning: {caution}\n" in err
        assert [r["warnings"] for r in manifest_records(out)] == [[caution]] * 2



@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    """An untrained anchored model (M visibly changes y) saved as a checkpoint."""
    config = load_config(ROOT / "configs" / "tiny.yaml")
    torch.manual_seed(1)
    m = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=1, table_embedding=8, noise=False))
    with torch.no_grad():
        m.conv_out.weight.mul_(30)
    folder = tmp_path_factory.mktemp("anchored")
    checkpoints.save_inference_files(folder, AnchoredGenerator(m, build_generator(config.generator)), config)
    return folder


def test_posterior_mean_writes_the_projected_posterior_mean_of_an_anchored_model(checkpoint, anchored, write_jpeg, tmp_path):
    jpeg = write_jpeg("photo.jpg")
    out = tmp_path / "out"
    assert main([str(jpeg), "-n", "1", "-o", str(out), "--checkpoint", str(anchored), "--posterior-mean", "--quiet"]) == 0
    jf = pj.read_jpeg(jpeg)
    written = read_png(out / "photo_mmse.png")
    expected = PosteriorSampler.from_checkpoint(anchored, device="cpu", dtype="auto").posterior_mean_decode(jf)
    assert torch.equal(written, (expected * 255).round() / 255)
    assert (written - jf.decode()).abs().mean() > 1e-3
    records = {r["kind"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert records["mmse"]["coefficient_agreement"] == 1.0 and records["mmse"]["model"]["posterior_mean"]["noise"] is False
    assert main([str(jpeg), "-n", "1", "-o", str(tmp_path / "o2"), "--checkpoint", str(checkpoint), "--posterior-mean"]) == 2


def test_m_runs_once_per_file_for_the_posterior_mean_output_and_the_samples(anchored, write_jpeg, tmp_path, monkeypatch):
    """--posterior-mean and samples share one pass of M (the dearest network), and the samples are those
    of a run without --posterior-mean, bit for bit."""
    jpeg = write_jpeg("photo.jpg")
    calls = []
    original = PosteriorSampler.posterior_mean
    monkeypatch.setattr(PosteriorSampler, "posterior_mean", lambda self, *args: calls.append(1) or original(self, *args))
    options = ["-n", "2", "--checkpoint", str(anchored), "--quiet"]
    assert main([str(jpeg), "-o", str(tmp_path / "both"), "--posterior-mean", *options]) == 0 and len(calls) == 1
    assert main([str(jpeg), "-o", str(tmp_path / "samples"), *options]) == 0 and len(calls) == 2
    for name in ("photo_s0.png", "photo_s1.png"):
        assert (tmp_path / "both" / name).read_bytes() == (tmp_path / "samples" / name).read_bytes()


def test_a_missing_sample_is_made_again_exactly(checkpoint, write_jpeg, tmp_path):
    """A rerun that makes one missing sample (and only it) gives the same file as the first run."""
    jpeg = write_jpeg("in/p0.jpg", 64, 96, seed=0)
    out = tmp_path / "out"
    options = [str(jpeg), "-o", str(out), "-n", "4", "--checkpoint", str(checkpoint), "--quiet", "--device", "cpu"]
    assert main(options) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    (out / "p0_s3.png").unlink()
    assert main(options) == 0
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == first


def read_png16(path: Path) -> torch.Tensor:
    """A 16-bit PNG -> [C, H, W] in [0, 1] (libpng through torchvision, 16 bits per channel)."""
    from torchvision.io import ImageReadMode, decode_png

    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return decode_png(data, ImageReadMode.UNCHANGED).double() / 65535


def test_levels_are_recorded_and_a_file_not_8_bit_exact_is_reported(checkpoint, write_jpeg, tmp_path, capsys):
    """Every projected output records both levels (measured again here); a quality-100 file (steps of
    1: the 8-bit lattice may miss a block's box) that is not 8-bit exact gets one line, and --strict
    makes it a failure, its outputs still written; 16-bit PNGs hold a float-consistent result.
    (Quality 100, all steps 1: no encoder but libjpeg's own rounding reaches every block.)"""
    exact = write_jpeg("in/exact.jpg", 64, 96, seed=1, quality=50)
    hard = write_jpeg("in/hard.jpg", 64, 96, seed=2, quality=100, subsampling="4:4:4")
    options = ["-n", "2", "--sample-mean", "--checkpoint", str(checkpoint), "--device", "cpu"]
    out = tmp_path / "out"
    assert main([str(exact), str(hard), "-o", str(out), *options]) == 0
    records = {Path(r["output"]).name: r for r in manifest_records(out)}
    lines = [line for line in capsys.readouterr().err.splitlines() if "not 8-bit exact" in line]
    for name, record in records.items():
        if record["kind"] not in ("sample", "mean"):
            continue
        jf = pj.read_jpeg(exact if name.startswith("exact") else hard)
        with Image.open(out / name) as image:
            saved = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
        agreement = pj.metrics.coefficient_agreement(saved, jf)
        assert record["coefficient_agreement"] == agreement.coefficients
        assert record["failing_blocks"] == agreement.differing_blocks
        assert record["differing_coefficients"] == agreement.differing_coefficients
        assert record["float_violations"] == 0 and record["float_consistency"] == 1.0
        assert record["written_consistency"] == ("8-bit" if agreement.coefficients == 1.0 else "partial")
    assert all(records[n]["coefficient_agreement"] == 1.0 for n in records if n.startswith("exact_s"))
    hard_inexact = [n for n in records if n.startswith("hard") and records[n].get("coefficient_agreement", 1.0) < 1.0]
    assert hard_inexact and len(lines) == 1
    if hard_inexact:
        assert lines[0].startswith(f"{hard}: not 8-bit exact")
        strict = tmp_path / "strict"
        assert main([str(exact), str(hard), "-o", str(strict), *options, "--strict", "--quiet"]) == 1
        assert "not 8-bit exact" in capsys.readouterr().err
        assert (strict / "hard_s0.png").is_file() and (strict / "exact_s0.png").is_file()
    assert main([str(exact), "-o", str(tmp_path / "quiet"), *options, "--strict", "--quiet"]) == 0

    sixteen = tmp_path / "sixteen"
    assert main([str(hard), "-o", str(sixteen), *options, "--format", "png16", "--quiet"]) == 0
    jf = pj.read_jpeg(hard)
    for record in manifest_records(sixteen):
        if record["kind"] in ("sample", "mean"):
            held = read_png16(Path(record["output"]))
            violations = pj.metrics.float_consistency(held, jf).violating_coefficients
            assert violations == record["float_violations"] == 0
            assert record["written_consistency"] == "float"


def test_device_cuda_without_cuda_is_one_line_before_any_model_or_folder(monkeypatch, tmp_path, capsys):
    """Issue 24, item 9: --device cuda on a machine without CUDA answers with one line, exit 2, before
    the model is read and before OUT is made (after torch loads: only torch knows whether CUDA works)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(PosteriorSampler, "from_checkpoint", lambda *_, **__: pytest.fail("the model was read"))
    (tmp_path / "x.jpg").write_bytes(b"not read")
    assert main([str(tmp_path / "x.jpg"), "-o", str(tmp_path / "out"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "sample: --device cuda: CUDA is not available here (use --device cpu)\n"
    assert not (tmp_path / "out").exists()


def test_sampling_does_not_import_the_evaluation_networks():
    """torchvision, pytorch-fid and lpips cost over a second of start-up and serve only evaluation."""
    code = ("import sys, posterior_jpeg.sample_job, posterior_jpeg.metrics; "
            "print(sorted(m for m in ('torchvision', 'pytorch_fid', 'lpips') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    from posterior_jpeg.metrics import LPIPS, InceptionFeatures  # still importable, on first use
    assert LPIPS.__module__.endswith("perceptual") and InceptionFeatures.__module__.endswith("fid")
