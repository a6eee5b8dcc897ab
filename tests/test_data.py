"""Training data pipeline: folders, quality distribution, crops compressed by real libjpeg (once or
twice), the decoded-image cache, batching."""

import io
import itertools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from posterior_jpeg import data as data_module
from posterior_jpeg import read_jpeg
from posterior_jpeg.data import (
    MAX_SHIFT,
    RankCounters,
    DataError,
    JpegCropDataset,
    QualityDistribution,
    collate_jpeg_batch,
    jpeg_tables,
    list_images,
    make_loader,
)
from posterior_jpeg.errors import PosteriorJpegError
from posterior_jpeg.pixels import to_unit_float

ALL_MODES = ("4:4:4", "4:2:2", "4:2:0")
CROP = 32


@pytest.fixture
def image_folder(tmp_path, natural_rgb):
    """Three PNGs of different sizes, one of them in a sub-folder."""
    (tmp_path / "sub").mkdir()
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "c.png"]
    for seed, (path, (height, width)) in enumerate(zip(paths, [(48, 40), (64, 64), (40, 56)])):
        Image.fromarray(natural_rgb(height, width, seed)).save(path)
    return tmp_path


def hwc(image: torch.Tensor) -> np.ndarray:
    """An item's uint8 [3, H, W] image as the [H, W, 3] array Pillow takes."""
    return image.permute(1, 2, 0).numpy()


def jpeg_of(image: np.ndarray, quality: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=mode)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_items_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert (a["quality"], a["mode"]) == (b["quality"], b["mode"])
    for key in ("x", "y", "qtables"):
        assert torch.equal(a[key], b[key]), key
    if "coefficients" in a:
        assert all(torch.equal(p, q) for p, q in zip(a["coefficients"], b["coefficients"], strict=True))


def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in ("x", "y", "qtables"):
        assert torch.equal(a[key], b[key]), key
    assert a["groups"].keys() == b["groups"].keys()
    for mode in a["groups"]:
        assert torch.equal(a["groups"][mode], b["groups"][mode])
        if "coefficients" in a:
            assert all(torch.equal(p, q) for p, q in zip(a["coefficients"][mode], b["coefficients"][mode], strict=True))


# --- folders -------------------------------------------------------------------------------------


def test_list_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    names = ["b.PNG", "a.jpg", "sub/c.JPEG", "sub/deeper/d.webp", "e.Bmp", "notes.txt", "f.gif"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.jpg",
        "b.PNG",
        "e.Bmp",
        "sub/c.JPEG",
        "sub/deeper/d.webp",
    ]


def test_list_images_errors_name_the_folder(tmp_path):
    assert issubclass(DataError, PosteriorJpegError)
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images") as caught:
        list_images(tmp_path)
    assert str(tmp_path) in str(caught.value)


# --- qualities -----------------------------------------------------------------------------------


def test_skewed_qualities_favour_low_and_stay_in_range():
    qualities = QualityDistribution("skewed", low=5, high=50, power=2.0)
    rng = np.random.default_rng(0)
    q = np.array([qualities.draw(rng) for _ in range(5000)])
    assert q.min() == 5 and q.max() == 50
    assert q.mean() < (5 + 50) / 2 - 5
    # median of low + (high - low) * u**2 is low + (high - low) / 4 = 16.25
    assert 14 <= np.median(q) <= 19
    assert all(isinstance(qualities.draw(rng), int) for _ in range(3))


def test_uniform_qualities_cover_the_range():
    qualities = QualityDistribution("uniform", low=10, high=30)
    rng = np.random.default_rng(1)
    q = [qualities.draw(rng) for _ in range(3000)]
    assert set(q) == set(range(10, 31))
    assert abs(np.mean(q) - 20) < 0.5


@pytest.mark.parametrize(
    "kwargs", [dict(low=0), dict(high=101), dict(low=40, high=30), dict(kind="gaussian"), dict(power=0.0)]
)
def test_quality_distribution_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        QualityDistribution(**kwargs)


