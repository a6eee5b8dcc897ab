"""Training configuration: OmegaConf structured configs (defaults <- YAML file <- key=value overrides).

Unknown keys and wrong types are errors, so a typo in a config or on the command line stops the run
before it starts instead of silently training something else.
"""

import ast
import dataclasses
import inspect
import io
import math
import os
import sys
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from accelerate.tracking import LOGGER_TYPE_TO_CLASS
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data import CROP_MULTIPLE, SHARD_WINDOW, SYNTHETIC, WRITABLE_MODES, QualityDistribution
from .errors import CheckpointError, ConfigError, PosteriorJpegError, SymlinkError, TrainingStopped, warn_renamed
from .losses import SCHEDULE_KINDS, Schedule, variants
from .precision import PRECISIONS
from .pretrained import WeightsConfig
from .shards import pattern_error
from .models import registry
from .models.critic import FINAL_SIZE, CriticConfig
from .models.generator import TRUNKS, GeneratorConfig
from .models.spread import FITTED, SpreadConfig

STAGES = ("posterior_mean", "posterior", "spread")
TRACKERS = (*LOGGER_TYPE_TO_CLASS, "none")  # Accelerate's experiment trackers, or none


@dataclass
class DataConfig:
    """Training crops, each compressed by libjpeg at its own drawn quality and subsampling."""

    train: str = MISSING  # required: an image folder (searched recursively), shards of `posterior-jpeg pack` (their folder, or DIR/PREFIX-{000000..000012}.tar), or "synthetic" (generated images)
    val: str | None = None  # images of the validation sheets (a folder or shards, as train); null: the training images
    crop: int = 128  # crop side in pixels, a multiple of 16
    quality: QualityDistribution = field(default_factory=QualityDistribution)  # JPEG quality distribution of the crops
    modes: list[str] = field(default_factory=lambda: ["4:2:0"])  # subsampling per crop, drawn from these
    double_share: float = 0.0  # share of crops saved twice: a first save, a 0-7 pixel shift, the final save
    flips: bool = True  # random horizontal and vertical flips
    workers: int = 2  # DataLoader worker processes; 0 loads in the training process
    cache_mb: int = 1024  # decoded training images kept per loading process (uint8); the rest decoded per crop
    shard_window: int = SHARD_WINDOW  # shards only: each epoch shuffles the images of this many shards together (more mixes batches more, reads wider)

    def __post_init__(self):  # each key's own range: TRAIN_RULES
        if not self.train:
            raise ConfigError(f"data.train must name an image folder, shards or {SYNTHETIC!r}")
        for key, spec in (("train", self.train), ("val", self.val)):  # a pattern's form; its files: when the run starts
            problem = pattern_error(spec) if spec and spec.endswith(".tar") else None
            if problem is not None:
                raise ConfigError(f"data.{key}={spec!r}: {problem}")


@dataclass
class LossConfig:
    """Weights of the posterior stage's objective, each a schedule over the run, and what chooses
    between its terms (meanings: the comments, shown by --print-config). Each term, what it takes
    and which key weighs it: losses.TERMS; a weight here is checked as a schedule by its type alone."""

    adversarial: Schedule = field(default_factory=lambda: Schedule("constant", 1e-3, 1e-3))  # weight of the critic's (non-saturating) loss for G
    r1: Schedule = field(default_factory=lambda: Schedule("constant", 1.0, 1.0))  # R1 gradient penalty weight (gamma) on real images
    r1_every: int = 4  # apply R1 every this many steps (lazy regularisation, scaled up to match)
    consistency: Schedule = field(default_factory=lambda: Schedule("cosine", 0.1, 10.0))  # lambda_C: weight of the consistency loss with the file
    consistency_kind: str = "pixel"  # "pixel" (paper eq. 4) or "dct" (dead zone: 0 inside the quantization intervals)
    first_moment: Schedule = field(default_factory=lambda: Schedule("constant", 0.1, 0.1))  # weight of the first-moment penalty (mean of samples near the target)
    second_moment: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))  # weight of the second-moment penalty (eq7 needs moment_posterior_mean or posterior_mean; std does not)
    second_moment_kind: str = "eq7"  # "eq7" (the paper) or "std" (maximise per-pixel std, the authors' variant)
    moments_every: int = 8  # every this many steps, the moment penalties run
    moment_images: int = 8  # inputs per moment step (at most batch_size)
    moment_samples: int = 16  # draws of G per moment input
    perceptual: Schedule = field(default_factory=lambda: Schedule("constant", 0.0, 0.0))  # weight of the VGG perceptual loss (0: off)
    vgg_weights: str | None = None  # VGG19 state-dict file for perceptual; null: from weights.dir; "random": tests only


