"""`sweep`: the perception-consistency sweep over lambda_C (also `python -m posterior_jpeg.sweep`); named
for what it sweeps, since `sweep` is the job's module."""

from .common import configure_config_command

NAME = "sweep"
HELP = "perception-consistency sweep over lambda_C: FID vs consistency plot and table"
DESCRIPTION = ("Train (or take) one model per lambda_C value or schedule, evaluate each, and plot FID "
               "against consistency RMSE (same as python -m posterior_jpeg.sweep). Resumable.")


def configure(parser):
    return configure_config_command(parser, DESCRIPTION, "configs/sweep_consistency.yaml", run)


def run(args) -> int:
    from ..sweep import run_command  # torch: after parsing

    return run_command(args.config, args.overrides, "posterior-jpeg sweep", args.print_config)