# --- items ---------------------------------------------------------------------------------------


def test_items_have_the_documented_fields(image_folder):
    dataset = JpegCropDataset(list_images(image_folder), crop=CROP, modes=ALL_MODES, seed=3)
    with_coefficients = JpegCropDataset(list_images(image_folder), crop=CROP, modes=ALL_MODES, seed=3,
                                        coefficients=True)
    for counter in range(6):
        item = dataset[counter]
        assert set(item) == {"x", "y", "qtables", "quality", "mode"}  # no coefficients unless asked
        for key in ("x", "y"):
            assert item[key].shape == (3, CROP, CROP) and item[key].dtype == torch.uint8
        assert item["qtables"].shape == (3, 8, 8) and item["qtables"].dtype == torch.float32
        assert isinstance(item["quality"], int) and 5 <= item["quality"] <= 50
        assert item["mode"] in ALL_MODES
        assert not torch.equal(item["x"], item["y"])  # it really went through lossy compression
        full = with_coefficients[counter]
        assert_items_equal({k: v for k, v in full.items() if k != "coefficients"}, item)
        assert len(full["coefficients"]) == 3
        assert all(c.dtype == torch.int16 for c in full["coefficients"])
        assert full["coefficients"][0].shape == (CROP // 8, CROP // 8, 8, 8)


def test_to_unit_float_gives_the_8_bit_grid():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 4, 8, 8)
    floats = to_unit_float(images)
    assert floats.dtype == torch.float32
    assert torch.equal(floats * 255, images.float()) and floats.max() == 1


def test_y_coefficients_and_tables_are_those_of_libjpeg(image_folder):
    """Re-encoding x with the item's quality and mode reproduces y, coefficients and tables exactly;
    the tables (known from the quality, not read back) equal the file's and Pillow's."""
    dataset = JpegCropDataset(list_images(image_folder), crop=CROP, modes=ALL_MODES, seed=0,
                              qualities=QualityDistribution("uniform", 1, 100), coefficients=True)
    seen = set()
    for counter in range(40):
        item = dataset[counter]
        seen.add(item["mode"])
        data = jpeg_of(hwc(item["x"]), item["quality"], item["mode"])
        assert np.array_equal(hwc(item["y"]), decoded(data))
        jpeg = read_jpeg(data)
        assert jpeg.sampling == item["mode"]
        for ours, stored in zip(item["coefficients"], jpeg.coefficients, strict=True):
            assert np.array_equal(ours.numpy(), stored)
        assert np.array_equal(item["qtables"].numpy(), jpeg.qtables.astype(np.float32))
        pillow = Image.open(io.BytesIO(data)).quantization  # natural order, as Pillow reads them
        assert item["qtables"][:2].flatten().tolist() == pillow[0] + pillow[1]
        if seen == set(ALL_MODES) and counter >= 8:
            break
    assert seen == set(ALL_MODES)


def test_tables_are_libjpegs_at_every_quality():
    for quality in range(1, 101):
        data = jpeg_of(np.full((16, 16, 3), 128, np.uint8), quality, "4:2:0")
        assert np.array_equal(jpeg_tables(quality).numpy(), read_jpeg(data).qtables.astype(np.float32)), quality


