"""The training objective (paper eq. 8-10), one small function per term, the table of terms each
stage minimises (`TERMS`), and the weight schedules.

Images are RGB in [0, 1] throughout, and every loss is in those units (an MSE of 1e-4 is an RMSE of
2.55 gray levels), so weights carry over between the pixel and feature terms unchanged. Critic logits
come in the precision the critic ran in, and the losses cast them to float32.

A new loss: its function here, one line in `TERMS`, and its weight in config.py's LossConfig.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .jpeg import codec
from .models.spread import band_deviance


def adversarial_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, mean softplus(-D(G(z, y))): strong gradients while D wins."""
    return F.softplus(-fake_logits.float()).mean()


def adversarial_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic loss, mean softplus(-D(x)) + mean softplus(D(G(z, y))): the logistic GAN loss."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al.): keeps the critic flat on the data.

    real_images must have requires_grad set before D saw them. The gradient graph is kept
    (create_graph) so the penalty itself can be backpropagated into D's parameters."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return 0.5 * gamma * grad.pow(2).flatten(1).sum(1).mean()


def consistency_pixel(images: torch.Tensor, y: torch.Tensor, qtables: torch.Tensor, mode: str) -> torch.Tensor:
    """Paper eq. 4: MSE between JPEG(x_hat) and the decoded input y, in [0, 1] units.

    JPEG(x_hat) is the differentiable codec's compress-decompress with the file's own tables and
    subsampling (one `mode` per call); rounding passes gradients straight through."""
    _, decoded = codec.roundtrip(images, qtables, mode)
    return F.mse_loss(decoded, y)


def consistency_dct(
    images: torch.Tensor, coefficients: list[torch.Tensor], qtables: torch.Tensor, mode: str
) -> torch.Tensor:
    """Dead-zone consistency in the DCT domain, in quantization steps.

    Per stored coefficient c, the unquantized DCT u of x_hat (divided by its step) is consistent
    anywhere in [c - 0.5, c + 0.5]; the loss is the squared distance of u outside that interval,
    averaged over all coefficients of all components. Exactly 0 (and no gradient) for a consistent
    x_hat, so unlike eq. 4 it never pulls a consistent sample towards the blocky decode y. The
    stored coefficients are the file's: a fixed target, never differentiated."""
    planes = codec.component_planes(images, mode)
    if len(coefficients) != len(planes):
        raise ValueError(f"mode {mode!r} has {len(planes)} components, got coefficients for {len(coefficients)}")
    tables = codec.component_tables(qtables.to(images), images.shape[0], len(planes))
    total = images.new_zeros(())
    count = 0
    for c, (plane, stored) in enumerate(zip(planes, coefficients)):
        unquantized = codec.libjpeg_dct(codec.plane_blocks(plane)) / tables[:, c, None, None]
        if unquantized.shape != stored.shape:
            raise ValueError(
                f"component {c}: the image gives {tuple(unquantized.shape)} blocks, the file has {tuple(stored.shape)}"
            )
        outside = F.relu((unquantized - stored.detach().to(unquantized)).abs() - 0.5)
        total = total + outside.pow(2).sum()
        count += outside.numel()
    return total / count


def first_moment(samples: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Paper eq. 5: MSE between the mean of K samples per input and the original.

    samples [P, K, 3, H, W] (K draws of G for each of P inputs), x [P, 3, H, W]. Penalises the
    sample mean, not each sample, so G stays free to vary around the MMSE estimate."""
    return F.mse_loss(samples.mean(dim=1), x)


def second_moment(samples: torch.Tensor, x: torch.Tensor, xbar: torch.Tensor) -> torch.Tensor:
    """Paper eq. 7: mean |(x - xbar)^2 - Var_K(samples)|, per pixel and channel.

    xbar [P, 3, H, W] is a pretrained MMSE estimate (no gradient is taken through it); the
    variance over the K samples is unbiased (divides by K - 1), as an estimate of Var_z G."""
    target = (x - xbar.detach()).pow(2)
    return (target - samples.var(dim=1, correction=1)).abs().mean()


def std_maximisation(samples: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The authors' variability term: minus the mean per-pixel std over K samples.

    samples [P, K, 3, H, W]. std = sqrt(unbiased var + eps): the eps keeps the gradient finite when
    the samples coincide (a collapsed G), exactly where this term has to push."""
    return -(samples.var(dim=1, correction=1) + eps).sqrt().mean()


def perceptual(features_net: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Paper eq. 6: MSE between feature maps (VGG19 conv5_4) of G's output and the original."""
    with torch.no_grad():
        target = features_net(real)
    return F.mse_loss(features_net(fake), target)


def by_mode(consistency: Callable) -> Callable:
    """A consistency loss (`consistency_pixel` or `consistency_dct`) over a batch of mixed subsampling
    modes: once per mode, each weighted by its share of the batch. `targets` holds each mode's target
    (its decoded y or its stored coefficients), `groups` each mode's indices in the batch."""

    def mixed(images: torch.Tensor, targets: dict, qtables: torch.Tensor, groups: dict) -> torch.Tensor:
        total = images.new_zeros(())
        for mode, index in groups.items():
            term = consistency(images[index].float(), targets[mode], qtables[index], mode)
            total = total + term * index.numel() / images.shape[0]
        return total

    return mixed


SCHEDULE_KINDS = ("constant", "cosine")


@dataclass
class Schedule:
    """A loss weight (or learning rate) over training.

    "constant": `start` throughout. "cosine": from `start` to `end` along half a cosine,
    start + (end - start) * (1 - cos(pi * t)) / 2 with t = step / total clipped to [0, 1]; rises
    when end > start and falls when end < start, flat at both ends."""

    kind: str = "constant"  # "constant" or "cosine"
    start: float = 1.0  # value at step 0 (throughout, for constant)
    end: float = 1.0  # value at the last step (cosine)

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")

    def __call__(self, step: int, total: int) -> float:
        if self.kind == "constant":
            return self.start
        t = min(max(step / max(total, 1), 0.0), 1.0)
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * t)) / 2.0


