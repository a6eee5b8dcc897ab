"""project(): every saved 8-bit output re-compresses (by libjpeg) to the file's own coefficients."""

import dataclasses
import io
from pathlib import Path

import jpeglib
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import posterior_jpeg as pj
from posterior_jpeg.jpeg import subsampling, tables
from posterior_jpeg.jpeg.color import rgb_to_ycbcr, round_ycbcr_like_libjpeg, ycbcr_to_rgb
from posterior_jpeg.jpeg.projection import Settings, projection, round_to_16_bits
from posterior_jpeg.jpeg.projection.exact import libjpeg_ycc
from posterior_jpeg.jpeg.projection.samples import rgb_for, with_luma
from posterior_jpeg.metrics import coefficient_agreement, consistency_rmse, float_consistency


def as_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def candidates(data: bytes, jf) -> torch.Tensor:
    """A random perturbation of the decode, a blurred and a sharpened version of it."""
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    y = jf.decode()
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) * 0.04
    return torch.stack(
        [
            (y + noise).clamp(0, 1),
            as_tensor(decoded.filter(ImageFilter.GaussianBlur(1.5))),
            as_tensor(decoded.filter(ImageFilter.UnsharpMask(2, 150))),
        ]
    )


@pytest.mark.parametrize("mode", ["4:2:0", "4:2:2", "4:4:4"])
def test_projection_is_consistent_after_8_bit_rounding(natural_rgb, pillow_jpeg, mode):
    rgb = natural_rgb(37, 53, seed=7)
    for quality in (5, 10, 25, 50, 75):
        data = pillow_jpeg(rgb, quality=quality, subsampling=mode)
        jf = pj.read_jpeg(data)
        before = coefficient_agreement(candidates(data, jf), jf)
        projected = pj.project(candidates(data, jf), jf)
        after = coefficient_agreement(projected, jf)
        rmse = consistency_rmse(projected, jf)
        print(f"{mode} q{quality}: agreement {before.coefficients:.5f} -> {after.coefficients:.6f}, rmse {rmse.max():.4f}")
        assert after.coefficients >= 0.9999, (quality, after)
        assert rmse.max().item() <= 0.1, (quality, rmse)


@pytest.mark.parametrize("quality", [92, 95, 97])
def test_lattice_search_reaches_high_quality_files(natural_rgb, pillow_jpeg, quality):
    """Steps of 1-3: rounding alone keeps under half of the coefficients; the lattice search on
    libjpeg's integer samples brings nearly every block back (the float projection alone: 0.97 at 95)."""
    rgb = natural_rgb(32, 48, seed=8)
    data = pillow_jpeg(rgb, quality=quality, subsampling="4:2:0")
    jf = pj.read_jpeg(data)
    result = projection(candidates(data, jf), jf)
    before = coefficient_agreement(candidates(data, jf), jf)
    after = coefficient_agreement(result.images, jf)
    print(f"q{quality}: agreement {before.coefficients:.4f} -> {after.coefficients:.5f} (blocks {after.blocks:.4f})")
    assert after.coefficients >= 0.999
    # the projection's own count (bit-exact model of libjpeg) is what libjpeg finds
    assert int(result.differing_coefficients.sum()) == after.differing_coefficients
    assert int(result.failing_blocks.sum()) == after.differing_blocks


@pytest.mark.parametrize("mode", ["4:2:0", "4:2:2", "4:4:0", "4:4:4", "gray"])
def test_float_result_meets_every_interval_and_survives_16_bits(natural_rgb, pillow_jpeg, tmp_path, mode):
    """Float consistency for every candidate kind (noise up to sigma 0.1, blur, sharpening), on odd
    sizes where libjpeg pads the edge blocks (there the interval step is least squares, not exact)."""
    rgb = natural_rgb(37, 53, seed=9)
    for quality in (10, 50, 90):
        if mode == "4:4:0":  # Pillow cannot write 4:4:0
            path = str(tmp_path / f"440_{quality}.jpg")
            spatial = jpeglib.from_spatial(np.ascontiguousarray(rgb))
            spatial.samp_factor = np.array([(2, 1), (1, 1), (1, 1)])
            q = tables.ijg_tables(quality)
            spatial.write_spatial(path, qt=np.stack([q[0], q[1], q[1]]).astype(np.uint16))
            data = open(path, "rb").read()
        elif mode == "gray":
            data = pillow_jpeg(Image.fromarray(rgb).convert("L"), quality=quality)
        else:
            data = pillow_jpeg(rgb, quality=quality, subsampling=mode)
        jf = pj.read_jpeg(data)
        y = jf.decode()
        noisy = (y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(quality))).clamp(0, 1)
        batch = torch.cat([candidates(data, jf), noisy[None]])
        result = projection(batch, jf)
        assert float_consistency(result.floats, jf).violating_coefficients == 0, (mode, quality)
        assert float_consistency(round_to_16_bits(result.floats), jf).violating_coefficients == 0, (mode, quality)
        # at quality 90 a few of the padded edge blocks (a third of this small image) stay off by one
        assert coefficient_agreement(result.images, jf).coefficients >= (0.9999 if quality <= 50 else 0.999)