def test_coefficients_are_parsed_only_when_asked(image_folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_jpeg called although no loss needs coefficients")

    files = list_images(image_folder)
    expected = [JpegCropDataset(files, crop=CROP, modes=ALL_MODES)[counter] for counter in range(4)]
    monkeypatch.setattr(data_module, "read_jpeg", refuse)
    dataset = JpegCropDataset(files, crop=CROP, modes=ALL_MODES)
    for counter in range(4):
        assert_items_equal(dataset[counter], expected[counter])


def test_each_image_is_decoded_once_per_process(image_folder, monkeypatch):
    files = list_images(image_folder)
    opened = []
    original = JpegCropDataset._open

    def counting(self, path):
        opened.append(path)
        return original(self, path)

    monkeypatch.setattr(JpegCropDataset, "_open", counting)
    cached = JpegCropDataset(files, crop=CROP, modes=ALL_MODES, seed=2)
    items = [cached[counter] for counter in range(30)]
    assert sorted(opened) == sorted(set(opened)) and len(opened) <= len(files)
    opened.clear()
    uncached = JpegCropDataset(files, crop=CROP, modes=ALL_MODES, seed=2, cache_bytes=0)
    for counter, item in enumerate(items):  # without room in the cache: decoded per crop, same items
        assert_items_equal(uncached[counter], item)
    assert len(opened) == len(items)


def test_x_is_a_crop_of_the_source_image_with_all_flips(tmp_path, natural_rgb):
    source = natural_rgb(48, 40, 7)
    Image.fromarray(source).save(tmp_path / "only.png")
    dataset = JpegCropDataset([tmp_path / "only.png"], crop=CROP, seed=0)
    positions, flips = set(), set()
    for counter in range(16):
        x = hwc(dataset[counter]["x"])
        variants = {"none": x, "h": x[:, ::-1], "v": x[::-1], "hv": x[::-1, ::-1]}
        found = [
            (top, left, flip)
            for top in range(48 - CROP + 1)
            for left in range(40 - CROP + 1)
            for flip, unflipped in variants.items()
            if np.array_equal(source[top : top + CROP, left : left + CROP], unflipped)
        ]
        assert len(found) == 1, f"counter {counter}: x is not one (flipped) crop of the source"
        positions.add(found[0][:2])
        flips.add(found[0][2])
    assert len(positions) > 4
    assert flips == {"none", "h", "v", "hv"}


def test_without_flips_crops_are_unflipped(tmp_path, natural_rgb):
    source = natural_rgb(40, 40, 8)
    Image.fromarray(source).save(tmp_path / "only.png")
    dataset = JpegCropDataset([tmp_path / "only.png"], crop=CROP, seed=0, flips=False)
    for counter in range(4):
        x = hwc(dataset[counter]["x"])
        assert any(
            np.array_equal(source[t : t + CROP, l : l + CROP], x) for t in range(9) for l in range(9)
        )


def test_items_are_a_function_of_seed_and_counter(image_folder):
    files = list_images(image_folder)
    dataset = JpegCropDataset(files, crop=CROP, modes=ALL_MODES, seed=5, double_share=0.5, coefficients=True)
    again = JpegCropDataset(files, crop=CROP, modes=ALL_MODES, seed=5, double_share=0.5, coefficients=True)
    for counter in (0, 1, 2, 3, 17, 10**30):
        assert_items_equal(dataset[counter], dataset[counter])
        assert_items_equal(dataset[counter], again[counter])
    assert not torch.equal(dataset[0]["x"], dataset[1]["x"])
    assert not torch.equal(dataset[0]["x"], JpegCropDataset(files, crop=CROP, seed=6)[0]["x"])
    assert_items_equal(dataset[np.int64(3)], dataset[3])
    with pytest.raises(IndexError):
        dataset[-1]


def test_modes_come_from_the_configured_set(image_folder):
    dataset = JpegCropDataset(list_images(image_folder), crop=CROP, modes=("4:4:4", "4:2:2"), seed=1,
                              coefficients=True)
    chroma_grid = {"4:4:4": (4, 4), "4:2:2": (4, 2)}
    modes = []
    for counter in range(30):
        item = dataset[counter]
        modes.append(item["mode"])
        assert item["coefficients"][1].shape[:2] == chroma_grid[item["mode"]]
    assert set(modes) == {"4:4:4", "4:2:2"}


@pytest.mark.parametrize("kwargs", [dict(modes=("4:1:1",)), dict(modes=()), dict(crop=24), dict(crop=0),
                                    dict(double_share=-0.1), dict(double_share=1.5), dict(cache_bytes=-1)])
def test_dataset_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        JpegCropDataset(None, **kwargs)


def test_empty_file_list_is_a_data_error():
    with pytest.raises(DataError):
        JpegCropDataset([], crop=CROP)


@pytest.mark.parametrize("size", [(20, 20), (10, 30), (32, 8), (36, 36)])
def test_small_images_are_upscaled_to_full_crops(tmp_path, natural_rgb, size):
    """(36, 36) holds a crop but not the larger window of a crop saved twice."""
    Image.fromarray(natural_rgb(*size, 2)).save(tmp_path / "small.png")
    dataset = JpegCropDataset([tmp_path / "small.png"], crop=CROP, modes=ALL_MODES, seed=0, double_share=0.5)
    for counter in range(6):
        item = dataset[counter]
        assert item["x"].shape == item["y"].shape == (3, CROP, CROP)
        assert to_unit_float(item["x"]).std() > 0.05  # image content, not padding


def test_sixteen_bit_grey_png_keeps_its_range(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    x = to_unit_float(JpegCropDataset([tmp_path / "deep.png"], crop=CROP, seed=0, flips=False)[0]["x"])
    assert 0.1 < x.mean() < 0.9 and x.std() > 0.05


# --- crops saved twice ---------------------------------------------------------------------------


def test_a_crop_saved_twice_is_the_second_save_of_a_shifted_first_save(tmp_path, natural_rgb):
    """Rebuilt independently from the source: some first quality and mode, some shift of 0..7 pixels
    and the item's own quality and mode reproduce y bit for bit, and the item's tables and
    coefficients are those of that second file."""
    source = natural_rgb(48, 48, 3)
    Image.fromarray(source).save(tmp_path / "only.png")
    qualities = QualityDistribution("uniform", 20, 23)
    dataset = JpegCropDataset([tmp_path / "only.png"], crop=CROP, qualities=qualities, modes=ALL_MODES, seed=1,
                              flips=False, double_share=1.0, coefficients=True)
    window = CROP + MAX_SHIFT
    shifts = set()
    for counter in range(4):
        item = dataset[counter]
        x, y = hwc(item["x"]), hwc(item["y"])
        assert not np.array_equal(y, decoded(jpeg_of(x, item["quality"], item["mode"])))  # not saved once
        (top, left), = [(t, l) for t in range(48 - CROP + 1) for l in range(48 - CROP + 1)
                        if np.array_equal(source[t : t + CROP, l : l + CROP], x)]
        matches = []
        for dy, dx in itertools.product(range(MAX_SHIFT + 1), repeat=2):
            if not (0 <= top - dy <= 48 - window and 0 <= left - dx <= 48 - window):
                continue
            first_window = source[top - dy : top - dy + window, left - dx : left - dx + window]
            for first_quality, first_mode in itertools.product(range(20, 24), ALL_MODES):
                first = decoded(jpeg_of(first_window, first_quality, first_mode))
                second = jpeg_of(np.ascontiguousarray(first[dy : dy + CROP, dx : dx + CROP]),
                                 item["quality"], item["mode"])
                if np.array_equal(decoded(second), y):
                    matches.append(((dy, dx), second))
        assert matches, f"counter {counter}: y is not a second save of a shifted first save"
        shifts.add(matches[0][0])
        second = read_jpeg(matches[0][1])
        assert np.array_equal(item["qtables"].numpy(), second.qtables.astype(np.float32))
        assert all(np.array_equal(ours.numpy(), stored) for ours, stored in
                   zip(item["coefficients"], second.coefficients, strict=True))
    assert len(shifts) > 1


def test_the_share_of_crops_saved_twice_is_respected():
    """A crop saved once is exactly the decode of x at its quality and mode; one saved twice is not
    (the count is binomial: 400 crops at a share of 0.3 give 120 +- 9)."""
    counts = {}
    for share in (0.0, 0.3, 1.0):
        dataset = JpegCropDataset(None, crop=16, modes=ALL_MODES, seed=4, double_share=share)
        twice = 0
        for counter in range(400 if share == 0.3 else 40):
            item = dataset[counter]
            once = decoded(jpeg_of(hwc(item["x"]), item["quality"], item["mode"]))
            twice += not np.array_equal(hwc(item["y"]), once)
        counts[share] = twice
    assert counts[0.0] == 0 and counts[1.0] >= 38
    assert 120 - 4 * 9 <= counts[0.3] <= 120 + 4 * 9


# --- synthetic data ------------------------------------------------------------------------------


def test_synthetic_items_are_valid_and_varied():
    dataset = JpegCropDataset(None, crop=CROP, modes=ALL_MODES, seed=0)
    items = [dataset[counter] for counter in range(8)]
    for item in items:
        x = to_unit_float(item["x"])
        assert x.shape == item["y"].shape == (3, CROP, CROP)
        assert x.std() > 0.03
        # natural-looking: neighbouring pixels are strongly correlated, unlike white noise
        left, right = x[:, :, :-1].flatten(), x[:, :, 1:].flatten()
        assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.5
        data = jpeg_of(hwc(item["x"]), item["quality"], item["mode"])
        assert np.array_equal(hwc(item["y"]), decoded(data))
    for a, b in itertools.combinations(items, 2):
        assert (to_unit_float(a["x"]) - to_unit_float(b["x"])).abs().mean() > 0.02
    assert_items_equal(dataset[5], JpegCropDataset(None, crop=CROP, modes=ALL_MODES, seed=0)[5])


# --- unreadable files ----------------------------------------------------------------------------


def test_corrupt_file_is_skipped_with_one_warning(image_folder):
    bad = image_folder / "broken.png"
    bad.write_bytes(b"this is not an image at all")
    files = list_images(image_folder)
    assert bad in files
    loader = make_loader(files, CROP, QualityDistribution(), ALL_MODES, seed=0, batch_size=4, length=24)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert len(batches) == 6 and all(b["x"].shape == (4, 3, CROP, CROP) for b in batches)
    about_bad = [w for w in caught if "broken.png" in str(w.message)]
    assert len(about_bad) == 1
    # the replacement is deterministic: a fresh dataset gives the same items
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = (JpegCropDataset(files, crop=CROP, modes=ALL_MODES) for _ in range(2))
        for counter in range(24):
            assert_items_equal(first[counter], second[counter])


def test_a_huge_training_image_is_skipped_by_its_header_before_it_is_decoded(image_folder):
    """Issue 24: a 13376 x 13376 PNG in a training folder cost 3.3 GB (decoded whole in every loading
    process); its declared size alone now skips it, with one warning naming it."""
    huge = image_folder / "huge.png"
    Image.new("1", (13376, 13376)).save(huge)  # 22 MB while made, 40 kB on disk
    dataset = JpegCropDataset([huge, image_folder / "a.png"], crop=CROP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [dataset[counter] for counter in range(8)]
    assert all(item["x"].shape == (3, CROP, CROP) for item in items)
    assert [str(w.message) for w in caught if "huge.png" in str(w.message)] == [
        f"{huge}: 13376x13376 pixels, more than the {data_module.MAX_TRAINING_PIXELS} a training image may have "
        "(it would be decoded whole); downscale it; skipping this training image"]
    assert dataset._cached_bytes < 2**20


def test_all_corrupt_files_raise_data_error(tmp_path):
    files = []
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"\x89PNG garbage")
        files.append(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 2"):
            JpegCropDataset(files, crop=CROP)[0]
        with pytest.raises(DataError):
            next(iter(make_loader(files, CROP, QualityDistribution(), ("4:2:0",), seed=0, batch_size=2)))


# --- counters, batches, loaders ------------------------------------------------------------------


def test_counter_sampler_sequences():
    assert list(itertools.islice(RankCounters(10), 4)) == [10, 11, 12, 13]
    assert list(RankCounters(3, rank=1, world_size=4, length=3)) == [4, 8, 12]
    assert len(RankCounters(0, length=5)) == 5
    with pytest.raises(TypeError):
        len(RankCounters(0))
    for bad in (dict(start=-1), dict(start=0, rank=2, world_size=2), dict(start=0, length=-1)):
        with pytest.raises(ValueError):
            RankCounters(**bad)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_interleave_to_the_single_process_sequence(world_size):
    start, steps, batch = 6, 4, 2
    ranks = [
        list(RankCounters(start, rank=r, world_size=world_size, length=steps * batch)) for r in range(world_size)
    ]
    single = list(RankCounters(start, length=steps * batch * world_size))
    assert [c for group in zip(*ranks) for c in group] == single
    for step in range(steps):  # per step, all ranks together see one process's bigger batch
        together = sorted(c for r in ranks for c in r[step * batch : (step + 1) * batch])
        assert together == single[step * batch * world_size : (step + 1) * batch * world_size]


def test_collate_groups_a_mixed_mode_batch():
    dataset = JpegCropDataset(None, crop=CROP, modes=ALL_MODES, seed=2, coefficients=True)
    items = [dataset[counter] for counter in range(12)]
    modes = [item["mode"] for item in items]
    assert set(modes) == set(ALL_MODES)
    batch = collate_jpeg_batch(items)
    assert batch["x"].shape == batch["y"].shape == (12, 3, CROP, CROP)
    assert batch["qtables"].shape == (12, 3, 8, 8)
    assert batch.keys() == {"x", "y", "qtables", "groups", "coefficients"}  # what training reads, no more
    assert sorted(torch.cat(list(batch["groups"].values())).tolist()) == list(range(12))
    for mode, indices in batch["groups"].items():
        assert indices.dtype == torch.long
        assert indices.tolist() == [i for i, m in enumerate(modes) if m == mode]
        stacked = batch["coefficients"][mode]
        assert len(stacked) == 3
        for component in range(3):
            expected = torch.stack([items[i]["coefficients"][component] for i in indices])
            assert torch.equal(stacked[component], expected)
    assert batch["coefficients"]["4:2:0"][1].shape[1:3] == (2, 2)
    assert batch["coefficients"]["4:4:4"][1].shape[1:3] == (4, 4)
    assert torch.equal(batch["x"][5], items[5]["x"])
    without = collate_jpeg_batch([JpegCropDataset(None, crop=CROP, modes=ALL_MODES, seed=2)[c] for c in range(12)])
    assert "coefficients" not in without and torch.equal(without["y"], batch["y"])


@pytest.mark.parametrize("options", [{}, dict(double_share=0.5, coefficients=True)], ids=["plain", "twice+dct"])
def test_loader_resumes_exactly_and_shards_by_rank(options):
    args = (None, CROP, QualityDistribution(), ALL_MODES, 0)
    full = list(make_loader(*args, batch_size=4, length=12, **options))
    resumed = list(make_loader(*args, batch_size=4, start_counter=8, length=4, **options))
    assert_batches_equal(resumed[0], full[2])
    rank1 = next(iter(make_loader(*args, batch_size=2, rank=1, world_size=2, length=2, **options)))
    assert torch.equal(rank1["x"], full[0]["x"][1::2])


def test_worker_processes_give_the_same_batches(image_folder):
    args = (list_images(image_folder), CROP, QualityDistribution(), ALL_MODES, 4)
    in_process = list(make_loader(*args, batch_size=3, length=9, workers=0, double_share=0.5))
    loader = make_loader(*args, batch_size=3, length=9, workers=2, double_share=0.5)
    assert loader.persistent_workers and not loader.pin_memory
    assert make_loader(*args, batch_size=3, pin_memory=True).pin_memory
    with_workers = list(loader)
    assert len(with_workers) == len(in_process) == 3
    for a, b in zip(in_process, with_workers):
        assert_batches_equal(a, b)
