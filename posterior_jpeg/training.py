"""The training loop: Accelerate for devices, DDP and mixed precision; three stages.

stage "posterior_mean": G learns E[x | y] with an L2 loss (the second moment's xbar, and the regression
baseline). stage "posterior": G and the critic play the non-saturating GAN with R1, plus the
consistency penalty through the differentiable codec, the first and second moment penalties and
optionally the VGG perceptual loss, each weighted by its schedule. stage "spread": over a finished
M and S, the spread network V learns the variance of M's residual by band (models/spread.py).

The loss terms are data (losses.TERMS: name, function, weight, period, inputs); a stage here makes
the inputs its due terms take, by name, and steps down their weighted sum (`_descend`).

Exact resume: data items are a function of (seed, sample counter), the learning rates and loss
weights a function of the step, and checkpoints hold the models, the EMA, the optimizers and every
process's RNG states (safetensors and JSON: nothing is unpickled); so a run stopped at step s and
resumed reproduces the uninterrupted run.

Preemption: SIGTERM, SIGUSR1 (SLURM's warning before the time limit) and SIGINT make every process
finish its step, agree on that step, write one checkpoint and raise `TrainingStopped` (exit status 75).
"""

import copy
import dataclasses
import json
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from . import checkpoints, losses
from .atomic import Folder
from .config import TrainConfig, output_folder, to_yaml
from .calibrate import fit_spread, training_photos
from .data import QualityDistribution, make_loader, open_images, synthetic_image
from .pixels import to_unit_float
from .precision import ACCELERATE_NAMES, Precision, choose_precision, torch_dtype
from .errors import CheckpointError, ConfigError, TrainingDiverged, TrainingStopped
from .export import encode_png
from .models.features import VGGFeatures
from .metrics.psnr import luma
from .models.generator import AnchoredGenerator
from .models.noise import seeded_noise
from .models.registry import build
from .models.spread import FITTED
from .visualize import contact_sheet, posterior_row


def _precision(cfg: TrainConfig) -> Precision:
    """mixed_precision and channels_last as this machine runs them (auto: see `choose_precision`)."""
    device_type = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu"
    chosen = choose_precision(cfg.mixed_precision, device_type)
    if cfg.channels_last is None or cfg.channels_last == chosen.channels_last:
        return chosen
    return Precision(chosen.name, cfg.channels_last, chosen.reason + "; channels_last as asked")


def _accelerator(cfg: TrainConfig, precision: Precision, run_dir: Path) -> Accelerator:
    """The accelerator, with the tracker `log_with` names; trackers that keep files keep them in out_dir/logs.
    Accelerate would silently drop a tracker whose package is missing: refuse that instead."""
    trackers = [] if cfg.log_with == "none" else [cfg.log_with]
    if trackers and cfg.log_with not in [str(tracker) for tracker in get_available_trackers()]:
        raise ConfigError(f"log_with={cfg.log_with}: its package is not installed here (pip install {cfg.log_with}); "
                          "log_with=tensorboard needs only what posterior-jpeg installs")
    return Accelerator(
        cpu=cfg.device == "cpu",
        mixed_precision=ACCELERATE_NAMES[precision.name],
        gradient_accumulation_steps=cfg.grad_accumulation,
        log_with=trackers or None,  # an empty list would warn that no tracker is installed
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / LOGS_FOLDER)),
    )


TRACKER_PROJECT = "posterior-jpeg"  # the project name trackers file the run under (TensorBoard: a folder in out_dir/logs)