def test_out_of_gamut_colours_cost_one_coefficient_per_mcu(natural_rgb, tmp_path):
    """A camera encodes YCbCr, which may hold colours no RGB image has: there no image meets every
    interval. The projection gives up as few coefficients as it can (one per MCU here), says so, and
    stays exact elsewhere; the float result keeps every interval and leaves the cube instead."""
    ycc = rgb_to_ycbcr(torch.from_numpy(natural_rgb(48, 64, seed=3)).permute(2, 0, 1)[None].double())[0]
    ycc = ycc.permute(1, 2, 0).numpy()
    noise = np.random.default_rng(0).normal(0.0, 4.0, (24, 32))
    ycc[8:32, 16:48] = np.stack([150.0 + noise, np.full_like(noise, 100.0), np.full_like(noise, 250.0)], -1)  # R > 255
    spatial = jpeglib.from_spatial(np.clip(np.rint(ycc), 0, 255).astype(np.uint8), in_color_space=jpeglib.JCS_YCbCr)
    spatial.samp_factor = np.array([(2, 2), (1, 1), (1, 1)])
    path = str(tmp_path / "saturated.jpg")
    spatial.write_spatial(path, qt=tables.ijg_tables(75).astype(np.uint16))
    jf = pj.read_jpeg(path)
    y = jf.decode()
    result = projection((y + 0.03 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1), jf)
    agreement = coefficient_agreement(result.images, jf)
    touched = 2 * 3  # MCUs (16x16) the patch overlaps: rows 0-1, columns 1-3
    assert 0 < agreement.differing_coefficients <= touched  # the float projection alone: 30
    assert agreement.differing_coefficients == int(result.differing_coefficients) <= int(result.given_up_coefficients)
    assert float_consistency(result.floats, jf).violating_coefficients == 0
    assert result.floats.max() > 1.0


def test_every_in_gamut_ycbcr_triple_has_an_8_bit_pixel():
    """The lattice search moves libjpeg's integer YCbCr and relies on finding an RGB pixel for each
    triple whose float RGB lies in the cube (all 2^24 colours: see the slow variant)."""
    triples = torch.randint(0, 256, (200_000, 3), generator=torch.Generator().manual_seed(0)).float()
    rgb = ycbcr_to_rgb(triples.T[None, :, :, None].double())[0, :, :, 0].T
    inside = triples[((rgb >= 0) & (rgb <= 255)).all(1)]
    found_rgb, found = rgb_for(inside)
    assert found.all()
    converted = round_ycbcr_like_libjpeg(rgb_to_ycbcr(found_rgb.T[None, :, :, None]))[0, :, :, 0].T
    assert torch.equal(converted, inside)


def test_a_luma_move_reaches_any_luma_and_keeps_the_colour_where_the_cube_lets_it():
    """The lattice search moves luma anywhere in 0..255: by RGB + (d, d, d) (chroma kept exactly)
    where that stays in the cube, else by giving way in colour (a white block needs white pixels)."""
    generator = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, 16, 16), generator=generator).double()
    rgb[:, :, :4] = torch.tensor([255.0, 255.0, 243.0]).view(1, 3, 1, 1)  # on a face: luma 254 has no room up
    luma = torch.randint(0, 256, (4, 16, 16), generator=generator).double()
    luma[:, :4] = 255.0
    out = with_luma(rgb, luma)
    ycc, before = libjpeg_ycc(out), libjpeg_ycc(rgb)
    assert torch.equal(ycc[:, 0], luma)
    assert torch.equal(out[:, :, :4], torch.full_like(out[:, :, :4], 255.0))
    shifted = rgb + (luma - before[:, 0]).unsqueeze(1)
    kept = ((shifted >= 0) & (shifted <= 255)).all(1)
    assert kept.any() and (~kept).any()
    assert torch.equal(ycc[:, 1:].permute(0, 2, 3, 1)[kept], before[:, 1:].permute(0, 2, 3, 1)[kept])