@dataclass
class OptimConfig:
    lr: Schedule = field(default_factory=lambda: Schedule("cosine", 1e-4, 1e-7))  # learning rate of G over the run
    critic_lr: Schedule = field(default_factory=lambda: Schedule("cosine", 1e-4, 1e-7))  # learning rate of the critic over the run
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])  # Adam betas of both optimizers


@dataclass
class TrainConfig:
    """One training run; each key's meaning is the comment on its line (`train.py --print-config`).

    posterior_mean: a run of stage posterior_mean (generator.noise false), the posterior mean M; M
    stays frozen, the `generator` section describes S, and M serves as eq. 7's xbar; init_from an
    anchored checkpoint then warm-starts S alone over this M."""

    stage: str = "posterior"  # "posterior_mean" (L2 regression: the posterior mean M), "posterior" (GAN with all penalties) or "spread" (the spread network V alone, by Poisson deviance)
    out_dir: str = "runs/default"  # run folder: checkpoints, validation grids, metrics.jsonl, TensorBoard logs
    steps: int = 1000  # optimizer steps of the whole run
    batch_size: int = 32  # crops per micro-batch and process (a step: batch_size x grad_accumulation x processes)
    grad_accumulation: int = 1  # micro-batches accumulated per step
    mixed_precision: str = "auto"  # autocast precision: "auto" (bf16 on CUDA and on CPUs with native bf16 units, else fp32), "fp32" (none), "bf16" or "fp16"
    device: str = "auto"  # "auto" (the accelerator when present) or "cpu"
    seed: int = 0  # seed of initialisation, data order and noise
    ema_half_life_images: float = 22000.0  # training images (all processes) over which an old weight's share in the EMA copy of G that checkpoints publish halves
    channels_last: bool | None = None  # NHWC memory layout for the convolutions; null: with bf16 or fp16, not with fp32
    compile: bool = False  # torch.compile G's training forward (the critic stays eager: R1 differentiates it twice, which compiled graphs do not support)
    log_every: int = 10  # steps between log lines (console, metrics.jsonl and the tracker)
    log_with: str = "tensorboard"  # experiment tracker (Accelerate's): tensorboard (out_dir/logs), wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; none: metrics.jsonl only
    val_every: int = 500  # steps between validation grids (saved in out_dir/val and sent to the tracker)
    val_images: int = 4  # images per validation grid
    val_quality: int = 10  # JPEG quality of the validation inputs
    checkpoint_every: int = 500  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # checkpoints kept in out_dir; older ones are deleted (0: keep all)
    resume: str | None = "auto"  # "auto": continue the run in out_dir if it has a checkpoint; a path: that checkpoint; null: start fresh
    init_from: str | None = None  # weights to start G from (e.g. the posterior-mean run)
    moment_posterior_mean: str | None = None  # a posterior-mean run M, frozen, whose output is the second moment's xbar (eq. 7) for a G not built over M; named for that penalty, since posterior_mean builds G over M
    posterior_mean: str | None = None  # a posterior-mean run M (or an anchored model, for its M): G becomes S(z, M(y, q), q) and only S trains
    antithetic: bool = False  # anchored only: G = M + (S(z) - S(-z)) / 2, whose mean over z is M exactly
    progress: bool = True  # progress bar on the console
    generator: Any = registry.network_field("generator", GeneratorConfig)  # architecture of G: `arch` names it (default residual), the other keys are its arguments
    spread: Any = registry.network_field("spread", SpreadConfig, optional=True)  # anchored only: the spread network V (arch default band_spread), trained alone by stage spread, over S from init_from
    critic: Any = registry.network_field("critic", CriticConfig)  # architecture of the critic (arch default resnet)
    loss: LossConfig = field(default_factory=LossConfig)  # weights of the objective, each a schedule over the run
    data: DataConfig = field(default_factory=DataConfig)  # training crops
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizers
    weights: WeightsConfig = field(default_factory=WeightsConfig)  # pretrained feature networks (VGG19 for loss.perceptual)

    def __post_init__(self):  # what keys must satisfy together; each key's own range: TRAIN_RULES
        if self.mixed_precision not in ("auto", *PRECISIONS):
            renamed = " (written 'no' before: now 'fp32')" if self.mixed_precision in ("no", "False") else ""
            raise ConfigError(f"mixed_precision must be auto or one of {', '.join(PRECISIONS)}, "
                              f"got {self.mixed_precision!r}{renamed}")
        if self.posterior_mean and self.moment_posterior_mean:
            raise ConfigError("posterior_mean and moment_posterior_mean are both set: an anchored G uses its "
                              "posterior mean as eq. 7's xbar")
        if (self.mixed_precision == "fp16" and self.stage == "posterior"
                and self.loss.r1.start + self.loss.r1.end > 0):
            raise ConfigError("mixed_precision fp16 with R1 (loss.r1): the gradient penalty's gradients are not "
                              "loss-scaled and would underflow in fp16; use bf16 (no scaler needed) or fp32")
        if self.antithetic and not self.posterior_mean:
            raise ConfigError("antithetic needs posterior_mean: it mirrors the detail network S around M")
        if self.posterior_mean and self.stage == "posterior_mean":
            raise ConfigError("posterior_mean (M's run) is for stage posterior (S over M) or spread (V over M); "
                              "stage posterior_mean trains M itself")
        if self.stage == "spread" and not (self.posterior_mean and self.spread and self.init_from):
            raise ConfigError("stage spread trains V over a finished model: it needs posterior_mean (M), init_from (S) "
                              "and a spread section")
        if self.spread is not None and not self.posterior_mean:
            raise ConfigError("spread needs posterior_mean: V predicts the spread around M")
        if self.loss.moment_images > self.batch_size:
            raise ConfigError(f"loss.moment_images ({self.loss.moment_images}) exceeds batch_size ({self.batch_size})")


