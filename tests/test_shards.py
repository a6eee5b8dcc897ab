"""Tar shards: `pack` writes them, the data pipeline reads them back in an epoch order that depends
on (seed, counter) alone, split by rank and worker, resumable exactly; bad input is one clear line."""

import json
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from jpeg_fuzz import REALFILES
from posterior_jpeg import checkpoints
from posterior_jpeg.commands import main
from posterior_jpeg.config import ConfigError, load_config
from posterior_jpeg.data import JpegCropDataset, QualityDistribution, list_images, make_loader, open_images, read_image, read_rgb
from posterior_jpeg.errors import DataError
from posterior_jpeg.packing import files_of_list, pack
from posterior_jpeg.shards import EpochOrder, Shards, expand_pattern, open_shards, pattern_error
from posterior_jpeg.training import Trainer, train

ROOT = Path(__file__).resolve().parents[1]
CROP = 32
COLOURS = 24
# Shards of five colour images each: a member of a 40x40 one-colour PNG takes two tar blocks.
FIVE_PER_SHARD = 2 * tarfile.BLOCKSIZE + 5 * 2 * tarfile.BLOCKSIZE
REAL = [REALFILES / "cameras" / "Canon_40D.jpg", REALFILES / "turbo" / "testimgint.jpg",
        REALFILES / "pillow" / "exif_gps.jpg"]


