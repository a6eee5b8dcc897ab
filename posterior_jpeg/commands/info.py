"""`info`: what a JPEG stores, one JSON line per file."""

import argparse
import json
import sys

NAME = "info"
HELP = "print what a JPEG stores (one JSON line per file)"


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = "Print size, sampling, progressive flag, EXIF orientation of JPEG files."
    parser.add_argument("files", nargs="+", metavar="FILE")
    parser.add_argument("--tables", action="store_true", help="include the quantization tables")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import PosteriorJpegError
    from ..jpeg.file import read_jpeg  # torch: after parsing

    failed = 0
    for path in args.files:
        try:
            jf = read_jpeg(path)
        except PosteriorJpegError as error:
            print(error, file=sys.stderr)
            failed += 1
            continue
        record = {
            "file": path,
            "height": jf.height,
            "width": jf.width,
            "sampling": jf.sampling,
            "progressive": jf.progressive,
            "orientation": jf.orientation,
            "icc_profile_bytes": len(jf.icc_profile or b""),
            "qtables": jf.qtables.tolist() if args.tables else None,
        }
        print(json.dumps({k: v for k, v in record.items() if v is not None}))
    return 1 if failed else 0
