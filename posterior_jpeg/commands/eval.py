"""`eval`: FID, consistency, PSNR, LPIPS and diversity of decoders (also `python -m posterior_jpeg.evaluate`)."""

from .common import configure_config_command

NAME = "eval"
HELP = "FID, consistency, PSNR, LPIPS and diversity of decoders (CSV, JSON, markdown)"
DESCRIPTION = ("Evaluate checkpoints and baselines on test images at each quality and subsampling "
               "(same as python -m posterior_jpeg.evaluate). Runs under torchrun / accelerate launch too.")


def configure(parser):
    return configure_config_command(parser, DESCRIPTION, "configs/eval.yaml", run)


def run(args) -> int:
    from ..evaluate import run_command  # torch: after parsing

    return run_command(args.config, args.overrides, "posterior-jpeg eval", args.print_config)
