"""`eval`: FID, consistency, PSNR, LPIPS and diversity of decoders (the job: posterior_jpeg.evaluate)."""

from .common import job_command

NAME = "eval"
HELP = "FID, consistency, PSNR, LPIPS and diversity of decoders (CSV, JSON, markdown)"
configure = job_command(NAME, "Evaluate checkpoints and baselines on test images at each quality and subsampling. "
                        "Runs under torchrun -m posterior_jpeg eval / accelerate launch too.",
                        "configs/eval.yaml", "evaluate")
