"""`pack`: an image folder (or a list of files) into tar shards for training (`data.train`)."""

import argparse
import json
import re
import sys
from pathlib import Path

NAME = "pack"
HELP = "pack an image folder or a list of files into tar shards for training"
DESCRIPTION = """\
Pack the images of SRC (a folder, searched recursively, or a text file naming one image per line,
relative names taken from its folder) into OUT/PREFIX-000000.tar, OUT/PREFIX-000001.tar, ... (tar
shards in WebDataset layout: members NUMBER.EXT, each file's bytes unchanged) and OUT/PREFIX-index.json
(the image count of each shard). Then train with data.train=OUT (or OUT/PREFIX-{000000..000012}.tar).

    posterior-jpeg pack photos/ shards/ --shard-size 256MB
"""
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def shard_size(text: str) -> int:
    """'256MB', '1GiB', '500000' -> bytes (argparse type: a bad size is a usage error at once)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: write a size such as 256MB, 1GB or 512MiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 10**5:
        raise argparse.ArgumentTypeError(f"{text!r}: shards under 100KB would hold an image or two each")
    return size


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("source", metavar="SRC", help="image folder, or a text file with one image path per line")
    parser.add_argument("out", metavar="OUT", help="folder to write the shards and the index into")
    parser.add_argument("--shard-size", type=shard_size, default="256MB",
                        help="bytes per shard, about (default 256MB; units B, KB, MB, GB, KiB, MiB, GiB)")
    parser.add_argument("--prefix", default="train", help="shard names PREFIX-000000.tar ... (default train)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order in which images fill the shards")
    parser.add_argument("--keep-order", action="store_true",
                        help="fill the shards in the sorted folder's (or the list's) order instead")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*", args.prefix) or re.search(r"-\d+$", args.prefix):
        print(f"pack: error: --prefix {args.prefix!r}: use letters, digits, '_', '.' and '-' (not ending in "
              "-NUMBER, which shard names add)", file=sys.stderr)
        return 2
    source, out = Path(args.source), Path(args.out)
    if not source.exists():
        print(f"pack: error: {source}: no such folder or file", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"pack: error: {out}: exists and is not a folder", file=sys.stderr)
        return 2
    from ..data import list_images  # numpy, Pillow (and torch): after parsing
    from ..errors import PosteriorJpegError
    from ..packing import files_of_list, pack

    try:
        files = list_images(source) if source.is_dir() else files_of_list(source)
        summary = pack(files, out, args.prefix, args.shard_size, None if args.keep_order else args.seed,
                       progress=not args.quiet)
    except (PosteriorJpegError, OSError) as error:
        print(f"pack: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0
