"""Pages to look at results in a browser, with no server and no network: the explorer of a sample run
(OUT/index.html: flip through each file's samples, zoom into one region of every view at once) and
the result pages of evaluation jobs and sweeps (tables, plots, per-image crops).

Each page is one HTML file with its CSS and JavaScript inline; images are files beside it, named by
relative paths, so a folder can be copied, zipped or served as it is. The overview shows small JPEG
thumbnails (loaded lazily, as they scroll into view); the full images load only when a file is
opened, so a run of 100 files x 8 samples opens as fast as one of a single file."""

import html
import io
import json
import re
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from PIL import Image, ImageOps

from .atomic import Folder, write_atomically
from .manifest import read_manifest
from .pixels import to_hwc_uint8

PAGE = "index.html"
THUMBS = "thumbs"  # sub-folder of thumbnails
THUMB_SIZE = 192  # pixels, long side
CROPS = "crops"  # sub-folder of an evaluation's per-image crops, with crops.json listing them
CROP_IMAGES = 4  # test images per setting shown as crops
CROP_SIZE = 128  # pixels, side of the centre crop
SUMMARY_VIEWS = ("mean", "mmse", "std")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("explorer_assets", name).read_text(encoding="utf-8")


def _url(relative: str) -> str:
    """A relative path as an attribute value: every character that HTML or URLs treat specially escaped."""
    return html.escape(quote(relative), quote=True)


