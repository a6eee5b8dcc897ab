"""The differentiable codec and the IJG tables, held to libjpeg's own output."""

import io

import jpeglib
import kornia
import numpy as np
import pytest
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.jpeg import codec, color, dct, subsampling, tables

QUALITIES = [5, 10, 25, 50, 75, 95]
PILLOW_MODES = ["4:4:4", "4:2:2", "4:2:0"]


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]


def stored(jf) -> list[torch.Tensor]:
    return [t.long() for t in jf.coefficient_tensors()]


@pytest.fixture(scope="module")
def photo(natural_rgb):
    return natural_rgb(45, 67, seed=3)


@pytest.mark.parametrize("quality", [1, 5, 10, 25, 50, 75, 95, 100])
def test_ijg_tables_match_pillow(photo, pillow_jpeg, quality):
    data = pillow_jpeg(photo, quality=quality)
    pillow = Image.open(io.BytesIO(data)).quantization
    expected = np.stack([np.array(pillow[0]).reshape(8, 8), np.array(pillow[1]).reshape(8, 8)])
    np.testing.assert_array_equal(tables.ijg_tables(quality), expected)


def test_quality_out_of_range_is_refused():
    with pytest.raises(ValueError, match="1..100"):
        tables.ijg_tables(0)


def test_dct_is_orthonormal_and_inverts():
    d = dct.dct_matrix(torch.float64)
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64))
    blocks = torch.randn(5, 2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(dct.idct_blocks(dct.dct_blocks(blocks)), blocks)
    # DC of a constant block is 8x its value, as in JPEG's definition
    assert dct.dct_blocks(torch.full((1, 8, 8), 2.0, dtype=torch.float64))[0, 0, 0].item() == pytest.approx(16.0)


def test_islow_matches_float_dct_within_its_rounding():
    samples = torch.randint(-128, 128, (200, 8, 8), dtype=torch.int32)
    scaled = dct.islow_fdct(samples).double() / 8
    reference = dct.dct_blocks(samples.double())
    assert (scaled - reference).abs().max().item() < 1.0


@pytest.mark.parametrize("mode", PILLOW_MODES)
@pytest.mark.parametrize("size", [(45, 67), (16, 16), (9, 31)])
def test_encoder_is_bit_exact_with_libjpeg(natural_rgb, pillow_jpeg, mode, size):
    rgb = natural_rgb(*size, seed=size[1])
    for quality in QUALITIES:
        jf = pj.read_jpeg(pillow_jpeg(rgb, quality=quality, subsampling=mode))
        ours = codec.encode(to_tensor(rgb) / 255.0, torch.from_numpy(jf.qtables), mode)
        for a, b in zip(ours, stored(jf)):
            assert torch.equal(a.long(), b), (mode, quality)


def test_encoder_440_and_three_tables_match_jpeglib(photo, tmp_path):
    """4:4:0 and a separate table per component, which Pillow cannot write."""
    qt = np.stack([tables.ijg_tables(40)[0], tables.ijg_tables(40)[1], tables.ijg_tables(70)[1]]).astype(np.uint16)
    path = str(tmp_path / "x.jpg")
    spatial = jpeglib.from_spatial(np.ascontiguousarray(photo))
    spatial.samp_factor = np.array([(2, 1), (1, 1), (1, 1)])
    spatial.write_spatial(path, qt=qt, quant_tbl_no=np.array([0, 1, 2]))
    jf = pj.read_jpeg(path)
    assert jf.sampling == "4:4:0"
    ours = codec.encode(to_tensor(photo) / 255.0, torch.from_numpy(jf.qtables), jf.sampling)
    for a, b in zip(ours, stored(jf)):
        assert torch.equal(a.long(), b)


def agreement(rgb, data) -> float:
    jf = pj.read_jpeg(data)
    ours = codec.encode(to_tensor(rgb).float() / 255, torch.from_numpy(jf.qtables).float(), jf.sampling)
    same = sum((a.long() == b).sum().item() for a, b in zip(ours, stored(jf)))
    return same / sum(b.numel() for b in stored(jf))


@pytest.mark.parametrize("mode", PILLOW_MODES)
def test_differentiable_encoder_agrees_with_libjpeg(natural_rgb, pillow_jpeg, mode):
    rgb = natural_rgb(64, 96, seed=11)
    for quality in QUALITIES:
        share = agreement(rgb, pillow_jpeg(rgb, quality=quality, subsampling=mode))
        assert share >= 0.99, (mode, quality, share)


def test_gray_roundtrip_agrees_with_libjpeg(natural_rgb, pillow_jpeg):
    gray = Image.fromarray(natural_rgb(40, 50)).convert("L")
    rgb = np.array(gray.convert("RGB"))
    assert agreement(rgb, pillow_jpeg(gray, quality=60)) >= 0.99


def test_decode_matches_the_file_decoder(photo, pillow_jpeg):
    jf = pj.read_jpeg(pillow_jpeg(photo, quality=30, subsampling="4:2:0"))
    coefficients = [c.float() for c in jf.coefficient_tensors()]
    decoded = codec.decode(coefficients, torch.from_numpy(jf.qtables).float(), jf.sampling, jf.size)
    assert decoded.shape == (1, 3, *jf.size)
    torch.testing.assert_close(decoded[0], jf.decode())


def test_rounding_is_exact_forward_and_straight_through_backward():
    x = torch.tensor([-2.5, -1.49, -0.5, 0.2, 0.5, 1.5, 2.51], requires_grad=True)
    y = codec.round_ste(x)
    assert y.tolist() == [-3.0, -1.0, -1.0, 0.0, 1.0, 2.0, 3.0]  # half away from zero, as libjpeg
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 7


@pytest.mark.parametrize("mode", subsampling.MODES)
def test_gradients_reach_the_pixels(natural_rgb, mode):
    x = (to_tensor(natural_rgb(24, 40)).float() / 255).requires_grad_(True)
    q = torch.from_numpy(tables.ijg_tables(50)).float()
    coefficients, decoded = codec.roundtrip(x, q, mode)
    assert len(coefficients) == subsampling.num_components(mode)
    (decoded - x.detach()).pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_per_image_tables_are_used(natural_rgb):
    x = to_tensor(natural_rgb(32, 32)).float().repeat(2, 1, 1, 1) / 255
    q = torch.from_numpy(np.stack([tables.ijg_tables(10), tables.ijg_tables(90)])).float()
    batched = codec.encode(x, q, "4:2:0")
    for i, quality in enumerate([10, 90]):
        alone = codec.encode(x[i : i + 1], torch.from_numpy(tables.ijg_tables(quality)).float(), "4:2:0")
        for a, b in zip(batched, alone):
            torch.testing.assert_close(a[i : i + 1], b)


def test_table_shapes_are_checked():
    with pytest.raises(ValueError, match="quantization tables"):
        codec.component_tables(torch.ones(2, 4, 4), 1, 3)


def test_closer_to_libjpeg_than_kornia(natural_rgb, pillow_jpeg):
    """Cross-check with kornia's differentiable JPEG (4:2:0, sizes multiple of 16, IJG tables)."""
    rgb = natural_rgb(64, 96, seed=5)
    x = to_tensor(rgb).float() / 255
    for quality in (10, 50, 90):
        data = pillow_jpeg(rgb, quality=quality, subsampling="4:2:0")
        libjpeg = to_tensor(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).float()
        _, ours = codec.roundtrip(x, torch.from_numpy(tables.ijg_tables(quality)).float(), "4:2:0")
        theirs = kornia.enhance.jpeg_codec_differentiable(x, torch.tensor([float(quality)]))
        ours_error = (ours * 255 - libjpeg).abs().mean().item()
        kornia_vs_ours = (theirs * 255 - ours * 255).abs().mean().item()
        kornia_error = (theirs * 255 - libjpeg).abs().mean().item()
        assert ours_error < 1.0, ours_error
        assert ours_error < kornia_error, (quality, ours_error, kornia_error)
        assert kornia_vs_ours < 4.0, kornia_vs_ours


def test_codec_constants_are_built_once_per_dtype_and_device():
    """Loops that encode or project every pass reuse one tensor per (dtype, device) instead of
    building (or copying to the GPU) the colour, DCT and rounding constants each call."""
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert dct.block_dct_matrix(torch.float32, cpu) is dct.block_dct_matrix(torch.float32, cpu)
    assert dct.block_dct_matrix(torch.float64, cpu).dtype == torch.float64
    assert dct.block_dct_matrix(torch.float32, meta).device == meta
    image = torch.rand(1, 3, 16, 16)
    assert color.ycc_offset(image) is color.ycc_offset(image.clone())
    assert color.ycc_to_rgb_matrix() is color.ycc_to_rgb_matrix(torch.float32, "cpu")
    first = subsampling.round_bias(8, 16, (2, 2), image)
    assert first.data_ptr() == subsampling.round_bias(3, 16, (2, 2), image).data_ptr()
    assert first[0, 0, :4].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_the_codec_and_projection_steps_follow_their_input_to_any_device():
    """On the "meta" device a constant left on the host would raise (device mismatch): every
    constant of the colour, DCT, subsampling and projection steps is made on the input's device."""
    from posterior_jpeg.jpeg import projection

    meta = torch.device("meta")
    images = torch.empty(2, 3, 32, 48, device=meta)
    tables_ = torch.empty(2, 2, 8, 8, device=meta)
    for mode in ("4:4:4", "4:2:2", "4:2:0"):
        assert all(p.device == meta for p in codec.component_planes(images, mode, libjpeg_rounding=False))
        coefficients, decoded = codec.roundtrip(images, tables_, mode)  # libjpeg's rounding, exact DCT
        assert decoded.device == meta and all(c.device == meta for c in coefficients)
    assert projection.gamut_projection(color.rgb_to_ycbcr(images)).device == meta
    assert dct.idct_blocks(torch.empty(4, 8, 8, device=meta)).device == meta