def test_gray_and_440(natural_rgb, pillow_jpeg, tmp_path):
    gray = Image.fromarray(natural_rgb(29, 41)).convert("L")
    path = str(tmp_path / "440.jpg")
    spatial = jpeglib.from_spatial(np.ascontiguousarray(natural_rgb(29, 41, seed=2)))
    spatial.samp_factor = np.array([(2, 1), (1, 1), (1, 1)])
    spatial.write_spatial(path, qt=np.stack([*tables.ijg_tables(30), tables.ijg_tables(30)[1]]).astype(np.uint16))
    for source in (pillow_jpeg(gray, quality=30), path):
        jf = pj.read_jpeg(source)
        y = jf.decode()
        noisy = (y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        projected = pj.project(noisy, jf)
        assert coefficient_agreement(projected, jf).coefficients == 1.0, jf.sampling
        if jf.sampling == "gray":
            assert torch.equal(projected[0], projected[1]) and torch.equal(projected[1], projected[2])


def test_a_grayscale_file_projects_one_channel_and_colour_candidates_to_exact_gray(natural_rgb, pillow_jpeg):
    """Gray candidates [N, 1, H, W] stay one channel; colourful RGB ones (a generator's raw output)
    come back with three exactly equal channels, the gray image their luma projects to. Blacks and
    whites that ring past 0..255 used to pull the three-channel projection off gray by a level."""
    gray = np.asarray(Image.fromarray(natural_rgb(40, 56, seed=6)).convert("L"), dtype=np.float64)
    saturated = np.clip((gray - 128) * 4 + 128, 0, 255).astype(np.uint8)
    jf = pj.read_jpeg(pillow_jpeg(saturated, quality=20))
    colour = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    luma = pj.jpeg.color.rgb_to_gray(colour)
    gray = pj.project(luma, jf)
    assert gray.shape == (2, 1, 40, 56)
    assert coefficient_agreement(gray, jf).coefficients == 1.0
    assert consistency_rmse(gray, jf).max() == 0.0
    rgb = pj.project(colour, jf)
    assert rgb.shape == (2, 3, 40, 56) and torch.equal(rgb, rgb[:, :1].expand(-1, 3, -1, -1))
    assert coefficient_agreement(rgb, jf).coefficients == 1.0
    assert (rgb[:, :1] - gray).abs().max() <= 1 / 255  # the same luma, up to float rounding
    with pytest.raises(ValueError, match="candidates must be \\[N, 3, 40, 56\\]"):
        pj.project(luma, pj.read_jpeg(pillow_jpeg(natural_rgb(40, 56), quality=20)))  # one channel for a colour file


def test_consistent_input_is_returned_unchanged(natural_rgb, pillow_jpeg):
    rgb = natural_rgb(40, 40, seed=4)
    for quality in (50, 95):
        jf = pj.read_jpeg(pillow_jpeg(rgb, quality=quality))
        original = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        assert torch.equal(pj.project(original, jf), original)


def test_output_is_on_the_8_bit_grid_and_batch_independent(natural_rgb, pillow_jpeg):
    data = pillow_jpeg(natural_rgb(24, 40, seed=5), quality=40)
    jf = pj.read_jpeg(data)
    batch = candidates(data, jf)
    projected = pj.project(batch, jf)
    torch.testing.assert_close(projected * 255, (projected * 255).round(), rtol=0, atol=1e-4)
    for i in range(batch.shape[0]):
        assert torch.equal(pj.project(batch[i], jf), projected[i])


def test_wrong_shape_is_refused(natural_rgb, pillow_jpeg):
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(16, 24), quality=40))
    with pytest.raises(ValueError, match=r"\[N, 3, 16, 24\]"):
        pj.project(torch.zeros(1, 3, 24, 16), jf)


