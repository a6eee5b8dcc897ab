"""Sampling: the Sampler's tiling and noise, and the sample command end to end on small JPEGs."""

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

import posterior_jpeg as pj
from posterior_jpeg import checkpoints
from posterior_jpeg.cli import main as cli_main
from posterior_jpeg.config import load_config
from posterior_jpeg.models.generator import GeneratorConfig, build_generator
from posterior_jpeg.sample_cli import apply_orientation, expand_inputs, main
from posterior_jpeg.sampling import PositionalNoise, Sampler, normal_from_bits, tile_spans

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
    args = [str(jpeg), "-n", "3", "-o", str(out), "--checkpoint", str(checkpoint), "--mean", "--std", "--grid"]
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
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert [Path(r["output"]).name for r in records] == ["photo_s0.png", "photo_s1.png", "photo_s2.png"]
    record = records[0]
    assert record["input"] == str(jpeg)
    assert record["input_sha256"] == hashlib.sha256(jpeg.read_bytes()).hexdigest()
    weights = checkpoint / checkpoints.WEIGHTS
    assert record["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["model"] == {"trunk": "rrdb", "features": 16, "blocks": 1, "growth": 8, "table_embedding": 8,
                               "full_res_features": 0, "noise": True}
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


def _tiling_error(checkpoint, jf, overlap):
    """(tiled - untiled) raw outputs, and the tile edges inside the image per axis."""
    untiled = Sampler.from_checkpoint(checkpoint, "cpu", "fp32", tile=None)
    tiled = Sampler.from_checkpoint(checkpoint, "cpu", "fp32", tile=192, overlap=overlap)
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
    assert json.loads((out / "manifest.jsonl").read_text())["orientation_applied"] == 6


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    array = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    image.getexif()[0x0112] = orientation
    expected = np.array(ImageOps.exif_transpose(image))
    ours = apply_orientation(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(ours, expected)


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


def test_ctrl_c_leaves_only_complete_files(checkpoint, write_jpeg, tmp_path, monkeypatch, capsys):
    jpeg = write_jpeg("x.jpg")
    out = tmp_path / "out"
    original = Path.write_bytes
    calls = []

    def interrupted_second_write(self, data):
        calls.append(self)
        if len(calls) == 2:  # Ctrl-C half-way through writing the second PNG
            original(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return original(self, data)

    monkeypatch.setattr(Path, "write_bytes", interrupted_second_write)
    assert main([str(jpeg), "-n", "3", "-o", str(out), "--checkpoint", str(checkpoint), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "x_s0.png"]
    assert leftovers(out) == []
    monkeypatch.setattr(Path, "write_bytes", original)
    assert Image.open(out / "x_s0.png").size == (96, 64)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 1


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
    import posterior_jpeg.sampling as sampling

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
    samples = Sampler.from_checkpoint(None).sample(jpeg, n=2, seed=0)
    decode = (jpeg.decode() * 255).round()[None] / 255
    assert pj.metrics.per_pixel_std(samples) > 0.002
    assert pj.metrics.blockiness(samples) < 0.6 * pj.metrics.blockiness(decode)
    assert pj.metrics.coefficient_agreement(samples, jpeg).coefficients == 1.0
