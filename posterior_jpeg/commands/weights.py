"""`weights fetch DIR`: download the pretrained feature networks once, on a machine with internet, for
machines without it (compute nodes of clusters): then set weights.dir=DIR or $POSTERIOR_JPEG_WEIGHTS."""

import argparse
import sys

NAME = "weights"
HELP = "download the pretrained feature networks (FID Inception, VGG19, LPIPS backbones) into a folder"
# pretrained.FILES's keys, here so that the parser stays torch-free (a test checks they agree)
FILE_NAMES = ("inception", "vgg19", "alexnet", "vgg16")


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = ("Download pytorch-fid's FID Inception, torchvision's VGG19 (perceptual loss) and "
                          "the LPIPS backbones (alexnet, vgg16; LPIPS's linear layers ship with the lpips "
                          "package) into a folder, check each against the hash in its upstream file name, "
                          "and print each file's sha256. Files already there with the right hash are kept.")
    actions = parser.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="download into DIR and print sha256 sums")
    fetch.add_argument("dir", metavar="DIR", help="folder to fill (created if missing)")
    fetch.add_argument("--only", nargs="+", choices=FILE_NAMES, default=list(FILE_NAMES), metavar="NAME",
                       help=f"fetch only these ({', '.join(FILE_NAMES)}; default: all)")
    fetch.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import PosteriorJpegError
    from ..pretrained import ENVIRONMENT, fetch  # torch: after parsing

    try:
        fetched = fetch(args.dir, args.only)
    except PosteriorJpegError as error:
        print(f"weights: {error}", file=sys.stderr)
        return 1
    for path, digest in fetched:
        print(f"{digest}  {path}")
    print(f"weights: set weights.dir={args.dir} (or {ENVIRONMENT}={args.dir}) where they are used", file=sys.stderr)
    return 0