def _script_json(data: dict) -> str:
    """JSON to put inside a <script> element. With <, > and & as \\u escapes no text in it ("</script>",
    "<!--<script>") can move the HTML parser out of the element or into its escaped states; json.dumps
    (ensure_ascii) writes U+2028 and U+2029 as \\u escapes already."""
    return json.dumps(data).translate({ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"})


def _page(title: str, body: str, data: dict | None = None) -> str:
    script = ""
    if data is not None:
        script = f'<script type="application/json" id="explorer-data">{_script_json(data)}</script>\n'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request
        f"<title>{html.escape(title)}</title>\n<style>\n{_asset('explorer.css')}</style>\n</head>\n<body>\n"
        f"{body}\n{script}<script>\n{_asset('explorer.js')}</script>\n</body>\n</html>\n"
    )


def _thumbnail(source: Path, thumbs: Folder) -> str:
    """The relative path of a small JPEG of `source` in `thumbs`, made unless it is newer."""
    name = f"{source.name}.jpg"
    found = thumbs.lstat(name)
    if found is None or found.st_mtime < source.stat().st_mtime:
        with Image.open(source) as image:
            small = image.convert("RGB")
        small.thumbnail((THUMB_SIZE, THUMB_SIZE))
        thumbs.write(name, _encoded(small, format="JPEG", quality=85))
    return f"{THUMBS}/{name}"


def _encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


_FIELD_TYPES = {"output": str, "input": str, "input_sha256": str, "kind": str, "seed": int, "checkpoint": str,
                "written_consistency": str, "format": str, "coefficient_agreement": (int, float),
                "block_agreement": (int, float), "consistency_rmse": (int, float), "seconds": (int, float)}


def _well_formed(record) -> bool:
    """A manifest record the page can use: an object with an output and an input, each field the
    page reads of its type (or absent, or null where optional)."""
    if not (isinstance(record, dict) and isinstance(record.get("output"), str) and isinstance(record.get("input"), str)):
        return False
    return all(record.get(key) is None or (isinstance(record[key], kind) and not isinstance(record[key], bool))
               for key, kind in _FIELD_TYPES.items())


def _input_decode(source: Path, out: Folder, name: str) -> bool:
    """Write libjpeg's decode of `source` (through Pillow), upright as the samples are and with its
    ICC profile, as `name` in `out` unless it exists; False when the input cannot be read any more."""
    if out.lstat(name) is not None:
        return True
    try:
        with Image.open(source) as image:
            upright = ImageOps.exif_transpose(image.convert("RGB"))
            icc_profile = image.info.get("icc_profile")
    except (OSError, SyntaxError, ValueError):
        return False
    out.write(name, _encoded(upright, format="PNG", icc_profile=icc_profile))
    return True


FIGURES = ("seed", "written_consistency", "coefficient_agreement", "block_agreement", "consistency_rmse",
           "seconds", "format")


def sample_page_data(out: Folder, thumbs: Folder) -> dict:
    """What the explorer shows, from the manifest: per input file, keyed by its path and content
    (sha256) so that one OUT can hold runs of different folders, in order of first appearance: the
    outputs whose latest record is of that input and that exist in `out` (samples sorted by seed;
    the sample-mean, posterior-mean (mmse) and std views), and its input decode (thumbnails made in `thumbs`)."""
    folder = out.path
    records = [record for record in read_manifest(out)[0] if _well_formed(record)]
    latest = {Path(r["output"]).name: r for r in records}
    by_input: dict[tuple, dict[str, dict]] = {(r["input"], r.get("input_sha256")): {} for r in records}
    for name, record in latest.items():
        if (folder / name).is_file():
            by_input[record["input"], record.get("input_sha256")][name] = record
    files, checkpoints = [], set()
    for (source, input_sha256), outputs in by_input.items():
        samples = sorted((r for r in outputs.values() if r.get("kind", "sample") == "sample" and r.get("seed") is not None),
                         key=lambda r: r["seed"])
        if not samples:
            continue
        stem = Path(source).stem
        first = folder / Path(samples[0]["output"]).name
        with Image.open(first) as image:
            width, height = image.size
        views = {"input": None}
        decode = folder / (f"{stem}_input_{input_sha256[:12]}.png" if input_sha256 else f"{stem}_input.png")
        if _input_decode(Path(source), out, decode.name):
            views["input"] = decode
        for kind in SUMMARY_VIEWS:
            views[kind] = next((folder / name for name, r in outputs.items() if r.get("kind") == kind), None)
        checkpoints.add(samples[0].get("checkpoint", ""))
        files.append({
            "name": Path(source).name,
            "input": source,
            "width": width,
            "height": height,
            "views": {kind: quote(path.name) if path else None for kind, path in views.items()},
            "thumbs": {kind: quote(_thumbnail(path, thumbs)) for kind, path in views.items() if path},
            "samples": [{
                "image": quote(Path(r["output"]).name),
                "thumb": quote(_thumbnail(folder / Path(r["output"]).name, thumbs)),
                **{key: r.get(key) for key in FIGURES},
            } for r in samples],
        })
    return {"files": files, "checkpoints": sorted(checkpoints)}


def _figure(kind: str, label: str, thumb: str, sample: int, width: int, height: int) -> str:
    return (f'<figure><img src="{html.escape(thumb)}" loading="lazy" width="{width}" height="{height}" '
            f'alt="{html.escape(label)}" data-sample="{sample}" data-kind="{kind}">'
            f"<figcaption>{html.escape(label)}</figcaption></figure>")


def _card(index: int, file: dict) -> str:
    """One overview card: name, figures, and thumbnails that open the viewer."""
    samples = file["samples"]
    agreements = [s["coefficient_agreement"] for s in samples if s.get("coefficient_agreement") is not None]
    levels = sorted({s.get("written_consistency") or "-" for s in samples})
    seconds = [s["seconds"] for s in samples if s.get("seconds") is not None]
    summary = [f"{file['width']}x{file['height']}", f"{len(samples)} sample(s)", f"consistency: {', '.join(levels)}"]
    if agreements:
        summary.append(f"lowest coefficient agreement {min(agreements):.6f}")
    if seconds:
        summary.append(f"{sum(seconds) / len(seconds):.2f} s per sample")
    scale = THUMB_SIZE / max(file["width"], file["height"])
    width, height = max(1, round(file["width"] * scale)), max(1, round(file["height"] * scale))
    thumbs = file["thumbs"]
    figures = [_figure("input", "input (libjpeg)", thumbs["input"], 0, width, height)] if "input" in thumbs else []
    figures += [_figure("sample", f"seed {s['seed']}", s["thumb"], i, width, height) for i, s in enumerate(samples)]
    figures += [_figure(kind, kind, thumbs[kind], 0, width, height) for kind in SUMMARY_VIEWS if kind in thumbs]
    return (f'<section class="card" data-file="{index}"><h2><a href="#" data-sample="0">{html.escape(file["name"])}</a></h2>'
            f'<div class="dim">{html.escape(" · ".join(summary))}</div>'
            f'<div class="strip">{"".join(figures)}</div></section>')


VIEWER = """<div id="viewer" hidden>
<div class="toolbar">
<span class="title"></span>
<button data-action="previous-file" title="previous file (Up, PageUp)">&#9650; file</button>
<button data-action="next-file" title="next file (Down, PageDown)">file &#9660;</button>
<button data-action="previous-sample" title="previous sample (Left)">&#9664; sample</button>
<button data-action="next-sample" title="next sample (Right)">sample &#9654;</button>
<button data-action="zoom-out" title="zoom out (-)">&minus;</button>
<button data-action="zoom-in" title="zoom in (+)">+</button>
<button data-action="fit" title="whole image (0)">fit</button>
<button data-action="actual" title="one image pixel per screen pixel (1)">1:1</button>
<span class="spacer"></span>
<span class="help">wheel or double-click: zoom &middot; drag: move &middot; every view follows</span>
<button data-action="close" title="back to the overview (Esc)">close</button>
</div>
<div class="views zoom-views">
<div class="view" data-kind="input"><h3><b>input</b> libjpeg decode</h3><div class="frame"><img alt="input decode"></div></div>
<div class="view" data-kind="sample"><h3>sample <b></b></h3><div class="frame"><img alt="sample"></div></div>
<div class="view" data-kind="mean"><h3><b>mean</b> of the samples</h3><div class="frame"><img alt="mean"></div></div>
<div class="view" data-kind="mmse"><h3><b>posterior mean</b> (mmse)</h3><div class="frame"><img alt="posterior mean"></div></div>
<div class="view" data-kind="std"><h3><b>std</b> per pixel (black 0, white &ge; 25 gray levels)</h3><div class="frame"><img alt="std map"></div></div>
</div>
<div class="strip" id="sample-strip"></div>
<table class="figures" id="figures"><thead><tr><th>sample</th><th>seed</th><th>written consistency</th>
<th>coef. agreement</th><th>block agreement</th><th>consistency RMSE</th><th>seconds</th><th>format</th></tr></thead>
<tbody></tbody></table>
</div>"""


def write_sample_page(folder: str | Path) -> Path:
    """Write folder/index.html for the sample run in `folder` (its manifest.jsonl and outputs), with
    the input decodes (<stem>_input_<sha256 prefix>.png) and thumbnails it needs; returns the page's path."""
    with Folder(folder) as out:
        with out.child(THUMBS) as thumbs:
            data = sample_page_data(out, thumbs)
        files = data["files"]
        samples = sum(len(f["samples"]) for f in files)
        intro = (f'<header class="top"><h1>posterior-jpeg explorer</h1><div class="dim">{len(files)} file(s), '
                 f"{samples} sample(s); model: {html.escape(', '.join(data['checkpoints']) or '-')}. Click a file or "
                 "a thumbnail to open it: Left / Right flip through its samples, Up / Down change files, the wheel "
                 "zooms into the same region of every view.</div></header>")
        cards = "\n".join(_card(i, f) for i, f in enumerate(files)) or '<p class="dim">No samples in this folder yet.</p>'
        out.write(PAGE, _page("posterior-jpeg explorer", f"{intro}\n{VIEWER}\n<main>\n{cards}\n</main>", data).encode())
        return out.path / PAGE


# ----------------------------------------------------------------------------- evaluations and sweeps
def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")


def _crop_group(row: dict, prefix: str = "") -> str:
    """One image's crops as a group of frames that zoom together."""
    views = []
    for crop in row["crops"]:
        width, height = crop["width"], crop["height"]
        views.append(f'<div class="view"><h3><b>{html.escape(crop["method"])}</b></h3>'
                     f'<div class="frame" style="aspect-ratio: {width} / {height}">'
                     f'<img src="{_url(prefix + crop["file"])}" loading="lazy" alt="{html.escape(crop["method"])}"></div></div>')
    first = row["crops"][0] if row["crops"] else {"width": 0, "height": 0}
    title = f"{row['setting']}: {row['image']} (centre {first['width']}x{first['height']} px)"
    return f'<div class="crops"><h3>{html.escape(title)}</h3><div class="views zoom-group">{"".join(views)}</div></div>'


def _header_list(header: dict, keys) -> str:
    items = []
    for key in keys:
        value = header.get(key)
        text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        items.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(text)}</dd>")
    return f'<dl class="header">{"".join(items)}</dl>'