@pytest.fixture
def colours(tmp_path) -> Path:
    """COLOURS one-colour 40x40 PNGs: image i has red 10 i, so any crop's x names its image."""
    folder = tmp_path / "colours"
    folder.mkdir()
    for i in range(COLOURS):
        Image.fromarray(np.full((40, 40, 3), (10 * i, 250 - 10 * i, 90), np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def colour_shards(folder: Path, out: Path) -> Shards:
    """The colour images in sorted order, five per shard (image i is shard i // 5's member i % 5)."""
    summary = pack(list_images(folder), out, shard_bytes=FIVE_PER_SHARD, seed=None, progress=False)
    assert summary == {"shards": 5, "images": COLOURS, "skipped": 0, "index": str(out / "train-index.json")}
    return open_shards(str(out))


def images_of(batch: dict) -> list[int]:
    return (batch["x"][:, 0, 0, 0] // 10).tolist()


def load(shards, **options) -> list[dict]:
    return list(make_loader(shards, CROP, QualityDistribution(), ("4:2:0",), seed=3, **options))


# --- packing and reading back --------------------------------------------------------------------


def test_shards_hold_the_folders_files_byte_for_byte(tmp_path, natural_rgb):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for seed, name in enumerate(["a.png", "sub/b.png", "c.bmp"]):
        Image.fromarray(natural_rgb(40 + 8 * seed, 48, seed)).save(folder / name)
    for path in (p for p in REAL if p.is_file()):  # files nobody here made
        (folder / path.name).write_bytes(path.read_bytes())
    files = list_images(folder)
    kept = packed_shards(files, tmp_path / "kept", seed=None)
    assert len(kept) == len(files)
    for index, path in enumerate(files):
        name, data = kept.read(index)
        assert data == path.read_bytes() and name.endswith(f"train-000000.tar:{index:08d}{path.suffix.lower()}")
        assert np.array_equal(np.asarray(read_image(kept, index)), np.asarray(read_rgb(path)))
    shuffled = packed_shards(files, tmp_path / "shuffled", seed=0)
    permutation = np.random.default_rng(0).permutation(len(files))
    assert [shuffled.read(i)[1] for i in range(len(files))] == [files[j].read_bytes() for j in permutation]
    packed_shards(files, tmp_path / "again", seed=0)  # the same files give the same bytes
    assert (tmp_path / "again" / "train-000000.tar").read_bytes() == (tmp_path / "shuffled" / "train-000000.tar").read_bytes()


def packed_shards(files, out, seed) -> Shards:
    pack(files, out, seed=seed, progress=False)
    return open_shards(str(out))


def test_shards_stay_under_their_size_and_the_index_counts_their_members(colours, tmp_path):
    limit = 3 * FIVE_PER_SHARD
    summary = pack(list_images(colours), tmp_path / "out", prefix="set", shard_bytes=limit, seed=1, progress=False)
    index = json.loads((tmp_path / "out" / "set-index.json").read_text())
    names = [shard["name"] for shard in index["shards"]]
    assert names == [f"set-{n:06d}.tar" for n in range(summary["shards"])] and summary["shards"] == 2
    assert index["images"] == COLOURS == sum(shard["images"] for shard in index["shards"])
    for shard in index["shards"]:
        path = tmp_path / "out" / shard["name"]
        assert path.stat().st_size <= limit + tarfile.RECORDSIZE  # tarfile pads the end to a record
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) == shard["images"]
    with tarfile.open(tmp_path / "out" / "set-000000.tar") as tar:  # WebDataset layout: KEY.EXT
        assert tar.getnames()[:2] == ["00000000.png", "00000001.png"]


def test_a_folder_and_a_pattern_name_the_same_shards(colours, tmp_path):
    shards = colour_shards(colours, tmp_path / "out")
    pattern = open_images(str(tmp_path / "out" / "train-{000001..000003}.tar"))
    assert isinstance(pattern, Shards) and pattern.counts.tolist() == [5, 5, 5]
    assert [pattern.read(i)[1] for i in range(15)] == [shards.read(i)[1] for i in range(5, 20)]
    assert open_images(str(tmp_path / "out" / "train-000004.tar")).counts.tolist() == [4]
    assert isinstance(open_images(str(colours)), list) and open_images("synthetic") is None
    assert [p.name for p in expand_pattern("d/x-{08..10}.tar")] == ["x-08.tar", "x-09.tar", "x-10.tar"]


def test_a_text_list_names_files_relative_to_itself(colours, tmp_path):
    (colours / "list.txt").write_text("03.png\n\n  01.png\n" + str(colours / "02.png") + "\n")
    assert files_of_list(colours / "list.txt") == [colours / "03.png", colours / "01.png", colours / "02.png"]
    assert main(["pack", str(colours / "list.txt"), str(tmp_path / "out"), "--keep-order", "--quiet"]) == 0
    shards = open_shards(str(tmp_path / "out"))
    assert [shards.read(i)[1] for i in range(3)] == [(colours / n).read_bytes() for n in ("03.png", "01.png", "02.png")]


# --- epoch order, ranks, workers, resume ---------------------------------------------------------


def test_each_epoch_visits_every_image_once_mixing_window_shards():
    counts = [5, 5, 5, 5, 4]
    order = EpochOrder(counts, window=2, seed=7)
    epochs = [[order(c) for c in range(e * 24, (e + 1) * 24)] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(24))
        segments, shards, size = [], set(), 0  # runs of positions that hold whole shards, and only them
        for image in epoch:
            shards.add(image // 5)
            size += 1
            if size == sum(counts[s] for s in shards):
                segments.append(shards)
                shards, size = set(), 0
        assert max(len(s) for s in segments) == 2 and len(segments) >= 3
    assert epochs[0] != epochs[1] != epochs[2]
    backwards = EpochOrder(counts, window=2, seed=7)  # a pure function of the counter: any query order
    assert [backwards(c) for c in reversed(range(72))] == [i for epoch in epochs for i in epoch][::-1]
    assert [EpochOrder(counts, window=2, seed=8)(c) for c in range(24)] != epochs[0]


def test_ranks_and_workers_split_every_epoch_without_overlap(colours, tmp_path):
    shards = colour_shards(colours, tmp_path / "out")
    seen = []
    for rank in range(2):  # one epoch: 2 ranks x 4 batches x 3 crops = 24 counters
        in_process = load(shards, batch_size=3, rank=rank, world_size=2, length=12)
        with_workers = load(shards, batch_size=3, rank=rank, world_size=2, length=12, workers=2)
        assert [images_of(b) for b in with_workers] == [images_of(b) for b in in_process]
        assert all(torch.equal(a["y"], b["y"]) for a, b in zip(in_process, with_workers))
        seen += [image for batch in with_workers for image in images_of(batch)]
    assert sorted(seen) == list(range(COLOURS))


def test_a_run_resumed_across_a_shard_boundary_sees_the_uninterrupted_samples(colours, tmp_path):
    shards = colour_shards(colours, tmp_path / "out")
    full = load(shards, batch_size=4, length=40, shard_window=1)  # 10 batches: past the end of epoch 0
    resume_at = 2  # batch 2 (counters 8-11) holds the end of the epoch's first or second shard
    assert len({image // 5 for image in images_of(full[0])}) == 1
    assert len({image // 5 for image in images_of(full[resume_at])}) == 2
    resumed = load(shards, batch_size=4, start_counter=4 * resume_at, length=40 - 4 * resume_at, shard_window=1)
    for a, b in zip(resumed, full[resume_at:], strict=True):
        assert images_of(a) == images_of(b)
        for key in ("x", "y", "qtables"):
            assert torch.equal(a[key], b[key]), key


def test_training_on_shards_resumes_exactly(colours, tmp_path, monkeypatch):
    """An MMSE run on shards, killed after its step-3 checkpoint and resumed, ends with the weights of
    the run that was never interrupted (24 counters: every shard boundary and an epoch's end)."""
    colour_shards(colours, tmp_path / "shards")

    def config(name):
        return load_config(ROOT / "configs" / "tiny.yaml", [
            f"out_dir={tmp_path / name}", "progress=false", "device=cpu", "stage=posterior_mean", "steps=8",
            "checkpoint_every=3", "val_every=1000", f"data.train={tmp_path / 'shards'}", "data.shard_window=2"])

    straight = train(config("straight"))
    original = Trainer.train_step

    def crash_at_step_5(self, batch):
        if self.step == 5:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"))
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = train(config("resumed"))
    a, b = (load_file(str(checkpoints.latest_checkpoint(run) / "generator.safetensors")) for run in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- errors --------------------------------------------------------------------------------------


def test_shard_sets_that_cannot_be_read_are_one_line_each(colours, tmp_path):
    out = tmp_path / "out"
    colour_shards(colours, out)
    (out / "extra.tar").write_bytes(b"")
    with pytest.raises(DataError, match="extra.tar: a .tar file that train-index.json does not list"):
        open_shards(str(out))
    (out / "extra.tar").unlink()
    (out / "other-index.json").write_text("{}")
    with pytest.raises(DataError, match="2 shard indexes here"):
        open_shards(str(out))
    with pytest.raises(DataError, match="other-index.json: not a shard index"):
        open_shards(str(out / "other-{000000..000001}.tar"))
    (out / "other-index.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the shard index"):
        open_shards(str(out / "other-000000.tar"))
    with pytest.raises(DataError, match="none-index.json: shard index not found"):
        open_shards(str(out / "none-{000000..000001}.tar"))
    with pytest.raises(DataError, match="train-000005.tar: not listed in"):
        open_shards(str(out / "train-{000003..000007}.tar"))
    (out / "train-000002.tar").unlink()
    with pytest.raises(DataError, match="train-000002.tar: shard not found"):
        open_shards(str(out / "train-{000000..000004}.tar"))


def test_a_shard_that_disagrees_with_its_index_stops_reading(colours, tmp_path):
    out = tmp_path / "out"
    colour_shards(colours, out)
    index = json.loads((out / "train-index.json").read_text())
    index["shards"][1]["images"] = 6
    (out / "train-index.json").write_text(json.dumps(index))
    shards = open_shards(str(out))
    shards.read(0)
    with pytest.raises(DataError, match="train-000001.tar: holds 5 images, its index says 6"):
        shards.read(5)


def test_an_image_that_does_not_decode_is_skipped_with_its_shard_and_member_named(colours, tmp_path):
    data = (colours / "03.png").read_bytes()
    (colours / "03.png").write_bytes(data[:60])  # a PNG header and then nothing: packed, not decodable
    shards = colour_shards(colours, tmp_path / "out")
    dataset = JpegCropDataset(shards, crop=CROP, shard_window=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [dataset[c] for c in range(COLOURS)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert messages[0].startswith(f"{tmp_path / 'out' / 'train-000000.tar'}:00000003.png: cannot read image")
    assert 3 not in [int(item["x"][0, 0, 0]) // 10 for item in items]


def test_pattern_and_window_mistakes_are_config_errors():
    assert pattern_error("d/train-{000000..000012}.tar") is None and pattern_error("d/train-000003.tar") is None
    for bad in ("d/train-{5..2}.tar", "d/train-{0..2}-{0..2}.tar", "d/train-{0..}.tar", "d/train.tar"):
        assert pattern_error(bad) is not None, bad
        with pytest.raises(ConfigError, match="data.train"):
            load_config(ROOT / "configs" / "tiny.yaml", [f"data.train={bad}"])
    with pytest.raises(ConfigError, match="data.shard_window"):
        load_config(ROOT / "configs" / "tiny.yaml", ["data.shard_window=0"])


def test_pack_reports_bad_input_in_one_line(colours, tmp_path, capsys):
    (colours / "broken.png").write_bytes(b"not an image")
    (colours / "list.txt").write_text("00.png\nnotes.txt\nmissing.png\n")
    assert main(["pack", str(colours), str(tmp_path / "out"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == COLOURS and summary["skipped"] == 1
    assert main(["pack", str(colours), str(tmp_path / "out"), "--quiet"]) == 1
    assert "train-000000.tar: exists" in capsys.readouterr().err
    assert main(["pack", str(colours / "list.txt"), str(tmp_path / "listed"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == 2
    assert "notes.txt: not an image name" in captured.err and "missing.png: cannot read it" in captured.err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"junk")
    assert main(["pack", str(tmp_path / "junk"), str(tmp_path / "none"), "--quiet"]) == 1
    assert "nothing packed" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert main(["pack", str(colours), str(tmp_path / "x"), "--prefix", "train-7"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "nowhere: no such folder" in errors[0] and "--prefix 'train-7'" in errors[1]
    for size in ("12", "lots", "5XB"):
        with pytest.raises(SystemExit) as exit_:
            main(["pack", str(colours), str(tmp_path / "x"), "--shard-size", size])
        assert exit_.value.code == 2
