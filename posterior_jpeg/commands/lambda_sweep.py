"""`sweep`: the perception-consistency sweep over lambda_C (the job: posterior_jpeg.sweep); named for
what it sweeps, since `sweep` is the job's module."""

from .common import job_command

NAME = "sweep"
HELP = "perception-consistency sweep over lambda_C: FID vs consistency plot and table"
configure = job_command(NAME, "Train (or take) one model per lambda_C value or schedule, evaluate each, and plot FID "
                        "against consistency RMSE. Resumable.", "configs/sweep_consistency.yaml", "sweep")