def _log_image(accelerator: Accelerator, name: str, image: np.ndarray, step: int) -> None:
    """An HWC uint8 image to every tracker that takes images (TensorBoard must be told the layout)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step, dataformats="NHWC")
        elif hasattr(tracker, "log_images"):
            tracker.log_images({name: [image]}, step)


FIT_PHOTOS = 12  # training photos the spread gains are fitted on
# What a run writes in its folder besides checkpoints/, each opened without following a link
CONFIG_FILE = "config.yaml"  # the config that ran
METRICS_FILE = "metrics.jsonl"  # one record per log line
VAL_FOLDER = "val"  # validation grids
LOGS_FOLDER = "logs"  # the trackers' logs (TensorBoard: a folder per project inside)


def _set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One fused update of every EMA parameter (one kernel launch per group on a GPU, not per tensor)."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def _compiled(model: torch.nn.Module):
    """torch.compile of G's training forward. It wraps the prepared (DDP) module, the order PyTorch
    documents for DDP and Accelerate follows: DDPOptimizer then splits the graph at the gradient
    buckets so that their all-reduce overlaps the backward. Every call marks the batch dimension
    dynamic, so moment steps (batch + moment_images x moment_samples) run the graph of the other
    steps instead of compiling one of their own."""
    compiled = torch.compile(model)

    def forward(y: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(y, 0)
        torch._dynamo.maybe_mark_dynamic(tables, 0)
        return compiled(y, tables)

    return forward


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA's allocator peak on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _to_device(batch: dict, device) -> dict:
    """The batch on device, images and coefficients as float32 (they travel as uint8 and int16)."""
    moved = dict(batch)
    for key in ("x", "y"):
        moved[key] = to_unit_float(batch[key].to(device, non_blocking=True))
    moved["qtables"] = batch["qtables"].to(device, non_blocking=True)
    moved["groups"] = {m: i.to(device, non_blocking=True) for m, i in batch["groups"].items()}
    if "coefficients" in batch:
        moved["coefficients"] = {m: [c.to(device, non_blocking=True).float() for c in cs]
                                 for m, cs in batch["coefficients"].items()}
    return moved


def _ema_beta(cfg: TrainConfig, world: int) -> float:
    """The EMA's decay per optimizer step from its half-life in images (edm's convention): the same
    half-life averages over the same number of images whatever the batch size or process count."""
    return 0.5 ** (cfg.batch_size * cfg.grad_accumulation * world / cfg.ema_half_life_images)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """While active, the first stop signal is recorded instead of ending the process, so that the
    loop can finish its step and write a checkpoint (clusters send SIGTERM some time before SIGKILL,
    SLURM's --signal sends SIGUSR1 before the time limit); a second Ctrl-C stops at once."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self.previous = {}

    def _record(self, number: int, frame) -> None:
        if number == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = self.received or signal.Signals(number)

    def __enter__(self) -> "StopSignals":
        self.previous = {number: signal.signal(number, self._record) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _start_workers(loader: torch.utils.data.DataLoader):
    """The loader's iterator, its worker processes started with the stop signals blocked: SLURM
    signals every process of a job step, and a worker would die of SIGTERM (its parent would then
    fail mid-step); blocked there, the signals are this process's alone to act on."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# The objectives each stage minimises (losses.Term.objective), each the sum of its terms in losses.TERMS
OBJECTIVES = {"posterior_mean": ("posterior_mean",), "posterior": ("critic", "generator"), "spread": ("spread",)}


class Inputs:
    """What a step offers its loss terms, by name (`losses.Term.needs`): each made on first use by its
    maker, a function of this object (so that one input can build on another), then kept for the step.
    A step thus computes only what its due terms take."""

    def __init__(self, makers: dict[str, Callable[["Inputs"], object]]):
        self.makers = makers
        self.made: dict[str, object] = {}

    def __getitem__(self, name: str):
        if name not in self.made:
            self.made[name] = self.makers[name](self)
        return self.made[name]


def _weight(cfg: TrainConfig, term: losses.Term, step: int) -> float:
    """The term's weight at `step`, from its schedule in cfg.loss (1 for a term without one)."""
    return 1.0 if term.weight is None else getattr(cfg.loss, term.weight)(step, cfg.steps)


def _wanted(cfg: TrainConfig, term: losses.Term, step: int) -> bool:
    """Whether `term` is wanted at `step`: a positive weight, and the step a multiple of its period."""
    return (term.every is None or step % getattr(cfg.loss, term.every) == 0) and _weight(cfg, term, step) > 0


def _chosen(cfg: TrainConfig, objective: str) -> list[losses.Term]:
    """The terms of `objective` in the variants the config chose, in the table's order."""
    return [term for term in losses.TERMS if term.objective == objective
            and (term.variant is None or getattr(cfg.loss, term.variant[0]) == term.variant[1])]


def _due(cfg: TrainConfig, objective: str, step: int, missing: set[str] = frozenset()) -> list[losses.Term]:
    """The terms of `objective` computed at `step`: the chosen ones that take none of the inputs
    `missing` at this step, and are wanted or watched."""
    return [term for term in _chosen(cfg, objective)
            if not missing.intersection(term.needs) and (term.watched or _wanted(cfg, term, step))]


def _may_need(cfg: TrainConfig, need: str) -> bool:
    """Whether a term of this run's stage may take the input `need` at some step (its network or its
    data are then prepared for it): a chosen term, watched or with a weight not zero throughout."""
    def may_run(term: losses.Term) -> bool:
        schedule = None if term.weight is None else getattr(cfg.loss, term.weight)
        return term.watched or schedule is None or schedule.start + schedule.end > 0

    return any(need in term.needs and may_run(term) for objective in OBJECTIVES[cfg.stage]
               for term in _chosen(cfg, objective))


def _descend(trainer: "Trainer", optimizer: torch.optim.Optimizer, terms: list[losses.Term],
             inputs: Inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step down the sum of `terms`, each times its weight (and its period, if lazy);
    returns that sum and each term's value, as logged."""
    cfg, step = trainer.cfg, trainer.step
    total, logged = None, {}
    for term in terms:
        weight = _weight(cfg, term, step)
        arguments = [inputs[need] for need in term.needs]
        value = term.function(*arguments, weight) if term.weighs_itself else term.function(*arguments)
        part = value if term.weighs_itself or term.weight is None else weight * value
        if term.lazy:
            part = getattr(cfg.loss, term.every) * part
        total = part if total is None else total + part
        logged[term.name] = value.detach()
    trainer.accelerator.backward(total)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, logged


class PosteriorMeanStage:
    """Stage "posterior_mean": G alone learns E[x | y] (the terms of objective "posterior_mean": an L2 loss); no other
    model or optimizer."""

    objective = "posterior_mean"

    def prepare(self, accelerator: Accelerator) -> None:
        pass  # nothing of its own to place or wrap

    def finish(self, trainer: "Trainer") -> None:
        pass  # nothing to do after the last step

    def models(self, accelerator: Accelerator) -> dict[str, torch.nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def inputs(self, trainer: "Trainer", batch: dict) -> dict[str, Callable[[Inputs], object]]:
        with trainer.accelerator.autocast():
            prediction = trainer.forward_g(batch["y"], batch["qtables"])
        return {"output": lambda got: prediction.float(), "x": lambda got: batch["x"]}

    def step(self, trainer: "Trainer", batch: dict) -> dict[str, torch.Tensor]:
        with trainer.accelerator.accumulate(trainer.generator):
            terms = _due(trainer.cfg, self.objective, trainer.step)
            return _descend(trainer, trainer.opt_g, terms, Inputs(self.inputs(trainer, batch)))[1]


class SpreadStage(PosteriorMeanStage):
    """Stage "spread": V alone learns the variance of each band of M's luma residual x - M
    (objective "spread": `spread.band_deviance`); M and S stay frozen, so does the sample's mean. At
    the last step the dispersions and gains that make projected samples carry that variance are
    fitted (calibrate.py)."""

    objective = "spread"

    def finish(self, trainer: "Trainer") -> None:
        cfg = trainer.cfg
        if not trainer.accelerator.is_main_process:
            return
        if trainer.train_images is None:  # synthetic data
            rng = np.random.default_rng(cfg.seed)
            photos = [synthetic_image(rng, cfg.data.crop) for _ in range(2)]
        else:
            photos = training_photos(trainer.train_images, FIT_PHOTOS)
        fitted = fit_spread(trainer.ema, photos, trainer.accelerator.device, torch_dtype(trainer.precision.name))
        for name in FITTED:
            setattr(cfg.spread, name, getattr(trainer.ema.spread.config, name))
        trainer.accelerator.print(f"train: spread fitted on {len(photos)} training photos, by quality (low, mid, "
                                  f"high): dispersion {fitted['dispersion']}, log gain {fitted['log_gain']}")

    def inputs(self, trainer: "Trainer", batch: dict) -> dict[str, Callable[[Inputs], object]]:
        with trainer.accelerator.autocast():
            log_spread, mean = trainer.generator(batch["y"], batch["qtables"], output="log_spread")
        return {"log_spread": lambda got: log_spread.float(),
                "residual_luma": lambda got: luma(batch["x"] - mean.float())}


class PosteriorStage:
    """Stage "posterior": G against the critic (objectives "generator" and "critic": the non-saturating
    GAN with lazy R1, the consistency penalty, the moment penalties and the VGG perceptual loss, each
    weighted by its schedule). `xbar` (eq. 7's frozen posterior mean: posterior_mean's M, or moment_posterior_mean)
    and `vgg` exist only when a term that may run needs them."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator, generator: torch.nn.Module):
        self.cfg = cfg
        self.critic = build(cfg.critic)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=cfg.optim.critic_lr(0, cfg.steps),
                                      betas=tuple(cfg.optim.betas))
        self.xbar = generator.mean if cfg.posterior_mean else None
        if cfg.moment_posterior_mean and _may_need(cfg, "xbar"):
            self.xbar, _ = checkpoints.load_generator(cfg.moment_posterior_mean, accelerator.device)
            self.xbar.requires_grad_(False)
        self.vgg = None
        if _may_need(cfg, "vgg"):
            self.vgg = VGGFeatures(cfg.loss.vgg_weights, cfg.weights.dir).to(accelerator.device)

    def prepare(self, accelerator: Accelerator) -> None:
        self.critic, self.opt_d = accelerator.prepare(self.critic, self.opt_d)

    def finish(self, trainer: "Trainer") -> None:
        pass  # nothing to do after the last step

    def models(self, accelerator: Accelerator) -> dict[str, torch.nn.Module]:
        return {"critic": accelerator.unwrap_model(self.critic)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer_critic": self.opt_d}

    def step(self, trainer: "Trainer", batch: dict) -> dict[str, torch.Tensor]:
        _set_lr(self.opt_d, self.cfg.optim.critic_lr(trainer.step, self.cfg.steps))
        with trainer.accelerator.accumulate(trainer.generator, self.critic):
            result = self._critic_step(trainer, batch)
            result.update(self._generator_step(trainer, batch))
        return result

    def _critic_step(self, trainer: "Trainer", batch: dict) -> dict[str, torch.Tensor]:
        accelerator = trainer.accelerator
        with torch.no_grad(), accelerator.autocast():
            fake = accelerator.unwrap_model(trainer.generator)(batch["y"], batch["qtables"])
        terms = _due(self.cfg, "critic", trainer.step)
        real = batch["x"].detach().requires_grad_(any("real" in term.needs for term in terms))  # R1: D's gradient in x
        condition = batch["y"] if self.cfg.critic.conditional else None
        with accelerator.autocast():
            real_logits = self.critic(real, condition)
            fake_logits = self.critic(fake.float(), condition)
        inputs = Inputs({"real": lambda got: real, "real_logits": lambda got: real_logits,
                         "fake_logits": lambda got: fake_logits})
        _, result = _descend(trainer, self.opt_d, terms, inputs)
        return {**result, "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}

    def _generator_step(self, trainer: "Trainer", batch: dict) -> dict[str, torch.Tensor]:
        cfg, step = self.cfg, trainer.step
        missing = {name for name, absent in (("xbar", self.xbar is None), ("vgg", self.vgg is None),
                                              ("coefficients", "coefficients" not in batch)) if absent}
        # the moment draws: at the steps where a wanted term takes them
        draws = any("samples" in term.needs and _wanted(cfg, term, step)
                    for term in _due(cfg, "generator", step, missing))
        terms = _due(cfg, "generator", step, missing if draws else missing | {"samples"})
        total, result = _descend(trainer, trainer.opt_g, terms, Inputs(self._generator_inputs(trainer, batch, draws)))
        return {**result, "g_total": total.detach()}

    def _generator_inputs(self, trainer: "Trainer", batch: dict, draws: bool) -> dict[str, Callable[[Inputs], object]]:
        """What G's terms may take: G's output over the batch and, where `draws`, K draws for each of
        the first P inputs (one G call: DDP wants one forward), the critic's logits on G's output, the
        batch's targets, eq. 7's xbar for the drawn inputs and the VGG network."""
        cfg, accelerator = self.cfg, trainer.accelerator
        n, p, k = batch["y"].shape[0], cfg.loss.moment_images, cfg.loss.moment_samples

        def output(got: Inputs) -> torch.Tensor:
            y, tables = batch["y"], batch["qtables"]
            if draws:
                y = torch.cat([y, y[:p].repeat_interleave(k, dim=0)])
                tables = torch.cat([tables, tables[:p].repeat_interleave(k, dim=0)])
            with accelerator.autocast():
                drawn = trainer.forward_g(y, tables)
            return drawn.float()

        def fake_logits(got: Inputs) -> torch.Tensor:
            critic = accelerator.unwrap_model(self.critic)
            critic.requires_grad_(False)  # G's terms move G alone
            with accelerator.autocast():
                logits = critic(got["fake"], batch["y"] if cfg.critic.conditional else None)
            critic.requires_grad_(True)
            return logits

        def xbar(got: Inputs) -> torch.Tensor:
            with torch.no_grad():
                return self.xbar(batch["y"][:p], batch["qtables"][:p]).float()

        return {
            "output": output,
            "fake": lambda got: got["output"][:n],
            "fake_logits": fake_logits,
            "samples": lambda got: got["output"][n:].reshape(p, k, *got["fake"].shape[1:]),  # [P, K, 3, H, W]
            "samples_x": lambda got: batch["x"][:p],
            "xbar": xbar,
            "x": lambda got: batch["x"],
            "y_by_mode": lambda got: {mode: batch["y"][index] for mode, index in batch["groups"].items()},
            "coefficients": lambda got: batch["coefficients"],
            "qtables": lambda got: batch["qtables"],
            "groups": lambda got: batch["groups"],
            "vgg": lambda got: self.vgg,
        }


class Trainer:
    """Owns what both stages share (G, its EMA and optimizer, the accelerator, checkpoints and the
    loop) and the stage (`PosteriorMeanStage` or `PosteriorStage`) that owns the rest; `run()` trains to cfg.steps."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = output_folder("out_dir", cfg.out_dir)
        with Folder(self.run_dir) as run:  # a link planted where the run will write stops it before anything is built
            for name in (CONFIG_FILE, METRICS_FILE):
                run.refuse_link(name)
            for name in (checkpoints.CHECKPOINTS, VAL_FOLDER, *([LOGS_FOLDER] if cfg.log_with != "none" else [])):
                run.child(name).close()
        self.precision = _precision(cfg)
        self.accelerator = _accelerator(cfg, self.precision, self.run_dir)
        self.accelerator.print(f"train: {self.accelerator.device}, precision {self.precision.describe()}")
        # the run's config.yaml and its checkpoints record what ran, not "auto"
        cfg.mixed_precision, cfg.channels_last = self.precision.name, self.precision.channels_last
        if self.accelerator.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest kernels once
        set_seed(cfg.seed)
        mean = None
        if cfg.posterior_mean:
            mean, _ = checkpoints.load_generator(cfg.posterior_mean)
            if isinstance(mean, AnchoredGenerator):  # a finished model: its M
                mean = mean.mean
            if mean.config.noise:
                raise checkpoints.CheckpointError(
                    f"{cfg.posterior_mean}: posterior_mean must be a noise-free model (generator.noise: false)")
        self.generator = checkpoints.assemble(dataclasses.replace(cfg.generator), mean, cfg.antithetic,
                                              None if cfg.spread is None else dataclasses.replace(cfg.spread))
        if cfg.init_from:
            weights, model = checkpoints.resolve(cfg.init_from)
            if cfg.posterior_mean and model.posterior_mean is not None:  # warm-start S, over this run's M
                checkpoints.load_weights(self.generator.detail, weights, "this run's S (init_from)", prefix="detail.")
                if cfg.spread is not None and model.spread is not None:
                    checkpoints.load_weights(self.generator.spread, weights, "this run's V (init_from)", prefix="spread.")
                    for fitted in (self.generator.spread.config, cfg.spread):  # fitted to these weights: kept with them
                        for name in FITTED:
                            setattr(fitted, name, getattr(model.spread, name))
            else:
                checkpoints.load_weights(self.generator, weights, "this run's generator (init_from)")
        self.ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.ema_beta = _ema_beta(cfg, self.accelerator.num_processes)
        if cfg.stage == "spread":
            self.generator.detail.requires_grad_(False)  # V learns over a finished S
        elif cfg.spread is not None:
            self.generator.spread.requires_grad_(False)  # S learns under a finished V (its gains fit that V)
        trained = [p for p in self.generator.parameters() if p.requires_grad]  # the posterior mean M stays frozen
        self.opt_g = torch.optim.Adam(trained, lr=cfg.optim.lr(0, cfg.steps), betas=tuple(cfg.optim.betas))
        self.stage = {"posterior": lambda: PosteriorStage(cfg, self.accelerator, self.generator),
                      "spread": SpreadStage, "posterior_mean": PosteriorMeanStage}[cfg.stage]()
        if self.precision.channels_last:
            self.generator = self.generator.to(memory_format=torch.channels_last)
        self.generator, self.opt_g = self.accelerator.prepare(self.generator, self.opt_g)
        self.stage.prepare(self.accelerator)
        self.ema.to(self.accelerator.device)
        self.forward_g = _compiled(self.generator) if cfg.compile else self.generator
        # the stop flag is reduced every step on the host (gloo): a GPU run never waits for its device
        self.stop_group = torch.distributed.new_group(backend="gloo") if self.accelerator.num_processes > 1 else None
        self.signals = StopSignals()
        self.step = 0
        self.last_logged: dict[str, float] = {}  # the latest gathered losses, as every process saw them
        # every model was built from the same seed on every rank; from here each rank draws its own
        # noise z (seed + rank), or all ranks would sample the same z and results would depend on
        # the process count. A resume then restores each rank's own RNG states.
        set_seed(cfg.seed, device_specific=True)
        self._resume()
        self.train_images = open_images(cfg.data.train)

    # ----------------------------------------------------------------------------- state
    def _models(self) -> dict[str, torch.nn.Module]:
        """The trained models by checkpoint file name (the EMA is saved as the inference weights)."""
        return {"generator": self.accelerator.unwrap_model(self.generator), **self.stage.models(self.accelerator)}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer_generator": self.opt_g, **self.stage.optimizers()}
    def _resume(self) -> None:
        """Continue from the newest checkpoint whose every file loads and fits (resume=auto) or from
        the one given, and say which checkpoints were passed over and why. A run folder with
        checkpoints but none usable is an error: starting over would silently drop the run."""
        cfg, accelerator = self.cfg, self.accelerator
        if cfg.resume is None:
            return
        auto = cfg.resume == "auto"
        folders, notes = checkpoints.checkpoint_order(self.run_dir) if auto else ([Path(cfg.resume)], [])
        models = {**self._models(), checkpoints.EMA: self.ema}
        for folder in folders:
            try:
                state = checkpoints.read_training_state(folder, models, self._optimizers(), accelerator.scaler,
                                                        accelerator.process_index, accelerator.num_processes)
            except CheckpointError as error:
                if not auto:
                    raise
                notes.append(str(error))
                continue
            checkpoints.apply_training_state(state, models, self._optimizers(), accelerator.scaler)
            self.step = state.step
            if accelerator.is_main_process:
                for note in notes:
                    print(f"train: passed over {note}", file=sys.stderr)
            accelerator.print(f"resumed from {folder} at step {self.step}")
            return
        if folders or notes:
            raise CheckpointError(f"{self.run_dir}: no usable checkpoint to resume from ({'; '.join(notes)}); "
                                  "repair or move them away, or pass resume=null to start over")

    def save_checkpoint(self) -> Path | None:
        """Write the checkpoint to a staging folder, then move it into place (never half-written)."""
        accelerator = self.accelerator
        staging = self.run_dir / checkpoints.CHECKPOINTS / f".staging_{checkpoints.checkpoint_name(self.step)}"
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with Folder(self.run_dir) as run, run.child(checkpoints.CHECKPOINTS) as root:
                root.refuse_link(staging.name)  # never emptied or written through a link
                if root.lstat(staging.name) is not None:
                    shutil.rmtree(staging)
                root.child(staging.name).close()
        accelerator.wait_for_everyone()
        checkpoints.save_random_states(staging, accelerator.process_index)
        accelerator.wait_for_everyone()
        final = None
        if accelerator.is_main_process:
            checkpoints.save_training_state(staging, self.step, self._models(), self._optimizers(), accelerator.scaler)
            checkpoints.save_inference_files(staging, self.ema, self.cfg)
            final = checkpoints.publish_checkpoint(staging, self.run_dir, self.step, self.cfg.keep_checkpoints)
        accelerator.wait_for_everyone()
        return final

    # ----------------------------------------------------------------------------- steps
    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        _set_lr(self.opt_g, self.cfg.optim.lr(self.step, self.cfg.steps))
        result = self.stage.step(self, batch)
        if self.accelerator.sync_gradients:
            _update_ema(self.ema, self.accelerator.unwrap_model(self.generator), self.ema_beta)
        return result

    def stop_if_diverged(self, finite: torch.Tensor, latest: dict[str, torch.Tensor]) -> None:
        """TrainingDiverged, on every process alike, when a loss since the last check (`finite`, kept
        on the device so that steps never wait for the host) or a weight of G or its EMA is not finite:
        the run stops before a checkpoint could save the damage, so the last one written stays good."""
        weights = [p for model in (self.generator, self.ema) for p in model.parameters()]
        ok = finite & torch.stack([torch.isfinite(p).all() for p in weights]).all()
        if self.accelerator.reduce((~ok).float().reshape(1), "sum").item() == 0:
            return
        losses_hit = sorted(name for name, value in latest.items() if not torch.isfinite(value).all())
        what = f"the loss {', '.join(losses_hit)}" if losses_hit else "a loss or a weight"
        raise TrainingDiverged(f"step {self.step}: {what} became NaN or infinite; stopped without writing another "
                               f"checkpoint, so those in {self.run_dir / checkpoints.CHECKPOINTS} are the last good ones "
                               "(lower optim.lr or the loss weights, then resume)")

    def stop_if_signalled(self, finite: torch.Tensor, latest: dict[str, torch.Tensor]) -> None:
        """TrainingStopped on every process alike, after a checkpoint of this step, when any process
        got a stop signal: one all-reduce of the flags, so that all stop after the same step."""
        received = self.signals.received
        flag = torch.tensor([received is not None], dtype=torch.int32)
        if self.stop_group is not None:
            torch.distributed.all_reduce(flag, group=self.stop_group)
        if flag.item() == 0:
            return
        self.stop_if_diverged(finite, latest)  # never checkpoint the damage
        if self.step % self.cfg.checkpoint_every != 0:  # else the step's periodic checkpoint was just written
            self.save_checkpoint()
        cause = received.name if received else "a stop signal to another process"
        folder = self.run_dir / "checkpoints" / checkpoints.checkpoint_name(self.step)
        self.accelerator.end_training()  # trackers flushed: the process ends next
        raise TrainingStopped(f"step {self.step}: stopped on {cause} after a checkpoint of this step ({folder}); "
                              f"run the same command to resume (exit status {TrainingStopped.exit_status}: requeue)")

    # ----------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validation_grid(self) -> Path:
        """y | 4 samples | mean | std map for fixed validation crops, from the EMA generator: saved in
        out_dir/val and sent to the tracker."""
        cfg = self.cfg
        images = open_images(cfg.data.val) if cfg.data.val else self.train_images
        loader = make_loader(
            images, cfg.data.crop, QualityDistribution("uniform", cfg.val_quality, cfg.val_quality), ("4:2:0",),
            seed=cfg.seed + 1, batch_size=cfg.val_images, length=cfg.val_images,
        )
        batch = _to_device(next(iter(loader)), self.accelerator.device)
        rows = []
        for i in range(batch["y"].shape[0]):
            y, tables = batch["y"][i : i + 1], batch["qtables"][i : i + 1]
            samples = self.ema(y.expand(4, -1, -1, -1), tables.expand(4, -1, -1, -1),
                               seeded_noise([0, 1, 2, 3], self.accelerator.device)).clamp(0, 1)
            rows.append(posterior_row(y[0], samples))
        name = f"{checkpoints.checkpoint_name(self.step)}.png"
        sheet = contact_sheet(rows)
        with Folder(self.run_dir) as run, run.child(VAL_FOLDER) as val:
            val.write(name, encode_png(sheet, None))
        _log_image(self.accelerator, "validation", sheet, self.step)
        return self.run_dir / VAL_FOLDER / name

    # ----------------------------------------------------------------------------- loop
    def run(self) -> Path:
        """Train to cfg.steps, or up to a stop signal (`stop_if_signalled`); returns the run folder."""
        with self.signals:
            return self._train()

    def _train(self) -> Path:
        cfg, accelerator = self.cfg, self.accelerator
        if accelerator.is_main_process:
            with Folder(self.run_dir) as run:
                run.write(CONFIG_FILE, to_yaml(cfg).encode())
        accelerator.init_trackers(TRACKER_PROJECT, config={"stage": cfg.stage, "steps": cfg.steps})
        world = accelerator.num_processes
        per_step = cfg.batch_size * cfg.grad_accumulation
        loader = make_loader(
            self.train_images, cfg.data.crop,
            cfg.data.quality,
            tuple(cfg.data.modes), seed=cfg.seed, batch_size=cfg.batch_size,
            start_counter=self.step * per_step * world, rank=accelerator.process_index, world_size=world,
            workers=cfg.data.workers, flips=cfg.data.flips, double_share=cfg.data.double_share,
            coefficients=_may_need(cfg, "coefficients"), cache_bytes=cfg.data.cache_mb * 2**20,
            pin_memory=accelerator.device.type == "cuda", shard_window=cfg.data.shard_window,
        )
        batches = _start_workers(loader)
        progress = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.stage}",
                        disable=not (cfg.progress and accelerator.is_main_process))
        started, first_step = time.perf_counter(), self.step
        # each loss as of the last step that computed it: moment and R1 steps come every few steps, and
        # a log step's own result alone would never show them when its period is a multiple of theirs
        latest: dict[str, torch.Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=accelerator.device)  # every loss since the last check
        while self.step < cfg.steps:
            for _ in range(cfg.grad_accumulation):
                result = self.train_step(_to_device(next(batches), accelerator.device))
                finite &= torch.stack([torch.isfinite(value).all() for value in result.values()]).all()
                latest.update(result)
            self.step += 1
            progress.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                gathered = {k: accelerator.reduce(v.float().reshape(1), "mean").item() for k, v in sorted(latest.items())}
                gathered["lr"] = self.opt_g.param_groups[0]["lr"]
                self.last_logged = gathered
                accelerator.log(gathered, step=self.step)
                progress.set_postfix({k: f"{v:.3g}" for k, v in gathered.items() if k != "lr"})
                if accelerator.is_main_process:
                    seconds = time.perf_counter() - started
                    record = {"step": self.step, "seconds": seconds, "cpu_seconds": time.process_time(),
                              "images_per_second": (self.step - first_step) * per_step * world / seconds,
                              "peak_memory_mb": _peak_memory_mb(accelerator.device), **gathered}
                    with Folder(self.run_dir) as run:
                        run.append_line(METRICS_FILE, json.dumps(record))
            if self.step % cfg.log_every == 0 or self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.stop_if_diverged(finite, latest)
            if accelerator.is_main_process and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                self.validation_grid()
            if self.step == cfg.steps:
                self.stage.finish(self)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.step < cfg.steps:
                self.stop_if_signalled(finite, latest)
        progress.close()
        accelerator.end_training()
        return self.run_dir


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the run described by cfg; returns the run folder."""
    return Trainer(cfg).run()
