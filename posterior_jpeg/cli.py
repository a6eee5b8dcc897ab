"""The `posterior-jpeg` command: inspect JPEG files and make any restoration consistent with its file."""

import argparse
import json
import os
import sys
from pathlib import Path

from .arguments import add_config_arguments, configure_sample
from .errors import PosteriorJpegError


def _info(args) -> int:
    from .jpeg.file import read_jpeg  # torch: after parsing

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


def _project(args) -> int:
    import numpy as np  # torch and numpy: after parsing

    from .data import read_rgb
    from .jpeg.file import read_jpeg
    from .jpeg.projection import project
    from .jpeg.subsampling import GRAY
    from .metrics import coefficient_agreement, eight_bit_consistency
    from .pixels import to_chw_float, to_hwc_uint8
    from .sample_cli import write_png

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
    if os.path.exists(args.output) and not args.overwrite:
        print(f"{args.output}: exists (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    candidate = to_chw_float(np.array(image))
    before = coefficient_agreement(candidate, jf)
    projected = project(candidate, jf)
    if jf.sampling == GRAY:  # grayscale in, grayscale out
        projected = projected[:1]
    after = eight_bit_consistency(projected, jf)
    pixels = to_hwc_uint8(projected)
    write_png(pixels, Path(args.output), jf.icc_profile)
    print(json.dumps({
        "output": args.output,
        "coefficient_agreement_before": before.coefficients,
        "coefficient_agreement_after": after.agreement.coefficients,
        "block_agreement_after": after.agreement.blocks,
        "consistency_rmse_after": after.rmse.item(),
    }))
    return 0


def _eval(args) -> int:
    from .evaluate import run_command

    return run_command(args.config, args.overrides, "posterior-jpeg eval", args.print_config)


def _sweep(args) -> int:
    from .sweep import run_command

    return run_command(args.config, args.overrides, "posterior-jpeg sweep", args.print_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posterior-jpeg",
        description="Stochastic JPEG decoding with outputs exactly consistent with the file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print what a JPEG stores (one JSON line per file)",
                               description="Print size, sampling, progressive flag, EXIF orientation of JPEG files.")
    info.add_argument("files", nargs="+", metavar="FILE")
    info.add_argument("--tables", action="store_true", help="include the quantization tables")
    info.set_defaults(run=_info)
    proj = commands.add_parser(
        "project",
        help="make an image consistent with a JPEG file",
        description="Project IMAGE (any restoration of JPEG, same size) onto the file: the saved PNG, "
        "compressed again by libjpeg with the file's tables and sampling, reproduces the file's "
        "coefficients. Prints the agreement before and after.",
    )
    proj.add_argument("jpeg", metavar="JPEG", help="the JPEG file")
    proj.add_argument("image", metavar="IMAGE", help="a restoration of it (PNG, ...), same size")
    proj.add_argument("-o", "--output", required=True, help="where to write the projected PNG")
    proj.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    proj.set_defaults(run=_project)
    evaluation = commands.add_parser(
        "eval",
        help="FID, consistency, PSNR, LPIPS and diversity of decoders (CSV, JSON, markdown)",
        description="Evaluate checkpoints and baselines on test images at each quality and subsampling "
        "(same as python -m posterior_jpeg.evaluate). Runs under torchrun / accelerate launch too.",
    )
    add_config_arguments(evaluation, "configs/eval.yaml")
    evaluation.set_defaults(run=_eval)
    sweep = commands.add_parser(
        "sweep",
        help="perception-consistency sweep over lambda_C: FID vs consistency plot and table",
        description="Train (or take) one model per lambda_C value or schedule, evaluate each, and plot FID "
        "against consistency RMSE (same as python -m posterior_jpeg.sweep). Resumable.",
    )
    add_config_arguments(sweep, "configs/sweep_consistency.yaml")
    sweep.set_defaults(run=_sweep)
    configure_sample(commands.add_parser("sample", help="decode JPEG files into posterior samples (PNGs)"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
