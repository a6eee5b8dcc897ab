import io

import numpy as np
import pytest
import torch
from PIL import Image

import posterior_jpeg as pj
from posterior_jpeg.metrics import blockiness


def _decode(array: np.ndarray, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return (pj.read_jpeg(buffer.getvalue()).decode() * 255).round()[None] / 255


def test_natural_image_is_about_1_and_a_low_quality_decode_is_far_above(natural_rgb):
    array = natural_rgb(96, 128, 0)
    original = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    assert 0.8 < blockiness(original) < 1.25
    assert blockiness(_decode(array, 10)) > 1.5 * blockiness(original)
    assert blockiness(_decode(array, 10)) > blockiness(_decode(array, 90))


def test_a_grid_of_flat_blocks_is_all_border_steps():
    levels = torch.rand(1, 3, 4, 5)
    blocks = levels.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3) + 1e-3 * torch.rand(1, 3, 32, 40)
    assert blockiness(blocks) > 20


def test_too_small_an_image_is_an_error():
    with pytest.raises(ValueError, match="wider and taller"):
        blockiness(torch.rand(1, 3, 8, 8))
