"""`project`: make any restoration of a JPEG consistent with its file."""

import argparse
import json
import sys
from pathlib import Path

NAME = "project"
HELP = "make an image consistent with a JPEG file"


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Project IMAGE (any restoration of JPEG, same size) onto the file: the saved PNG, "
                          "compressed again by libjpeg with the file's tables and sampling, reproduces the file's "
                          "coefficients. Prints the agreement before and after.")
    parser.add_argument("jpeg", metavar="JPEG", help="the JPEG file")
    parser.add_argument("image", metavar="IMAGE", help="a restoration of it (PNG, ...), same size")
    parser.add_argument("-o", "--output", required=True, help="where to write the projected PNG (a .png name)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.set_defaults(run=run)
    return parser


def output_error(output: str, overwrite: bool) -> str | None:
    """Why the projected PNG cannot be written at `output`, or None: found before torch loads."""
    path = Path(output)
    if path.is_dir():
        return f"-o {output}: is a folder; name the PNG to write"
    if path.suffix.lower() != ".png":
        return f"-o {output}: the projection is written as a PNG; name it .png"
    if not path.parent.is_dir():
        return f"-o {output}: no folder {path.parent} to write it into"
    if path.exists() and not overwrite:
        return f"-o {output}: exists (pass --overwrite to replace it)"
    return None


def run(args: argparse.Namespace) -> int:
    problem = output_error(args.output, args.overwrite)
    if problem is not None:
        print(f"project: error: {problem}", file=sys.stderr)
        return 2
    import numpy as np  # torch and numpy: after parsing

    from ..data import read_rgb
    from ..errors import PosteriorJpegError
    from ..export import write_png
    from ..jpeg.file import read_jpeg
    from ..jpeg.projection import project
    from ..jpeg.subsampling import GRAY
    from ..metrics import coefficient_agreement, eight_bit_consistency
    from ..pixels import to_chw_float, to_hwc_uint8

    try:
        jf = read_jpeg(args.jpeg)
        image = read_rgb(args.image)
    except PosteriorJpegError as error:
        print(error, file=sys.stderr)
        return 1
    if (image.height, image.width) != jf.size:
        print(f"{args.image}: size {image.width}x{image.height} differs from {args.jpeg} "
              f"({jf.width}x{jf.height}); pass the image in the file's stored orientation", file=sys.stderr)
        return 1
    candidate = to_chw_float(np.array(image))
    before = coefficient_agreement(candidate, jf)
    projected = project(candidate, jf)
    if jf.sampling == GRAY:  # grayscale in, grayscale out
        projected = projected[:1]
    after = eight_bit_consistency(projected, jf)
    try:
        write_png(to_hwc_uint8(projected), Path(args.output), jf.icc_profile)
    except OSError as error:
        print(f"project: error: -o {args.output}: cannot write it ({error.strerror or error})", file=sys.stderr)
        return 2
    print(json.dumps({
        "output": args.output,
        "coefficient_agreement_before": before.coefficients,
        "coefficient_agreement_after": after.agreement.coefficients,
        "block_agreement_after": after.agreement.blocks,
        "consistency_rmse_after": after.rmse.item(),
    }))
    return 0
