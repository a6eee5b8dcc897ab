"""The posterior-jpeg command line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import posterior_jpeg as pj
from posterior_jpeg.commands import main


def test_info_prints_one_json_line_per_file_and_reports_bad_ones(natural_rgb, pillow_jpeg, tmp_path, capsys):
    good = tmp_path / "a.jpg"
    good.write_bytes(pillow_jpeg(natural_rgb(21, 34), quality=60, subsampling="4:2:2"))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["info", str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    record = json.loads(out.strip())
    assert (record["height"], record["width"], record["sampling"]) == (21, 34, "4:2:2")
    assert "b.jpg" in err and "not a JPEG" in err


def test_project_writes_a_consistent_png(natural_rgb, pillow_jpeg, tmp_path, capsys):
    jpeg = tmp_path / "in.jpg"
    jpeg.write_bytes(pillow_jpeg(natural_rgb(30, 44), quality=40))
    restored = tmp_path / "restored.png"
    Image.open(jpeg).filter(ImageFilter.GaussianBlur(2)).save(restored)
    output = tmp_path / "out.png"
    assert main(["project", str(jpeg), str(restored), "-o", str(output)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["coefficient_agreement_before"] < 1.0
    assert report["coefficient_agreement_after"] == 1.0
    saved = np.array(Image.open(output)).astype(np.float32) / 255
    jf = pj.read_jpeg(str(jpeg))
    assert pj.metrics.coefficient_agreement(torch.from_numpy(saved).permute(2, 0, 1), jf).coefficients == 1.0
    # no overwrite without asking, and nothing left behind
    assert main(["project", str(jpeg), str(restored), "-o", str(output)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jpg", "out.png", "restored.png"]


def test_project_reads_a_16_bit_restoration_and_keeps_a_grayscale_file_gray(natural_rgb, pillow_jpeg, tmp_path, capsys):
    gray = np.asarray(Image.fromarray(natural_rgb(30, 44)).convert("L"))
    jpeg = tmp_path / "in.jpg"
    jpeg.write_bytes(pillow_jpeg(gray, quality=40))
    blurred = np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(1)))
    Image.fromarray(blurred).save(tmp_path / "restored8.png")
    Image.fromarray(blurred.astype(np.uint16) * 257).save(tmp_path / "restored16.png")  # was read as white
    before = []
    for bits in (8, 16):
        output = tmp_path / f"out{bits}.png"
        assert main(["project", str(jpeg), str(tmp_path / f"restored{bits}.png"), "-o", str(output)]) == 0
        before.append(json.loads(capsys.readouterr().out)["coefficient_agreement_before"])
    assert before[0] == before[1] < 1.0  # the same pixels
    assert (tmp_path / "out8.png").read_bytes() == (tmp_path / "out16.png").read_bytes()
    saved = Image.open(output)
    assert saved.mode == "L"
    pixels = torch.from_numpy(np.array(saved))[None].float() / 255
    assert pj.metrics.coefficient_agreement(pixels, pj.read_jpeg(str(jpeg))).coefficients == 1.0


def test_project_refuses_a_size_mismatch(natural_rgb, pillow_jpeg, tmp_path, capsys):
    jpeg = tmp_path / "in.jpg"
    jpeg.write_bytes(pillow_jpeg(natural_rgb(30, 44), quality=40))
    other = tmp_path / "other.png"
    Image.fromarray(natural_rgb(44, 30)).save(other)
    assert main(["project", str(jpeg), str(other), "-o", str(tmp_path / "o.png")]) == 1
    assert "differs" in capsys.readouterr().err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["project", "--help"])
    assert "reproduces the file's" in capsys.readouterr().out


@pytest.mark.parametrize("output, reason", [
    ("nodir/sub/o.png", "no folder nodir/sub to write it into"),
    (".", "is a folder; name the PNG to write"),
    ("o.jpg", "the projection is written as a PNG; name it .png"),
    ("/proc/o.png", "cannot write it"),
])
def test_project_output_mistakes_are_one_line_with_exit_2(natural_rgb, pillow_jpeg, tmp_path, capsys, monkeypatch,
                                                          output, reason):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jpg").write_bytes(pillow_jpeg(natural_rgb(16, 16), quality=40))
    Image.open(tmp_path / "in.jpg").save(tmp_path / "restored.png")
    assert main(["project", "in.jpg", "restored.png", "-o", output]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"project: error: -o {output}: ") and reason in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jpg", "restored.png"]
