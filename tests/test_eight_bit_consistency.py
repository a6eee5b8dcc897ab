"""8-bit consistency from one in-memory libjpeg re-encode: known answers, and the same numbers as
re-encoding through a named file and reading it back (the former path, kept here as the oracle)."""

import jpeglib
import numpy as np
import pytest
import torch

from posterior_jpeg.jpeg import subsampling
from posterior_jpeg.jpeg.file import read_jpeg
from posterior_jpeg.metrics import (
    Agreement,
    coefficient_agreement,
    consistency_rmse,
    eight_bit_consistency,
)
from posterior_jpeg.metrics.consistency import LIBJPEG_VERSION
from posterior_jpeg.pixels import to_chw_float, to_uint8


def _through_a_named_file(image: torch.Tensor, jpeg, folder) -> tuple[Agreement, float]:
    """Re-encode one colour image with jpeglib into a file, read it with read_jpeg, compare and decode."""
    array = to_uint8(image).permute(1, 2, 0).numpy()
    v, h = subsampling.SUBSAMPLING[jpeg.sampling]
    spatial = jpeglib.from_spatial(np.ascontiguousarray(array))
    spatial.samp_factor = np.array([(v, h), (1, 1), (1, 1)])
    with jpeglib.version(LIBJPEG_VERSION):
        spatial.write_spatial(str(folder / "again.jpg"), qt=jpeg.qtables.astype(np.uint16), quant_tbl_no=np.arange(3))
    again = read_jpeg(folder / "again.jpg")
    differ = [a != b for a, b in zip(again.coefficients, jpeg.coefficients)]
    agreement = Agreement(total_coefficients=sum(d.size for d in differ), total_blocks=sum(d.size // 64 for d in differ),
                          differing_coefficients=sum(int(d.sum()) for d in differ),
                          differing_blocks=sum(int(d.reshape(-1, 64).any(1).sum()) for d in differ))
    error = (again.decode(dtype=torch.float64) - jpeg.decode(dtype=torch.float64)) * 255
    return agreement, error.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("mode", ["4:2:0", "4:4:4", "4:2:2"])
def test_one_reencode_gives_the_named_file_numbers(mode, natural_rgb, pillow_jpeg, tmp_path):
    jpeg = read_jpeg(pillow_jpeg(natural_rgb(40, 56, seed=1), quality=30, subsampling=mode))
    decoded = jpeg.decode()
    noise = torch.randn((2, *decoded.shape), generator=torch.Generator().manual_seed(0))
    images = torch.cat([decoded[None], (decoded + 0.04 * noise).clamp(0, 1)])
    result = eight_bit_consistency(images, jpeg)
    for image, agreement, rmse in zip(images, result.agreements, result.rmse):
        expected_agreement, expected_rmse = _through_a_named_file(image, jpeg, tmp_path)
        assert agreement == expected_agreement
        assert rmse.item() == pytest.approx(expected_rmse, rel=1e-6)
    assert result.agreements[1].differing_coefficients > 0 and result.rmse[1] > 0  # the noise is seen
    # the batch's agreement sums its images' counts; the single-figure helpers are views of it
    assert result.agreement.differing_coefficients == sum(a.differing_coefficients for a in result.agreements)
    assert coefficient_agreement(images, jpeg) == result.agreement
    assert torch.equal(consistency_rmse(images, jpeg), result.rmse)


def test_a_fixed_point_agrees_everywhere_with_zero_rmse(pillow_jpeg):
    """A flat colour survives JPEG exactly: its decode re-encodes to every stored coefficient."""
    flat = np.full((32, 48, 3), (90, 140, 200), np.uint8)
    jpeg = read_jpeg(pillow_jpeg(flat, quality=90, subsampling="4:4:4"))
    result = eight_bit_consistency(to_chw_float(flat), jpeg)
    assert result.agreement == Agreement(total_coefficients=3 * 24 * 64, total_blocks=3 * 24, differing_coefficients=0,
                                         differing_blocks=0)
    assert result.agreement.coefficients == 1.0 and result.rmse.tolist() == [0.0]


def test_gray_files_take_one_or_three_channels(natural_rgb, pillow_jpeg):
    from PIL import Image

    gray = Image.fromarray(natural_rgb(32, 40, seed=2)).convert("L")
    jpeg = read_jpeg(pillow_jpeg(gray, quality=40))
    one = eight_bit_consistency(jpeg.decode()[:1], jpeg)  # the file's own luma decode: exact
    assert one.agreement.coefficients == 1.0 and one.rmse.item() == 0.0
    three = eight_bit_consistency(jpeg.decode(), jpeg)  # the same gray as RGB, through libjpeg's RGB -> Y
    assert three.agreements == one.agreements