def _table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="figures"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def centre_crop(image):
    """The centre CROP_SIZE x CROP_SIZE pixels (fewer where the image is smaller) of [..., H, W]."""
    height, width = image.shape[-2:]
    size_h, size_w = min(CROP_SIZE, height), min(CROP_SIZE, width)
    top, left = (height - size_h) // 2, (width - size_w) // 2
    return image[..., top : top + size_h, left : left + size_w]


def evaluation_crops(evaluation, folder: Path) -> list[dict]:
    """Centre crops of every method's output on the first CROP_IMAGES test images of each setting,
    as the evaluation kept them while it measured (`Runner.crops`: the outputs of repeat 0), written
    under folder/crops, listed in folder/crops/crops.json (which the sweep page reads) and returned."""
    rows = []
    with Folder(folder, create=True) as out, out.child(CROPS) as crops_folder:
        for setting, images in evaluation.crops.items():
            for index, image_name, outputs in images:
                crops = []
                for key, image in outputs:  # key None: the ground truth
                    name = "original" if key is None else key.name + (
                        f" ({key.checkpoint})" if key.checkpoint and len(evaluation.samplers) > 1 else "")
                    tag = "_original" if key is None else f"{key.checkpoint}_{key.method}"
                    file = f"{_tag(setting)}_{index}_{_tag(tag)}.png"
                    crops_folder.write(file, _encoded(Image.fromarray(to_hwc_uint8(image[0])), format="PNG"))
                    crops.append({"method": name, "file": f"{CROPS}/{file}", "width": image.shape[-1],
                                  "height": image.shape[-2]})
                rows.append({"setting": setting, "image": image_name, "crops": crops})
        crops_folder.write("crops.json", json.dumps(rows, indent=1).encode())
    return rows


