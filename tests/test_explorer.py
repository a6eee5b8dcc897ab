"""The explorer page of a sample run (checked in a real headless Chromium) and the export formats."""

import json
import re
import struct
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps
from torchvision.io import ImageReadMode, decode_png

import posterior_jpeg as pj
from posterior_jpeg import explorer
from posterior_jpeg.commands import main as cli_main
from posterior_jpeg.jpeg.tables import ijg_tables
from posterior_jpeg.commands.sample import build_parser as build_sample_parser
from posterior_jpeg.commands.sample import main

ORIENTATION, MAKE = 0x0112, 0x010F
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, natural_rgb, pillow_jpeg):
    """Three small JPEGs: a rotated one (EXIF orientation 6, a camera make, an ICC profile), a
    grayscale one, and one whose name needs escaping in a URL."""
    folder = tmp_path_factory.mktemp("inputs")
    exif = Image.Exif()
    exif[ORIENTATION], exif[MAKE] = 6, "TestCam"
    (folder / "photo.jpg").write_bytes(pillow_jpeg(natural_rgb(48, 80, 1), quality=30, exif=exif.tobytes(),
                                                   icc_profile=SRGB))
    (folder / "gray.jpg").write_bytes(pillow_jpeg(natural_rgb(40, 56, 2)[:, :, 0], quality=40))
    (folder / "a b#1.jpg").write_bytes(pillow_jpeg(natural_rgb(32, 48, 3), quality=20))
    return folder


@pytest.fixture(scope="module")
def sampled(inputs, tmp_path_factory):
    """`sample.py ... --html` with the bundled model: 3 samples, mean and std per file."""
    out = tmp_path_factory.mktemp("explored")
    files = [str(inputs / name) for name in ("photo.jpg", "gray.jpg", "a b#1.jpg")]
    assert main([*files, "-n", "3", "-o", str(out), "--sample-mean", "--std", "--html", "--device", "cpu", "--quiet"]) == 0
    return out


def page_data(folder: Path) -> dict:
    text = (folder / "index.html").read_text()
    found = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S)
    return json.loads(found.group(1))


def test_page_shows_every_file_with_its_decode_samples_mean_and_std(sampled, inputs):
    data = page_data(sampled)
    assert [f["name"] for f in data["files"]] == ["photo.jpg", "gray.jpg", "a b#1.jpg"]
    for file in data["files"]:
        assert [s["seed"] for s in file["samples"]] == [0, 1, 2]
        assert all(s["written_consistency"] == "8-bit" and s["coefficient_agreement"] == 1.0 for s in file["samples"])
        assert file["views"]["mmse"] is None and all(file["views"][k] for k in ("input", "mean", "std"))
    photo = data["files"][0]
    assert (photo["width"], photo["height"]) == (48, 80)  # shown upright: orientation 6 applied
    with Image.open(inputs / "photo.jpg") as original:
        libjpeg = np.array(ImageOps.exif_transpose(original))
    (decode_name,) = [p.name for p in sampled.glob("photo_input_*.png")]
    assert photo["views"]["input"] == decode_name
    with Image.open(sampled / decode_name) as decode:
        assert np.array_equal(np.array(decode), libjpeg) and decode.info["icc_profile"] == SRGB
    assert data["files"][2]["samples"][0]["image"] == "a%20b%231_s0.png"

    # every file the page names is relative and exists; thumbnails are small
    text = (sampled / "index.html").read_text()
    named = re.findall(r'src="([^"]+)"', text) + [
        path for f in data["files"] for path in [*filter(None, f["views"].values()), *f["thumbs"].values()]
    ] + [s[key] for f in data["files"] for s in f["samples"] for key in ("image", "thumb")]
    assert len(named) > 40 and "http" not in text
    for relative in named:
        assert (sampled / unquote(relative)).is_file(), relative
    for thumb in (sampled / explorer.THUMBS).iterdir():
        assert max(Image.open(thumb).size) <= explorer.THUMB_SIZE


