"""project(): every saved 8-bit output re-compresses (by libjpeg) to the file's own coefficients."""

import io

import jpeglib
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import posterior_jpeg as pj
from posterior_jpeg.jpeg import tables
from posterior_jpeg.metrics import coefficient_agreement, consistency_rmse


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


def test_projection_at_quality_95_gets_close(natural_rgb, pillow_jpeg):
    """Steps of 1-3 leave few 8-bit images consistent; we report, and require a large improvement."""
    rgb = natural_rgb(32, 48, seed=8)
    data = pillow_jpeg(rgb, quality=95, subsampling="4:2:0")
    jf = pj.read_jpeg(data)
    before = coefficient_agreement(candidates(data, jf), jf)
    after = coefficient_agreement(pj.project(candidates(data, jf), jf), jf)
    print(f"q95: agreement {before.coefficients:.4f} -> {after.coefficients:.4f} (blocks {after.blocks:.3f})")
    assert after.coefficients >= 0.97
    assert after.differing_coefficients < 0.25 * before.differing_coefficients


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
    jf = pj.read_jpeg(pillow_jpeg(rgb, quality=50))
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