def write_evaluation_page(evaluation, results: dict) -> Path:
    """Write out_dir/index.html for an evaluation: its settings, the results table and per-image
    crops of every method (made here, see evaluation_crops); returns the page's path."""
    from .report import results_table

    folder = Path(evaluation.cfg.out_dir)
    crops = evaluation_crops(evaluation, folder)
    header = results["header"]
    parts = ['<header class="top"><h1>posterior-jpeg evaluation</h1></header><main>']
    if header.get("random_feature_weights"):
        parts.append('<p class="warning">Random feature weights: FID / LPIPS values are NOT comparable to any '
                     "published number.</p>")
    parts.append(_header_list(header, [k for k in header if k != "random_feature_weights"]))
    if results.get("skipped"):
        parts.append(_table(["skipped file", "reason"], [[k, v] for k, v in results["skipped"].items()]))
    parts += ["<h2>Results</h2>", _table(*results_table(results["rows"])),
              '<p class="dim">Also as results.csv, results.json and results.md beside this page.</p>',
              "<h2>Per-image crops</h2>",
              '<p class="dim">Wheel or double-click zooms, a drag moves: every crop of a row follows.</p>']
    parts += [_crop_group(row) for row in crops]
    parts.append("</main>")
    page = folder / PAGE
    write_atomically(page, _page("posterior-jpeg evaluation", "\n".join(parts)).encode())
    return page


def write_sweep_page(result: dict, folder: str | Path) -> Path:
    """Write folder/index.html for a perception-consistency sweep (run_sweep's result, its out_dir):
    its table, plots, links to each evaluation's page, and per image one row of crops across the
    baselines and every point (read from each evaluation's crops.json)."""
    from .report import format_cell, sweep_columns

    folder = Path(folder)
    point_folders = {"baselines": folder / "baselines"}
    point_folders.update({r["point"]: folder / "points" / r["point"] for r in result["rows"]})
    point_folders = {name: path for name, path in point_folders.items() if path.is_dir()}
    header = result["header"]
    parts = ['<header class="top"><h1>posterior-jpeg perception-consistency sweep</h1></header><main>']
    if header.get("random_feature_weights"):
        parts.append('<p class="warning">Random feature weights: FID values are NOT comparable to any published number.</p>')
    parts.append(_header_list(header, ("test_images", "settings", "fid_features", "fid_reference", "fid_repeats", "seeds")))
    parts.append('<h2>FID against consistency</h2><div class="plots">')
    parts += [f'<img src="{_url(Path(p).relative_to(folder).as_posix())}" alt="sweep plot">' for p in result["plots"]]
    parts.append("</div><h2>Table</h2>")
    columns = sweep_columns()
    parts.append(_table(list(columns), [[format_cell(r.get(c), c) for c in columns] for r in result["rows"]]))
    links = []
    combined: dict[tuple[str, str], dict] = {}
    for name, evaluated in point_folders.items():
        relative = evaluated.relative_to(folder).as_posix()
        if (evaluated / PAGE).is_file():
            links.append(f'<a href="{_url(relative + "/" + PAGE)}">{html.escape(name)}</a>')
        listing = evaluated / CROPS / "crops.json"
        if not listing.is_file():
            continue
        for row in json.loads(listing.read_text()):
            group = combined.setdefault((row["setting"], row["image"]), {**row, "crops": []})
            for crop in row["crops"]:
                if name != "baselines" and crop["method"] == "original":
                    continue  # the baselines' evaluation shows it once
                method = crop["method"] if name == "baselines" else f"{name}: {crop['method']}"
                group["crops"].append({**crop, "method": method, "file": f"{relative}/{crop['file']}"})
    if links:
        parts.append(f'<p>Each evaluation\'s own page: {" · ".join(links)}</p>')
    if combined:
        parts.append("<h2>Per-image crops across the sweep</h2>")
        parts += [_crop_group(row) for row in combined.values()]
    parts.append("</main>")
    page = folder / PAGE
    write_atomically(page, _page("posterior-jpeg sweep", "\n".join(parts)).encode())
    return page