# What each key's value must be on its own, checked over the whole merged config before anything is
# built, so that every violation is reported at once (one line each) and none surfaces later as a
# traceback, a NaN or an allocation that cannot succeed; what keys must satisfy together is checked by
# the dataclasses' __post_init__. Each rule: (test of the value, what is allowed, in words). The upper
# bounds on sizes are far above anything this project trains and keep a typo from trying to allocate
# terabytes.
def integer_in(low: int, high: int | None = None) -> tuple:
    return ((lambda v: low <= v and (high is None or v <= high)),
            f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}")


def real_in(low: float, high: float | None = None, above: bool = False) -> tuple:
    def test(value) -> bool:
        return math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)

    bounds = f"> {low:g}" if above else f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
    return test, f"a finite number {bounds}"


def one_of(choices) -> tuple:
    return (lambda v: v in choices), "one of " + ", ".join(map(str, choices))


def multiple_of(step: int, high: int) -> tuple:
    return (lambda v: 0 < v <= high and v % step == 0), f"a multiple of {step} in [{step}, {high}]"


def _schedule(key: str) -> dict:
    return {f"{key}.kind": one_of(SCHEDULE_KINDS), f"{key}.start": real_in(0), f"{key}.end": real_in(0)}


TRAIN_RULES = {
    "stage": one_of(STAGES),
    "steps": integer_in(1),
    "batch_size": integer_in(1),
    "grad_accumulation": integer_in(1),
    "device": one_of(("auto", "cpu")),
    "seed": integer_in(0, 2**32 - 1),  # numpy's seeds
    "ema_half_life_images": real_in(0, above=True),
    "log_every": integer_in(1),
    "log_with": one_of(TRACKERS),
    "val_every": integer_in(1),
    "val_images": integer_in(1, 64),
    "val_quality": integer_in(1, 100),
    "checkpoint_every": integer_in(1),
    "keep_checkpoints": integer_in(0),
    "generator.trunk": one_of(TRUNKS),
    "generator.features": integer_in(1, 1024),
    "generator.blocks": integer_in(1, 256),
    "generator.growth": integer_in(1, 1024),
    "generator.table_embedding": integer_in(0, 1024),
    "generator.full_res_features": integer_in(0, 1024),
    "critic.features": integer_in(1, 1024),
    "critic.max_features": integer_in(1, 4096),
    "critic.size": ((lambda v: v in {FINAL_SIZE * 2**k for k in range(11)}),
                    f"{FINAL_SIZE} times a power of two, at most {FINAL_SIZE * 2**10}"),
    "critic.detail_gain": real_in(0),
    **{rule: check for weight in dataclasses.fields(LossConfig) if weight.type is Schedule
       for rule, check in _schedule(f"loss.{weight.name}").items()},
    **{f"loss.{key}": one_of(values) for key, values in variants().items()},
    "loss.r1_every": integer_in(1),
    "loss.moments_every": integer_in(1),
    "loss.moment_images": integer_in(1),
    "loss.moment_samples": integer_in(2),  # a spread needs two draws
    **_schedule("optim.lr"),
    **_schedule("optim.critic_lr"),
    "optim.betas": ((lambda v: len(v) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in v)),
                    "two numbers in [0, 1)"),
    "data.crop": multiple_of(CROP_MULTIPLE, 4096),
    "data.quality.kind": one_of(("skewed", "uniform")),
    "data.quality.low": integer_in(1, 100),
    "data.quality.high": integer_in(1, 100),
    "data.quality.power": real_in(0, above=True),
    "data.modes": ((lambda v: len(v) > 0 and all(mode in WRITABLE_MODES for mode in v)),
                   "a non-empty list of " + ", ".join(WRITABLE_MODES)),
    "data.double_share": real_in(0, 1),
    "data.workers": integer_in(0, 256),
    "data.cache_mb": integer_in(0),
    "data.shard_window": integer_in(1, 2**20),
    "spread.features": integer_in(1, 1024),
    "spread.blocks": integer_in(1, 256),
    "spread.table_embedding": integer_in(1, 1024),
    **{f"spread.{name}": ((lambda v: len(v) == 3 and all(math.isfinite(g) for g in v)), "three finite numbers")
       for name in FITTED},
}
# Each schema's rules; evaluate.py adds EvalConfig's (EVAL_RULES), since that schema lives beside the
# evaluation code.
RULES = {TrainConfig: TRAIN_RULES}


