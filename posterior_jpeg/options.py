"""What a command hands its job, torch-free: the typed options of the sample command and the
constants that its parser and the job both need. Commands (above) build these; jobs (below) read
them; neither imports the other's module."""

from dataclasses import dataclass

FORMATS = ("png", "png16", "webp", "jpeg")  # what the sample job writes (export.py)
DEFAULT_QUALITY = 90  # of lossy exports
SEED_LIMIT = 2**64  # seeds are 64-bit: SEED + N - 1 must stay below
MAX_GRID_SAMPLES = 64  # samples one contact sheet (--grid) holds, all of them in memory at once
MAX_SUMMARY_SAMPLES = 100_000  # samples a --sample-mean or --std record lists by seed


@dataclass(frozen=True)
class SampleOptions:
    """One run of the sample command, as parsed (see `commands.sample` for each option's meaning)."""

    inputs: list[str]
    samples: int
    out: str
    seed: int
    checkpoint: str | None
    no_project: bool
    sample_mean: bool
    posterior_mean: bool
    std: bool
    grid: bool
    device: str
    dtype: str
    tile: int
    posterior_mean_flips: int
    recursive: bool
    overwrite: bool
    quiet: bool
    strict: bool
    html: bool
    format: str
    quality: int | None
    metadata: str