@dataclass(frozen=True)
class Term:
    """One term of a training objective: the loop computes it at the steps it is due and adds it, times
    its weight, to its objective's loss. It is due where its weight is positive, its period divides
    the step, its variant is the one the config chose and the stage has its inputs at hand."""

    name: str  # the metric it is logged as (metrics.jsonl, the trackers)
    objective: str  # what it adds to: "posterior_mean" (stage posterior_mean), "spread" (stage spread), "critic" or "generator" (stage posterior)
    function: Callable[..., torch.Tensor]  # called with the inputs `needs` names, in that order
    needs: tuple[str, ...]  # the stage's inputs it takes (training.py: each stage's `inputs`)
    weight: str | None = None  # the LossConfig schedule that weighs it; None: weight 1 throughout
    every: str | None = None  # the LossConfig key of its period in steps; None: every step
    lazy: bool = False  # lazy regularisation: scaled up by its period, to weigh as much as if it ran every step
    weighs_itself: bool = False  # the function takes the weight as its last argument (R1's gamma) and returns the weighted value
    variant: tuple[str, str] | None = None  # (LossConfig key, value): computed only where the config chose this value
    watched: bool = False  # computed and logged even at weight 0 (or off its period) wherever its inputs are at hand


# Each stage's terms, in the order they are summed. The inputs, as training.py's stages make them:
# "posterior_mean": output (M(y)), x. "spread": log_spread (V's log variances), residual_luma (luma of x - M).
# "critic": real (x, differentiable where R1 runs), real_logits, fake_logits. "generator": fake (G's
# output), fake_logits (the frozen critic on it), x, y_by_mode, coefficients, qtables and groups (the
# batch by subsampling mode), samples (K draws for each of P inputs, drawn on the steps a wanted term
# takes them), samples_x (their originals), xbar (eq. 7's posterior mean for them), vgg.
TERMS = (
    Term("mse", "posterior_mean", F.mse_loss, ("output", "x")),
    Term("deviance", "spread", band_deviance, ("log_spread", "residual_luma")),
    Term("d_loss", "critic", adversarial_d, ("real_logits", "fake_logits")),
    Term("r1", "critic", r1_penalty, ("real", "real_logits"), "r1", "r1_every", lazy=True, weighs_itself=True),
    Term("g_adv", "generator", adversarial_g, ("fake_logits",), "adversarial", watched=True),
    Term("consistency", "generator", by_mode(consistency_pixel), ("fake", "y_by_mode", "qtables", "groups"),
         "consistency", variant=("consistency_kind", "pixel"), watched=True),
    Term("consistency", "generator", by_mode(consistency_dct), ("fake", "coefficients", "qtables", "groups"),
         "consistency", variant=("consistency_kind", "dct"), watched=True),
    Term("first_moment", "generator", first_moment, ("samples", "samples_x"), "first_moment", "moments_every",
         watched=True),
    Term("second_moment", "generator", second_moment, ("samples", "samples_x", "xbar"), "second_moment",
         "moments_every", variant=("second_moment_kind", "eq7")),
    Term("second_moment", "generator", std_maximisation, ("samples",), "second_moment", "moments_every",
         variant=("second_moment_kind", "std")),
    Term("perceptual", "generator", perceptual, ("vgg", "fake", "x"), "perceptual"),
)


def variants() -> dict[str, tuple[str, ...]]:
    """Each LossConfig key that chooses between terms, with the values its terms declare."""
    chosen: dict[str, tuple[str, ...]] = {}
    for term in TERMS:
        if term.variant is not None:
            key, value = term.variant
            chosen[key] = (*chosen.get(key, ()), value)
    return chosen