def _line_of(path: str | Path, key: str) -> int | None:
    """The line of `key` (dotted) in the YAML file `path`, or None where it is not written there."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # not a file: a source named otherwise
        return None
    for part in key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((value for name, value in node.value if name.value == part), None)
        if node is None:
            return None
    return node.start_mark.line + 1


def violations(schema, merged: DictConfig, sources: list[tuple[DictConfig, str]]) -> list[str]:
    """One line per key of `merged` whose value breaks its rule (RULES), naming where the value came
    from (the last of `sources`, each a node and its name, that sets it: the command line, or the
    config file with the line), the value and what is allowed."""
    found = []
    for key, (test, allowed) in RULES.get(schema, {}).items():
        value = OmegaConf.select(merged, key, throw_on_missing=False)
        if value is None or test(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value):
            continue
        origin = next((name for node, name in reversed(sources)
                       if OmegaConf.select(node, key, default=MISSING) is not MISSING), "default")
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        found.append(f"{_with_line(origin, key)}: {key}={shown!r}: must be {allowed}")
    return found


def _with_line(origin: str, key: str) -> str:
    """A source's name, with the line of `key` where the source is a YAML file that writes it."""
    line = None if origin in ("default", "command line") else _line_of(origin, key)
    return origin if line is None else f"{origin}:{line}"


def _choose_architectures(schema, merged: DictConfig, sources: list[tuple[DictConfig, str]]) -> None:
    """Give each network section of `schema` (`registry.network_field`) the dataclass of the
    architecture that the last source to name one names in `arch`, or its default where a source
    fills a section that is null, so that the sources' keys are checked against that dataclass as
    they merge. An architecture not registered for the section's kind is a one-line ConfigError."""
    for spec in dataclasses.fields(schema):
        kind = spec.metadata.get("network")
        if kind is None:
            continue
        sections = [(node.get(spec.name), name) for node, name in sources]
        sections = [(section, name) for section, name in sections if isinstance(section, DictConfig)]
        named = [(section.arch, name) for section, name in sections if section.get("arch") is not None]
        current = OmegaConf.get_type(merged, spec.name)
        if named:
            arch, origin = named[-1]
            wanted = registry.config_type(kind, arch)
            if wanted is None:
                key = f"{spec.name}.arch"
                raise ConfigError(f"{_with_line(origin, key)}: {key}={arch!r}: must be one of "
                                  f"{', '.join(registry.names(kind))}")
        elif sections and current is type(None):
            wanted = spec.metadata["default"]
        else:
            continue
        if current is not wanted:
            merged[spec.name] = OmegaConf.structured(wanted)


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


