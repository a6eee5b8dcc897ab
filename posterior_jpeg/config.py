"""Training configuration: OmegaConf structured configs (defaults <- YAML file <- key=value overrides).

Unknown keys and wrong types are errors, so a typo in a config or on the command line stops the run
before it starts instead of silently training something else.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import SYNTHETIC
from .errors import CheckpointError, PosteriorJpegError
from .losses import Schedule
from .models.discriminator import DiscriminatorConfig
from .models.generator import GeneratorConfig

STAGES = ("mmse", "posterior")
PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(PosteriorJpegError, ValueError):
    """A configuration that cannot be used, with the reason."""


@dataclass
class QualityConfig:
    """JPEG quality per training crop: "skewed" draws low + (high - low) * u**power (the paper's
    [5, 50] skewed to low qualities), "uniform" draws integers in [low, high]."""

    kind: str = "skewed"  # "skewed" or "uniform"
    low: int = 5  # lowest quality drawn (1..100)
    high: int = 50  # highest quality drawn; real-world files reach 95 and more
    power: float = 2.0  # skew: > 1 favours low qualities, 1 is uniform over the reals, < 1 favours high


@dataclass
class DataConfig:
    """Training crops, each compressed by libjpeg at its own drawn quality and subsampling."""

    train: str = MISSING  # required: an image folder (searched recursively), or "synthetic" (generated images)
    val: str | None = None  # image folder of the validation sheets; null: the training images
    crop: int = 128  # crop side in pixels, a multiple of 16
    quality: QualityConfig = field(default_factory=QualityConfig)  # quality per crop (QualityConfig)
    modes: list[str] = field(default_factory=lambda: ["4:2:0"])  # subsampling per crop, drawn from these
    double_share: float = 0.0  # share of crops saved twice: a first save, a 0-7 pixel shift, the final save
    flips: bool = True  # random horizontal and vertical flips
    workers: int = 2  # DataLoader worker processes; 0 loads in the training process
    cache_mb: int = 1024  # decoded training images kept per loading process (uint8); the rest decoded per crop

    def __post_init__(self):
        if not self.train:
            raise ConfigError(f"data.train must name an image folder or {SYNTHETIC!r}")
        if not 0.0 <= self.double_share <= 1.0:
            raise ConfigError(f"data.double_share must be in [0, 1], got {self.double_share}")
        if self.workers < 0 or self.cache_mb < 0:
            raise ConfigError("data.workers and data.cache_mb must be >= 0")


@dataclass
class LossConfig:
    """Weights of the posterior stage's objective, each a schedule over the run.

    consistency_kind: "pixel" (paper eq. 4) or "dct" (dead zone, 0 inside the intervals).
    moments_every: every this many steps, moment_images inputs get moment_samples draws each for the
    first moment (and, with an MMSE model, the second moment). second_moment_kind: "eq7" (the
    paper) or "std" (maximise per-pixel std, the authors' variant). perceptual needs vgg_weights:
    a VGG19 state-dict file, null for the torch hub cache, "random" for tests only."""

    adversarial: Schedule = field(default_factory=lambda: Schedule("constant", 1e-3, 1e-3))
    r1: Schedule = field(default_factory=lambda: Schedule("constant", 1.0, 1.0))
    r1_every: int = 4
    consistency: Schedule = field(default_factory=lambda: Schedule("cosine", 0.1, 10.0))
    consistency_kind: str = "pixel"
    first_moment: Schedule = field(default_factory=lambda: Schedule("constant", 0.1, 0.1))
    second_moment: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))
    second_moment_kind: str = "eq7"
    moments_every: int = 8
    moment_images: int = 8
    moment_samples: int = 16
    perceptual: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))
    vgg_weights: str | None = None


@dataclass
class OptimConfig:
    lr: Schedule = field(default_factory=lambda: Schedule("cosine", 1e-4, 1e-7))
    critic_lr: Schedule = field(default_factory=lambda: Schedule("cosine", 1e-4, 1e-7))
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])


@dataclass
class TrainConfig:
    """One training run. out_dir is the run folder: checkpoints, validation grids, TensorBoard logs.

    stage: "mmse" (L2 regression: the MMSE estimator and regression baseline) or "posterior" (GAN
    with all penalties). init_from: weights to start G from (e.g. the MMSE run). mmse_model: the
    frozen MMSE estimator xbar for the second moment. anchor: a noise-free MMSE checkpoint M (an
    mmse-stage run with generator.noise false): G becomes S(z, M(y, q), q), M frozen, only S (the
    `generator` section) trained, and M serves as eq. 7's xbar; init_from an anchored checkpoint
    then warm-starts S alone over this anchor. antithetic (anchored only): G = M + (S(z) - S(-z)) / 2,
    whose mean over z is M exactly (see AnchoredGenerator). resume: "auto" continues the run in out_dir
    if it has a checkpoint, a path resumes that checkpoint, null always starts fresh."""

    stage: str = "posterior"
    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 32
    grad_accumulation: int = 1
    mixed_precision: str = "no"
    device: str = "auto"
    seed: int = 0
    ema: float = 0.999
    channels_last: bool = False
    compile: bool = False
    log_every: int = 10
    val_every: int = 500
    val_images: int = 4
    val_quality: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = "auto"
    init_from: str | None = None
    mmse_model: str | None = None
    anchor: str | None = None
    antithetic: bool = False
    progress: bool = True
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    critic: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.loss.consistency_kind not in ("pixel", "dct"):
            raise ConfigError(f"loss.consistency_kind must be 'pixel' or 'dct', got {self.loss.consistency_kind!r}")
        if self.loss.second_moment_kind not in ("eq7", "std"):
            raise ConfigError(f"loss.second_moment_kind must be 'eq7' or 'std', got {self.loss.second_moment_kind!r}")
        if self.anchor and self.mmse_model:
            raise ConfigError("anchor and mmse_model are both set: an anchored G uses its anchor as eq. 7's xbar")
        if self.antithetic and not self.anchor:
            raise ConfigError("antithetic needs an anchor: it mirrors the detail network S around M")
        if self.anchor and self.stage != "posterior":
            raise ConfigError("anchor trains the detail network S: it needs stage posterior")
        if self.loss.moment_images > self.batch_size:
            raise ConfigError(f"loss.moment_images ({self.loss.moment_images}) exceeds batch_size ({self.batch_size})")
        if min(self.steps, self.batch_size, self.grad_accumulation, self.log_every, self.val_every,
               self.checkpoint_every, self.loss.r1_every, self.loss.moments_every) < 1:
            raise ConfigError("steps, batch_size, grad_accumulation and every *_every must be >= 1")


def read_yaml(path: str | Path) -> DictConfig:
    """A YAML config file as one mapping of keys to values, or a one-line ConfigError naming the file.

    Interpolations (`${...}`) are refused, not resolved: a resolver such as oc.env would copy
    environment values (tokens, paths) into a config that is saved beside checkpoints and shared."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML file (not UTF-8 text)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror or error})") from None
    try:
        node = OmegaConf.create(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {_reason(error)}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got a {type(node).__name__.removesuffix('Config').lower()}")
    refuse_interpolations(node, path)
    return node


def refuse_interpolations(node: DictConfig, source) -> None:
    """ConfigError for the first value that contains `${` (see read_yaml)."""

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{key}[{index}]")
        elif isinstance(value, str) and "${" in value:
            raise ConfigError(f"{source}: {key}: interpolations (${{...}}) are not supported, write the value itself")

    walk(OmegaConf.to_container(node, resolve=False), "")


def _reason(error: OmegaConfBaseException) -> str:
    """OmegaConf's message on one line, with the dotted key it concerns."""
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key and key not in message else message


def build_structured(schema, nodes: list, source):
    """Defaults of the dataclass `schema` <- each of `nodes` in turn -> a validated instance; unknown
    keys, wrong types and failed checks become one-line ConfigErrors that name `source`."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), *nodes))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source}: {_reason(error)}") from None
    except ValueError as error:  # a __post_init__ check (ConfigError is one)
        raise ConfigError(f"{source}: {error}") from None


def load_structured(schema, path: str | Path | None = None, overrides: list[str] = ()):
    """Defaults of the dataclass `schema` <- YAML file <- dotlist overrides -> a validated instance.
    Unknown keys, wrong types, interpolations and failed checks become one-line ConfigErrors."""
    nodes = [read_yaml(path)] if path is not None else []
    try:
        command_line = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"command line: {_reason(error)}") from None
    refuse_interpolations(command_line, "command line")
    return build_structured(schema, [*nodes, command_line], path or "config")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- dotlist overrides (["loss.r1_every=8", ...]) -> a validated TrainConfig."""
    return load_structured(TrainConfig, path, overrides)


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def add_config_arguments(parser, example: str) -> None:
    """The arguments every config-driven command takes: --config FILE and key=value overrides."""
    parser.add_argument("--config", help=f"YAML config ({example}); defaults when omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")


def parse_config_arguments(argv, prog: str | None, description: str, example: str):
    """The command line of a config-driven script (train.py, evaluate, sweep): its docstring as
    --help, then --config FILE and key=value overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, example)
    return parser.parse_args(argv)


def run_with_config(program: str, load, action, path: str | None, overrides: list[str]) -> int:
    """Load a config and run `action(cfg)`, as a command line does: exit status 0, 2 for a config or
    a checkpoint that cannot be used, 1 for a job that failed with one of our errors (one line on
    stderr each)."""
    try:
        cfg = load(path, overrides)
        action(cfg)
    except (ConfigError, CheckpointError) as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 2
    except PosteriorJpegError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 1
    return 0