def test_settings_are_keywords_of_one_frozen_record(natural_rgb, pillow_jpeg):
    """`projection`'s keywords are the fields of `Settings`: each one reaches the solver, a misspelt
    one is refused, and no stage can change the record that the others read."""
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(24, 40, seed=3), quality=50))
    y = jf.decode()
    candidate = (y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with pytest.raises(TypeError, match="passes"):
        projection(candidate, jf, passes=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().margin = 1.0
    default = projection(candidate, jf)
    assert torch.equal(projection(candidate, jf, **dataclasses.asdict(Settings())).floats, default.floats)
    assert not torch.equal(projection(candidate, jf, margin=0.5).floats, default.floats)


@pytest.mark.parametrize("mode", ["4:4:4", "4:2:2", "4:2:0", "4:4:0"])
def test_downsampled_size_and_round_bias_match_downsample(mode):
    """The projection predicts libjpeg's samples from `downsampled_size` and `round_bias` (its tiles'
    padding, its moves of cell sums): both must say what `downsample` does, odd sizes included."""
    for height, width in [(1, 1), (7, 9), (16, 16), (17, 33), (61, 97)]:
        for c in range(3):
            factors = subsampling.component_factors(mode, c)
            plane = torch.randint(0, 256, (1, height, width)).float()
            size = subsampling.downsampled_size(height, width, factors)
            assert tuple(subsampling.downsample(plane, factors, libjpeg_rounding=True).shape[1:]) == size
            fv, fh = factors
            cells = subsampling.pad_replicate(plane, size[0] * fv, size[1] * fh).reshape(1, size[0], fv, size[1], fh).sum((2, 4))
            exact = torch.floor((cells + subsampling.round_bias(*size, factors, plane)) / (fv * fh))
            assert torch.equal(exact, subsampling.downsample(plane, factors, libjpeg_rounding=True))


def test_metrics_see_inconsistency(natural_rgb, pillow_jpeg):
    rgb = natural_rgb(32, 32, seed=6)
    data = pillow_jpeg(rgb, quality=50)
    jf = pj.read_jpeg(data)
    original = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    shifted = (original + 8 / 255).clamp(0, 1)
    agreement = coefficient_agreement(torch.stack([original, shifted]), jf)
    assert agreement.differing_coefficients > 0
    assert agreement.total_coefficients == 2 * sum(c.size for c in jf.coefficients)
    assert 0.5 <= agreement.coefficients < 1.0 and agreement.blocks < agreement.coefficients
    rmse = consistency_rmse(torch.stack([original, shifted]), jf)
    assert rmse[0].item() == 0.0 and rmse[1].item() > 1.0


@pytest.mark.parametrize("quality", [50, 95])
def test_each_candidate_is_projected_as_if_alone(natural_rgb, pillow_jpeg, quality):
    """A sample must not depend on the others in its batch (a resumed run makes the missing samples
    in smaller batches than the run it completes): the batch's results equal each candidate's alone,
    bit for bit, also where the search retries or the descent runs (padded edge blocks: 37 x 53)."""
    rgb = natural_rgb(37, 53, seed=9)
    data = pillow_jpeg(rgb, quality=quality, subsampling="4:2:0")
    jf = pj.read_jpeg(data)
    batch = torch.cat([candidates(data, jf), (jf.decode() + 0.15 * torch.randn(1, 3, 37, 53)).clamp(0, 1)])
    together = projection(batch, jf)
    for i, candidate in enumerate(batch):
        alone = projection(candidate, jf)
        assert torch.equal(together.images[i], alone.images), i
        assert torch.equal(together.floats[i], alone.floats), i
        assert together.differing_coefficients[i] == alone.differing_coefficients, i


def test_the_float_alternation_checks_convergence_every_few_passes_not_every_pass(natural_rgb, pillow_jpeg, monkeypatch):
    """Each convergence check reads a result on the host (a GPU synchronisation); the alternation
    runs them every CHECK_EVERY passes. Counted with a dispatch mode: the ops that wait for the
    device (nonzero, item) against the passes run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from posterior_jpeg.jpeg.projection import float_solver, intervals, settings

    waits = {torch.ops.aten.nonzero.default, torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}

    class CountWaits(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountWaits.count += func in waits
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(float_solver, "CUBE_TOLERANCE", -1.0)  # no tile ever counts as done: every pass runs
    monkeypatch.setattr(float_solver, "_STALL", float("inf"))
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(64, 96, 11), quality=90))
    _, tiles, tile_intervals = intervals.cut_tiles(jf.decode()[None] * 255, jf, *intervals.file_tensors(jf, "cpu"))[0]
    passes = []
    original = float_solver.interval_projection
    monkeypatch.setattr(float_solver, "interval_projection", lambda *a: passes.append(1) or original(*a))
    with CountWaits():
        float_solver.float_solve(rgb_to_ycbcr(tiles), tile_intervals, Settings(float_passes=64), descent=False)
    checks = -(-len(passes) // settings.CHECK_EVERY) + 1  # and the last pass
    assert len(passes) == 64 and 0 < CountWaits.count <= 2 * checks + 1 < len(passes)


VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "val"


@pytest.mark.skipif(not (VAL / "CSet14_ppt3.png").is_file(), reason=f"{VAL} not found (the val photos)")
def test_a_slowly_converging_tile_is_solved_not_given_up():
    """A file saved from an RGB image has colours inside the cube, so no coefficient needs giving up.
    On this saturated slide at quality 10 a model sample has a tile whose alternation still gained
    5-10% per check when it was taken for stalled (and a coefficient given up); it converges."""
    with Image.open(VAL / "CSet14_ppt3.png") as opened:
        image = opened.convert("RGB")
    width, height = image.size  # the centre 512x512, as bench/val_yardsticks.py crops it
    left, top = (width - min(width, 512)) // 2, (height - min(height, 512)) // 2
    buffer = io.BytesIO()
    image.crop((left, top, left + min(width, 512), top + min(height, 512))).save(
        buffer, "JPEG", quality=10, subsampling="4:2:0")
    jf = pj.read_jpeg(buffer.getvalue())
    candidate = pj.PosteriorSampler.from_checkpoint(None).sample(jf, n=1, seed=0, project=False)
    result = projection(candidate, jf)
    assert int(result.given_up_coefficients) == 0
    assert coefficient_agreement(result.images, jf).differing_coefficients == 0


EXACT_CASES = [  # photo, crop (top, left, height, width), noise seed: each failed before the fix
    ("CSet14_barbara.png", (166, 295, 77, 130), 3),  # luma blocks padded from 2 real columns (130 = 16 x 8 + 2)
    ("CSet14_comic.png", (150, 51, 61, 97), 8),  # 4:2:2 chroma blocks made of the last pixel column alone
    ("CSet14_ppt3.png", (297, 144, 61, 97), 24),  # white blocks at quality 50 (DC 63.5 steps: only white gives 64)
]


@pytest.mark.skipif(not (VAL / "CSet14_ppt3.png").is_file(), reason=f"{VAL} not found (the val photos)")
@pytest.mark.parametrize("mode", ["4:4:4", "4:2:2", "4:2:0"])
@pytest.mark.parametrize("name, crop, seed", EXACT_CASES, ids=[case[0][7:-4] for case in EXACT_CASES])
def test_an_exact_answer_is_reached_where_one_exists(pillow_jpeg, mode, name, crop, seed):
    """Files saved by Pillow from RGB photos: the photo itself is an exact 8-bit answer, so the
    projection must reach one (coefficient agreement 1.0, nothing given up) from a noisy decode
    (sigma 0.08), a 5x5 box blur and a Gaussian blur of the photo, at quality 10, 50 and 75, on odd
    sizes. bench/projection_consistency.py --exact runs the same on every val photo."""
    top, left, height, width = crop
    with Image.open(VAL / name) as opened:
        rgb = np.ascontiguousarray(np.array(opened.convert("RGB"))[top : top + height, left : left + width])
    image = Image.fromarray(rgb)
    blurred = torch.stack([as_tensor(image.filter(f)) for f in (ImageFilter.BoxBlur(2), ImageFilter.GaussianBlur(1.5))])
    for quality in (10, 50, 75):
        jf = pj.read_jpeg(pillow_jpeg(rgb, quality=quality, subsampling=mode))
        y = jf.decode()
        noisy = (y + 0.08 * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
        result = projection(torch.cat([noisy[None], blurred]), jf)
        agreement = coefficient_agreement(result.images, jf)
        assert agreement.differing_coefficients == 0, (quality, agreement)
        assert int(result.given_up_coefficients.sum()) == 0, quality


def test_a_block_in_a_corner_of_the_cube_reaches_its_exact_answer(pillow_jpeg):
    """Pure red at quality 75, 4:2:0 (the red padding of Pillow's ImageOps.pad, seen on real files):
    each Cr DC needs nearly every pixel's Cr at libjpeg's 255, and Cr rises only with R, which moves
    Y too. From a noisy decode the searches that move one component and keep the others left 4 Cr
    DCs one step low; the search on R, G and B reaches the red image, which is exact."""
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    jf = pj.read_jpeg(pillow_jpeg(rgb, quality=75, subsampling="4:2:0"))
    y = jf.decode()
    noisy = (y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    result = projection(noisy, jf)
    assert int(result.given_up_coefficients) == 0
    assert coefficient_agreement(result.images, jf).differing_coefficients == 0