# Keys that meant something else before, per schema: the error says what to write instead (a silent
# default, or OmegaConf's bare "not in TrainConfig", would leave the user guessing).
RETIRED_KEYS = {
    TrainConfig: {
        "ema": "ema (a decay per step) is now ema_half_life_images, the images over which an old weight's share "
               "halves: write ema_half_life_images: N with N = images per step x ln(0.5) / ln(ema) "
               "(ema 0.999 at 32 images per step: 22170)",
    },
}


# Keys and values written otherwise before, per schema: still read, each with a RenamedWarning that
# names the new spelling.
RENAMED_KEYS = {TrainConfig: {"anchor": "posterior_mean", "mmse_model": "moment_posterior_mean"}}
RENAMED_VALUES = {TrainConfig: {"stage": {"mmse": "posterior_mean"}}}


def rename_old_spellings(schema, node: DictConfig, source) -> None:
    """Write the old spellings of `schema`'s top-level keys and values in `node` (RENAMED_KEYS,
    RENAMED_VALUES) the new way, warning once for each; a ConfigError where `node` has both."""
    for old, new in RENAMED_KEYS.get(schema, {}).items():
        if old in node:
            if new in node:
                raise ConfigError(f"{source}: {old} and {new} are both set; {old} is the old spelling of {new}")
            warn_renamed(source, old, new)
            node[new] = node.pop(old)
    for key, values in RENAMED_VALUES.get(schema, {}).items():
        value = node.get(key)
        if isinstance(value, str) and value in values:
            warn_renamed(source, f"{key}: {value}", f"{key}: {values[value]}")
            node[key] = values[value]


def refuse_retired_keys(schema, nodes: list, source) -> None:
    """ConfigError for a top-level key of `nodes` that `schema` no longer has (RETIRED_KEYS)."""
    for node in nodes:
        for key, message in RETIRED_KEYS.get(schema, {}).items():
            if key in node:
                raise ConfigError(f"{source}: {message}")


def _merge(schema, sources: list[tuple[DictConfig, str]]) -> DictConfig:
    """Defaults of the dataclass `schema` <- each source's node in turn, unchecked; an unknown key or
    a wrong type is a one-line ConfigError naming the source (file or command line) that brought it."""
    merged = OmegaConf.structured(schema)
    _choose_architectures(schema, merged, sources)
    for node, name in sources:
        refuse_retired_keys(schema, [node], name)
        rename_old_spellings(schema, node, name)
        for key in _mappings_for_lists(merged, node):  # OmegaConf's TypeError names no key
            raise ConfigError(f"{name}: {key}: expected a list, got a mapping")
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as error:
            raise ConfigError(f"{name}: {_reason(error)}") from None
    return merged


def _mappings_for_lists(defaults: DictConfig, node: DictConfig, prefix: str = ""):
    """The dotted keys where `node` gives a mapping and `defaults` holds a list."""
    for key in node:
        if key not in defaults:
            continue
        default, value = defaults._get_node(key), node._get_node(key)
        if isinstance(value, DictConfig) and isinstance(default, ListConfig):
            yield f"{prefix}{key}"
        elif isinstance(value, DictConfig) and isinstance(default, DictConfig) and not default._is_none():
            yield from _mappings_for_lists(default, value, f"{prefix}{key}.")


def _checked(schema, sources: list[tuple[DictConfig, str]]) -> DictConfig:
    """`_merge`, then every value against its rule (RULES): a ConfigError of one line per violation."""
    merged = _merge(schema, sources)
    problems = violations(schema, merged, sources)
    if problems:
        raise ConfigError("\n".join(problems))
    return merged


def _instance(schema, sources: list[tuple[DictConfig, str]], source):
    """`_checked`, then the dataclass itself, whose __post_init__ checks the keys that depend on each
    other (a failure: a one-line ConfigError naming `source`)."""
    merged = _checked(schema, sources)
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{source}: {_reason(error)}") from None
    except ValueError as error:  # a __post_init__ check (ConfigError is one)
        raise ConfigError(f"{source}: {error}") from None


def build_structured(schema, nodes: list, source):
    """Defaults of the dataclass `schema` <- each of `nodes` (all read from `source`) in turn -> a
    validated instance; unknown keys, wrong types and failed checks become ConfigErrors that name
    `source`, one line per violation."""
    return _instance(schema, [(node, str(source)) for node in nodes], source)


