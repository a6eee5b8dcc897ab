"""Yardsticks that need no downloaded weights, each on a case whose answer is known: texture ratio,
colour, periodic peaks and the naturalness distance."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from posterior_jpeg.jpeg.color import rgb_to_ycbcr, ycbcr_to_rgb
from posterior_jpeg.metrics import (
    chroma_psnr,
    is_gray,
    laplacian_energy,
    naturalness_distance,
    periodic_peaks,
    psnr,
    psnr_y,
    rgb_luma_gap,
    texture_ratio,
)
from posterior_jpeg.metrics.periodic import ORIENTATIONS, PERIODS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VAL = SHARED / "data" / "val"
PEERS = SHARED / "peers" / "val.json"


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255


def _blur(array: np.ndarray, radius: float) -> torch.Tensor:
    return _tensor(np.array(Image.fromarray(array).filter(ImageFilter.GaussianBlur(radius))))


def _noisy(image: torch.Tensor, gray_levels: float, seed: int = 0) -> torch.Tensor:
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed)) * gray_levels / 255
    return (image + noise).clamp(0, 1)


def _libjpeg(array: np.ndarray, quality: int) -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
    with Image.open(buffer) as decoded:
        return _tensor(np.array(decoded.convert("RGB")))


def _centre_crop(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    crop_w, crop_h = min(width, size), min(height, size)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return np.array(image.crop((left, top, left + crop_w, top + crop_h)))


def _val_photos(size: int) -> list[np.ndarray]:
    files = sorted(VAL.glob("*.png")) if VAL.is_dir() else []
    if not files:
        pytest.skip(f"the validation photos are not there ({VAL}: a checkout without ../shared/data)")
    return [_centre_crop(path, size) for path in files]


# texture ratio


def test_texture_ratio_is_1_for_the_original_below_for_blur_above_for_noise(natural_rgb):
    array = natural_rgb(64, 96, 1)
    original = _tensor(array)
    for inside_blocks in (True, False):
        assert texture_ratio(original, original, inside_blocks).item() == pytest.approx(1.0)
        assert texture_ratio(_blur(array, 1.0), original, inside_blocks).item() < 0.5
        assert texture_ratio(_noisy(original, 10), original, inside_blocks).item() > 1.5


def test_inside_blocks_ignores_the_block_borders():
    """Flat 8x8 blocks: every Laplacian that straddles a border is large, every one inside is 0."""
    levels = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    blocks = levels.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    assert laplacian_energy(blocks, inside_blocks=True).item() == 0.0
    assert laplacian_energy(blocks, inside_blocks=False).item() > 1e-3


def test_a_batch_gives_one_ratio_per_image(natural_rgb):
    originals = torch.stack([_tensor(natural_rgb(32, 40, seed)) for seed in range(3)])
    ratios = texture_ratio(torch.stack([originals[0], _noisy(originals[1], 20), originals[2]]), originals)
    assert ratios.shape == (3,)
    assert ratios[0] == pytest.approx(1.0) and ratios[2] == pytest.approx(1.0) and ratios[1] > 1.5


def test_texture_ratio_and_psnr_reproduce_the_peers_libjpeg_figures():
    """The definitions of ../shared/peers/README.md, image by image (libjpeg decode, quality 10, 4:2:0)."""
    if not PEERS.is_file():
        pytest.skip(f"the peer measurements are not there ({PEERS}: a checkout without ../shared/peers)")
    records = [r for r in json.loads(PEERS.read_text())["records"] if r["method"] == "libjpeg" and r["quality"] == 10]
    photos = dict(zip(sorted(p.stem for p in VAL.glob("*.png")), _val_photos(512)))
    for record in records:
        original = _tensor(photos[record["image"]])
        decoded = _libjpeg(photos[record["image"]], 10)
        assert psnr(decoded[None], original[None]).item() == pytest.approx(record["psnr"], abs=1e-4)
        assert psnr_y(decoded[None], original[None]).item() == pytest.approx(record["psnr_y"], abs=1e-4)
        assert texture_ratio(decoded, original, inside_blocks=False).item() == pytest.approx(record["hf"], rel=1e-5)
        assert texture_ratio(decoded, original).item() == pytest.approx(record["hf_in"], rel=1e-5)


# colour


def test_chroma_psnr_measures_an_offset_of_cb_alone(natural_rgb):
    original = _tensor(natural_rgb(32, 32, 2)) * 0.5 + 0.25  # room for the offset inside [0, 1]
    ycc = rgb_to_ycbcr(original[None].double() * 255)
    ycc[:, 1] += 0.05 * 255
    shifted = ycbcr_to_rgb(ycc) / 255
    cb, cr = chroma_psnr(shifted, original)[0].tolist()
    assert cb == pytest.approx(-20 * math.log10(0.05), abs=1e-3)
    assert cr > 90  # untouched: only float rounding
    assert chroma_psnr(original, original).tolist() == [[100.0, 100.0]]


def test_rgb_luma_gap_is_0_for_gray_outputs_and_positive_when_colour_is_added(natural_rgb):
    gray = _tensor(natural_rgb(32, 48, 3))[:1].expand(3, -1, -1)
    blurred_gray = _blur((gray.permute(1, 2, 0) * 255).round().byte().numpy(), 1.0)
    assert is_gray(gray).item() and is_gray(blurred_gray).item()
    assert rgb_luma_gap(blurred_gray, gray).item() == pytest.approx(0.0, abs=1e-4)
    tinted = blurred_gray.clone()
    tinted[0] += 0.05  # redder and darker in G and B at equal luma: colour without a change of Y
    tinted[1:] -= 0.05 * 0.299 / (0.587 + 0.114)
    assert not is_gray(tinted).item()
    assert psnr_y(tinted[None], gray[None]).item() == pytest.approx(psnr_y(blurred_gray[None], gray[None]).item(), abs=1e-3)
    assert rgb_luma_gap(tinted, gray).item() > 1.0


# periodic artefacts


def test_a_natural_image_has_no_periodic_peak(natural_rgb):
    image = _tensor(natural_rgb(256, 256, 4))
    assert periodic_peaks(image).shape == (1, len(PERIODS), len(ORIENTATIONS))
    assert periodic_peaks(image).max() < 5


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_a_faint_4_pixel_pattern_peaks_at_period_4_only_in_its_orientation(natural_rgb, orientation):
    image = _tensor(natural_rgb(256, 240, 5))
    fy, fx = ORIENTATIONS[orientation]
    rows, cols = torch.meshgrid(torch.arange(256.0), torch.arange(240.0), indexing="ij")
    pattern = 2 / 255 * torch.cos(2 * math.pi * (fy * rows + fx * cols) / 4 + 0.3)  # +-2 gray levels
    scores = periodic_peaks(image + pattern)[0]
    at_4 = scores[PERIODS.index(4)]
    assert at_4[list(ORIENTATIONS).index(orientation)] > 20
    assert scores[PERIODS.index(2)].max() < 5 and scores[PERIODS.index(8)].max() < 5
    assert torch.cat([at_4[: list(ORIENTATIONS).index(orientation)], at_4[list(ORIENTATIONS).index(orientation) + 1 :]]).max() < 5


def test_a_pixel_checkerboard_peaks_at_period_2():
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    image = torch.full((3, 64, 64), 0.5) + 0.01 * ((rows + cols) % 2).float() + 0.02 * torch.rand(3, 64, 64)
    scores = periodic_peaks(image)[0]
    assert scores[PERIODS.index(2), list(ORIENTATIONS).index("diagonal")] > 20
    assert scores[PERIODS.index(4)].max() < 5


# naturalness distance


def _distortions(arrays: list[np.ndarray]) -> dict[str, list[torch.Tensor]]:
    originals = [_tensor(a) for a in arrays]
    return {
        "originals": originals,
        "mirrored": [image.flip(-1) for image in originals],
        "mild blur": [_blur(a, 0.6) for a in arrays],
        "mild noise": [_noisy(image, 3, seed) for seed, image in enumerate(originals)],
        "strong blur": [_blur(a, 2.0) for a in arrays],
        "strong noise": [_noisy(image, 15, seed) for seed, image in enumerate(originals)],
        "JPEG quality 10": [_libjpeg(a, 10) for a in arrays],
    }


def test_naturalness_ranks_originals_below_mild_below_strong_distortions_on_photos():
    arrays = _val_photos(256)
    sets = _distortions(arrays)
    distance = {name: naturalness_distance(images, sets["originals"]) for name, images in sets.items()}
    assert distance["originals"] == 0.0
    mild = [distance["mild blur"], distance["mild noise"]]
    strong = [distance["strong blur"], distance["strong noise"], distance["JPEG quality 10"]]
    assert distance["mirrored"] < min(mild), distance  # the same photos seen otherwise are natural
    assert max(mild) < min(strong), distance


def test_naturalness_ranks_each_distortion_by_strength_on_synthetic_images(natural_rgb):
    """Without the photos: synthetic images are too uniform for a common scale across kinds of
    distortion (any blur removes all of their grain), but each kind still ranks by strength."""
    sets = _distortions([natural_rgb(128, 128, seed) for seed in range(6)])
    distance = {name: naturalness_distance(images, sets["originals"]) for name, images in sets.items()}
    assert distance["originals"] == 0.0
    assert distance["mirrored"] < distance["mild noise"] < distance["strong noise"], distance
    assert distance["mirrored"] < distance["mild blur"] < distance["strong blur"], distance


def test_naturalness_needs_two_patches():
    with pytest.raises(ValueError, match="at least 2 patches"):
        naturalness_distance(torch.rand(1, 3, 64, 100), torch.rand(2, 3, 64, 64))


# bench/val_yardsticks.py: a front end of the declared metrics
def test_the_yardsticks_measure_the_declared_metrics_under_the_peers_names(natural_rgb, pillow_jpeg, monkeypatch):
    """Each figure equals its function's; the original alone gives only what needs no reference; the
    colour and gray figures go to photos of that kind only."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from val_yardsticks import measure

    from posterior_jpeg.data import libjpeg_decode
    from posterior_jpeg.jpeg.file import read_jpeg
    from posterior_jpeg.metrics import blockiness, coefficient_agreement

    array = natural_rgb(64, 64)
    data = pillow_jpeg(array, quality=30, subsampling="4:2:0")
    original, output = _tensor(array), _tensor(libjpeg_decode(data))
    figures = measure(output, read_jpeg(data), original)
    assert figures["psnr"] == psnr(output[None], original[None]).item()
    assert figures["agreement"] == coefficient_agreement(output, read_jpeg(data)).coefficients == 1.0
    assert figures["hf_in"] == texture_ratio(output, original).item()
    assert figures["peak4"] == periodic_peaks(output)[0, 1].max().item()
    assert "chroma_cb" in figures and "rgb_luma_gap" not in figures and "psnr_rgb" not in figures
    assert set(measure(original)) == {"blockiness", "peak2", "peak4", "peak8"}
    assert measure(original)["blockiness"] == blockiness(original[None])
    gray = original.mean(0, keepdim=True).expand(3, -1, -1)
    assert "rgb_luma_gap" in measure(gray, read_jpeg(data), gray) and "chroma_cb" not in measure(gray, None, gray)
