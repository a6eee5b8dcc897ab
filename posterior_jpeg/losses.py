"""The training objective (paper eq. 8-10), one small function per term, plus weight schedules.

Images are RGB in [0, 1] throughout, and every loss is in those units (an MSE of 1e-4 is an RMSE of
2.55 gray levels), so weights carry over between the pixel and feature terms unchanged.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .jpeg import codec


def adversarial_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, mean softplus(-D(G(z, y))): strong gradients while D wins."""
    return F.softplus(-fake_logits).mean()


def adversarial_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic loss, mean softplus(-D(x)) + mean softplus(D(G(z, y))): the logistic GAN loss."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_images: torch.Tensor, real_logits: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """gamma / 2 * E ||grad_x D(x)||^2 on real images (Mescheder et al.): keeps the critic flat on the data.

    real_images must have requires_grad set before D saw them. The gradient graph is kept
    (create_graph) so the penalty itself can be backpropagated into D's parameters."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
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