def _sources(path: str | Path | None, overrides: list[str]) -> list[tuple[DictConfig, str]]:
    """The YAML file (if any) and the dotlist overrides, in the order they apply, each with its name."""
    sources = [(read_yaml(path), str(path))] if path is not None else []
    for item in overrides:  # one at a time, so that an error names the override
        try:
            OmegaConf.from_dotlist([item])
        except (OmegaConfBaseException, yaml.YAMLError) as error:
            reason = _reason(error) if isinstance(error, OmegaConfBaseException) else str(error).splitlines()[0]
            raise ConfigError(f"command line: {item}: not a key=value override ({reason})") from None
    command_line = OmegaConf.from_dotlist(list(overrides))
    refuse_interpolations(command_line, "command line")
    return [*sources, (command_line, "command line")]


def load_structured(schema, path: str | Path | None = None, overrides: list[str] = ()):
    """Defaults of the dataclass `schema` <- YAML file <- dotlist overrides -> a validated instance.
    Unknown keys, wrong types, values out of range, interpolations and failed checks become
    ConfigErrors, one line per violation, each naming where the value came from."""
    return _instance(schema, _sources(path, overrides), path or "config")


def print_error(program: str, error: Exception) -> None:
    """Each line of `error` on stderr after the program's name (a ConfigError has one per violation)."""
    for line in str(error).splitlines():
        print(f"{program}: {line}", file=sys.stderr)


def show_config(program: str, schema, path: str | None, overrides: list[str]) -> int:
    """--print-config: every key of `schema` with its value (defaults <- file <- overrides) and its
    meaning, as YAML that --config reads back. Unknown keys, wrong types and values out of range are
    refused (exit 2, one line each); what a key's value must satisfy together with others is checked
    when the job starts, so an incomplete config can still be listed."""
    try:
        node = _checked(schema, _sources(path, overrides))
    except ConfigError as error:
        print_error(program, error)
        return 2
    print(commented_yaml(node), end="")
    return 0


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- dotlist overrides (["loss.r1_every=8", ...]) -> a validated TrainConfig."""
    return load_structured(TrainConfig, path, overrides)


def to_yaml(config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def key_meanings(schema: type) -> dict[str, str]:
    """Field name -> the comment on its line in the dataclass `schema`'s source: the one place where
    a config key's meaning is written (--print-config shows it, a test requires it)."""
    source = textwrap.dedent(inspect.getsource(schema))
    comments = {token.start[0]: token.string.lstrip("#").strip()
                for token in tokenize.generate_tokens(io.StringIO(source).readline) if token.type == tokenize.COMMENT}
    meanings = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            rows = [row for row in range(node.lineno, node.end_lineno + 1) if row in comments]
            if rows:
                meanings[node.target.id] = comments[rows[0]]
    return meanings


def commented_yaml(node: DictConfig, indent: str = "") -> str:
    """A structured config node as YAML, each key followed by its meaning as a comment (key_meanings);
    "???" marks a required value not yet given."""
    meanings = key_meanings(OmegaConf.get_type(node))
    lines = []
    for key in node:
        comment = f"  # {meanings[key]}" if key in meanings else ""
        child = node._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            lines.append(f"{indent}{key}:{comment}\n" + commented_yaml(child, indent + "  "))
            continue
        value = "???" if OmegaConf.is_missing(node, key) else OmegaConf.to_container(child) if isinstance(child, (DictConfig, ListConfig)) else node[key]
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).removesuffix("\n").removesuffix("\n...")
        lines.append(f"{indent}{key}: {text}{comment}\n")
    return "".join(lines)


def output_folder(key: str, path: str) -> Path:
    """The folder a job writes into (the config's `key`), made if missing: a one-line ConfigError
    naming the key where it cannot be made or written, before any model is built."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{key}={path}: cannot make the folder there ({error.strerror or error})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: the folder is not writable")
    return folder


def run_with_config(program: str, load, action, path: str | None, overrides: list[str]) -> int:
    """Load a config and run `action(cfg)`, as a command line does: exit status 0, 2 for a config or
    a checkpoint that cannot be used, 75 for a training run stopped by a signal after a checkpoint
    (`TrainingStopped`), 1 for a job that failed with one of our errors (one line on stderr each)."""
    try:
        cfg = load(path, overrides)
        action(cfg)
    except (ConfigError, CheckpointError, SymlinkError) as error:  # what the user gave cannot be used
        print_error(program, error)
        return 2
    except TrainingStopped as error:
        print_error(program, error)
        return TrainingStopped.exit_status
    except PosteriorJpegError as error:
        print_error(program, error)
        return 1
    return 0