def test_posterior_mean_output_is_shown_when_present(sampled, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in sampled.glob("photo_*"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "manifest.jsonl").write_text(
        "".join(line + "\n" for line in (sampled / "manifest.jsonl").read_text().splitlines() if "photo.jpg" in line)
        + '{"cut by a full dis\n')
    (folder / "photo_mmse.png").write_bytes((sampled / "photo_mean.png").read_bytes())
    explorer.write_sample_page(folder)
    assert page_data(folder)["files"][0]["views"]["mmse"] is None  # a file the manifest does not record
    mean = next(json.loads(line) for line in (sampled / "manifest.jsonl").read_text().splitlines()
                if '"kind": "mean"' in line and "photo.jpg" in line)
    with (folder / "manifest.jsonl").open("a") as manifest:
        manifest.write(json.dumps({**mean, "kind": "mmse", "output": str(folder / "photo_mmse.png")}) + "\n")
    explorer.write_sample_page(folder)
    (photo,) = page_data(folder)["files"]
    assert photo["views"]["mmse"] == "photo_mmse.png" and "mmse" in photo["thumbs"]


def test_one_out_holds_runs_of_two_folders_each_file_with_its_own_outputs(inputs, tmp_path, pillow_jpeg,
                                                                          natural_rgb):
    """a/x.jpg then b/x.jpg (another picture) into one OUT with other seeds: each card shows its own
    decode, samples and mean; a clash of output names is still refused."""
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").write_bytes(pillow_jpeg(natural_rgb(24, 32, seed), quality=30))
    out = tmp_path / "out"
    common = ["-n", "1", "-o", str(out), "--sample-mean", "--html", "--device", "cpu", "--quiet"]
    assert main([str(tmp_path / "a" / "x.jpg"), "--seed", "0", *common]) == 0
    (mean_a,) = [p.name for p in out.glob("x_mean.png")]
    assert main([str(tmp_path / "b" / "x.jpg"), "--seed", "5", *common]) == 1  # x_mean.png is a's: refused
    assert main([str(tmp_path / "b" / "x.jpg"), "--seed", "5", "-n", "1", "-o", str(out), "--html", "--device", "cpu",
                 "--quiet"]) == 0
    a, b = page_data(out)["files"]
    assert (a["input"], b["input"]) == (str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg"))
    assert [s["seed"] for s in a["samples"]] == [0] and [s["seed"] for s in b["samples"]] == [5]
    assert a["views"]["mean"] == mean_a and b["views"]["mean"] is None
    assert a["views"]["input"] != b["views"]["input"]
    for card, folder in ((a, "a"), (b, "b")):
        with Image.open(tmp_path / folder / "x.jpg") as original, Image.open(out / card["views"]["input"]) as decode:
            assert np.array_equal(np.array(decode), np.array(original.convert("RGB")))


def test_records_with_fields_of_the_wrong_type_are_left_out(sampled, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for path in sampled.glob("gray_*"):
        (folder / path.name).write_bytes(path.read_bytes())
    lines = [line for line in (sampled / "manifest.jsonl").read_text().splitlines() if "gray.jpg" in line]
    broken = [json.dumps({**json.loads(lines[0]), key: value}) for key, value in
              [("seed", "zero"), ("output", 3), ("seconds", "slow"), ("coefficient_agreement", [1]), ("input", None)]]
    (folder / "manifest.jsonl").write_text("".join(line + "\n" for line in [*broken, *lines[1:]]))
    explorer.write_sample_page(folder)
    (gray,) = page_data(folder)["files"]
    assert [s["seed"] for s in gray["samples"]] == [1, 2]


def test_installed_command_writes_the_page_too(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["sample", str(inputs / "gray.jpg"), "-n", "2", "-o", str(out), "--html", "--device", "cpu"]) == 0
    assert f"explorer page: {out / 'index.html'}" in capsys.readouterr().out
    (gray,) = page_data(out)["files"]
    assert [s["image"] for s in gray["samples"]] == ["gray_s0.png", "gray_s1.png"] and gray["views"]["mean"] is None


def visible_transforms(browser) -> list[str]:
    return browser.run("return [...document.querySelectorAll('#viewer .view:not([hidden]) .frame img')]"
                       ".map(i => i.style.transform)")


def test_explorer_in_chromium(sampled, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.load(sampled / "index.html")
    overview = browser.load_every_image()
    assert len(overview) == 3 * 6 and all(image["width"] > 0 for image in overview), overview
    for index in range(3):
        browser.run(f"document.querySelector('.card[data-file=\"{index}\"] h2 a').click()")
        shown = []
        for _ in range(3):
            views = browser.images("#viewer .view:not([hidden]) img, #sample-strip img")
            assert len(views) == 4 + 3 and all(image["width"] > 0 for image in views), views
            shown.append(browser.run("return document.querySelector('#viewer [data-kind=sample] img').getAttribute('src')"))
            browser.driver.find_element("tag name", "body").send_keys(Keys.ARROW_RIGHT)
        assert len(set(shown)) == 3  # flipping shows each sample in turn
        assert browser.run("return document.querySelector('#figures tr.current td:nth-child(2)').textContent") == "0"
    browser.run("document.querySelector('button[data-action=next-sample]').click()")
    assert browser.run("return document.querySelector('#viewer [data-kind=sample] h3 b').textContent") == "2 / 3, seed 1"

    # the wheel on one view zooms every view into the same region; a drag on another moves them all
    assert len(set(visible_transforms(browser))) == 1
    frame = browser.driver.find_element("css selector", "#viewer [data-kind=sample] .frame")
    browser.run("const f = arguments[0], r = f.getBoundingClientRect();"
                "f.dispatchEvent(new WheelEvent('wheel', {deltaY: -600, clientX: r.left + r.width / 4,"
                " clientY: r.top + r.height / 3, bubbles: true, cancelable: true}))", frame)
    zoomed = visible_transforms(browser)
    assert len(zoomed) == 4 and len(set(zoomed)) == 1 and "scale(1)" not in zoomed[0], zoomed
    other = browser.driver.find_element("css selector", "#viewer [data-kind=input] .frame")
    ActionChains(browser.driver).move_to_element(other).click_and_hold().move_by_offset(30, 20).release().perform()
    moved = visible_transforms(browser)
    assert len(set(moved)) == 1 and moved[0] != zoomed[0], moved

    assert browser.console_errors() == []
    requested = browser.requested_urls()
    assert requested and all(url.startswith(("file://", "data:")) for url in requested), requested


def test_a_name_with_script_markup_leaves_the_explorer_working(sampled, inputs, tmp_path, browser):
    """Page data embeds <, > and & (and U+2028) as \\u escapes: "<!--<script>" in a name would otherwise
    move the HTML parser into its escaped script states and the data would never parse."""
    name = "x<!--<script>&\u2028y"
    source = tmp_path / f"{name}.jpg"
    source.write_bytes((inputs / "gray.jpg").read_bytes())
    folder = tmp_path / "run"
    folder.mkdir()
    lines = []
    for record in map(json.loads, (sampled / "manifest.jsonl").read_text().splitlines()):
        if Path(record["input"]).name == "gray.jpg":
            output = Path(record["output"]).name.replace("gray", name, 1)
            (folder / output).write_bytes((sampled / Path(record["output"]).name).read_bytes())
            lines.append(json.dumps({**record, "input": str(source), "output": str(folder / output)}) + "\n")
    (folder / "manifest.jsonl").write_text("".join(lines))
    explorer.write_sample_page(folder)
    text = (folder / "index.html").read_text()
    embedded = text.split('id="explorer-data">')[1].split("</script>")[0]
    assert not set("<>&\u2028\u2029") & set(embedded)
    assert [f["name"] for f in page_data(folder)["files"]] == [f"{name}.jpg"]

    browser.load(folder / "index.html")
    browser.run("document.querySelector('.card[data-file=\"0\"] h2 a').click()")
    assert browser.run("return document.querySelector('#viewer .title').textContent") == f"{name}.jpg (1 / 1)"
    views = browser.images("#viewer .view:not([hidden]) img, #sample-strip img")
    assert views and all(image["width"] > 0 for image in views), views
    assert browser.console_errors() == []


# ----------------------------------------------------------------------------------------- exports
def export_run(inputs: Path, out: Path, *options: str) -> dict:
    code = main([str(inputs / "photo.jpg"), "-n", "1", "-o", str(out), "--device", "cpu", "--quiet", *options])
    assert code == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["kind"] == "sample"]
    return record


def png_bit_depth(path: Path) -> int:
    data = path.read_bytes()
    assert data[12:16] == b"IHDR"
    return struct.unpack(">IIB", data[16:25])[2]


@pytest.mark.parametrize("fmt, quality, suffix, pil_format", [
    ("png", None, ".png", "PNG"), ("png16", None, ".png", "PNG"), ("webp", 80, ".webp", "WEBP"),
    ("jpeg", 80, ".jpg", "JPEG")])
def test_each_format_keeps_size_and_metadata(inputs, tmp_path, fmt, quality, suffix, pil_format):
    options = ["--format", fmt, *(["--quality", str(quality)] if quality else []), "--sample-mean"]
    record = export_run(inputs, tmp_path, *options)
    written = Path(record["output"])
    assert written.name == f"photo_s0{suffix}" and (tmp_path / f"photo_mean{suffix}").is_file()
    assert (record["format"], record["quality"], record["metadata"]) == (fmt, quality, "keep")
    assert record["written_consistency"] == {"webp": "none", "jpeg": "none", "png": "8-bit", "png16": "float"}[fmt]
    for path in (written, tmp_path / f"photo_mean{suffix}"):
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == (pil_format, "RGB", (48, 80))
            assert image.info["icc_profile"] == SRGB
            exif = image.getexif()
            assert exif[ORIENTATION] == 1 and exif[MAKE] == "TestCam"
    if fmt.startswith("png"):
        assert png_bit_depth(written) == (16 if fmt == "png16" else 8)
    if fmt == "jpeg":
        jf = pj.read_jpeg(written)
        assert jf.progressive and np.array_equal(jf.qtables[0], ijg_tables(quality)[0])


def test_metadata_strip_leaves_neither_exif_nor_icc(inputs, tmp_path):
    for fmt in ("png", "png16", "webp", "jpeg"):
        record = export_run(inputs, tmp_path / fmt, "--format", fmt, "--metadata", "strip", "--sample-mean", "--grid")
        written = Path(record["output"])
        for path in (written, written.with_stem("photo_mean"), written.with_name("photo_grid.png")):
            with Image.open(path) as image:
                assert "icc_profile" not in image.info and not image.getexif(), path
        assert Image.open(written).size == (48, 80)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision's libpng reader
def test_png16_holds_the_float_output(inputs, tmp_path):
    """Unprojected samples are float: the 16-bit PNG keeps them to 1/65535, the 8-bit PNG rounds them;
    both come from the same seed, so they agree to half an 8-bit level."""
    sixteen = export_run(inputs, tmp_path / "16", "--format", "png16", "--no-project")
    eight = export_run(inputs, tmp_path / "8", "--no-project")
    data = torch.frombuffer(bytearray(Path(sixteen["output"]).read_bytes()), dtype=torch.uint8)
    levels = decode_png(data, ImageReadMode.UNCHANGED).int()  # libpng, 16 bits per channel
    with Image.open(eight["output"]) as image:
        rounded = torch.from_numpy(np.array(image)).permute(2, 0, 1).int()
    assert levels.shape == rounded.shape == (3, 80, 48)
    assert (levels / 65535 - rounded / 255).abs().max() <= 0.5 / 255 + 1e-4
    assert (levels % 257 != 0).float().mean() > 0.9  # not just 8-bit values widened
    projected = export_run(inputs, tmp_path / "p", "--format", "png16")  # projected: the float-consistent result
    data = torch.frombuffer(bytearray(Path(projected["output"]).read_bytes()), dtype=torch.uint8)
    assert (decode_png(data, ImageReadMode.UNCHANGED).int() % 257 != 0).float().mean() > 0.5
    assert projected["written_consistency"] == "float" and projected["float_violations"] == 0


def test_quality_only_for_lossy_formats_and_help_warns(inputs, tmp_path, capsys):
    assert main([str(inputs / "photo.jpg"), "-o", str(tmp_path), "--format", "png", "--quality", "80"]) == 2
    assert "--quality applies to webp and jpeg only" in capsys.readouterr().err
    text = " ".join(build_sample_parser().format_help().split())
    assert "re-exported lossy file is NO LONGER consistent with the input" in text
