"""Chroma subsampling: modes, component geometry, libjpeg's downsampling and fancy upsampling."""

import functools
import math

import torch
import torch.nn.functional as F

from .dct import BLOCK

# Chroma downsampling factors (vertical, horizontal) relative to luma; "gray" has no chroma.
SUBSAMPLING = {"4:4:4": (1, 1), "4:2:2": (1, 2), "4:2:0": (2, 2), "4:4:0": (2, 1)}
GRAY = "gray"
MODES = (*SUBSAMPLING, GRAY)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown subsampling {mode!r}; expected one of {', '.join(MODES)}")


def num_components(mode: str) -> int:
    check_mode(mode)
    return 1 if mode == GRAY else 3


def component_factors(mode: str, component: int) -> tuple[int, int]:
    """How many image pixels (rows, cols) one sample of `component` covers."""
    return (1, 1) if component == 0 or mode == GRAY else SUBSAMPLING[mode]


def component_size(height: int, width: int, factors: tuple[int, int]) -> tuple[int, int]:
    """Samples of a component as libjpeg computes them: ceil(image size / factor)."""
    return math.ceil(height / factors[0]), math.ceil(width / factors[1])


def block_grid(size: tuple[int, int]) -> tuple[int, int]:
    """Number of 8x8 blocks (rows, cols) that hold a component of `size` samples."""
    return math.ceil(size[0] / BLOCK), math.ceil(size[1] / BLOCK)


def pad_replicate(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Extend [N, h, w] to [N, height, width] by repeating the last row and column, as libjpeg does."""
    n, h, w = plane.shape
    if (h, w) == (height, width):
        return plane
    return F.pad(plane.unsqueeze(1), (0, width - w, 0, height - h), mode="replicate").squeeze(1)


@functools.lru_cache(maxsize=256)
def _bias_row(out_w: int, factors: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One row of `round_bias`, built once per (width, factors, dtype, device): the projection's
    exact checks ask for it every pass, on the device of the tiles."""
    count = factors[0] * factors[1]
    if factors == (2, 2):
        pattern = [1.0, 2.0]
    elif factors == (1, 2):
        pattern = [0.0, 1.0]
    else:
        pattern = [float(count // 2)] * 2
    return torch.tensor((pattern * ((out_w + 1) // 2))[:out_w], dtype=dtype, device=device)


def round_bias(out_h: int, out_w: int, factors: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """libjpeg's rounding offsets [1, out_h, out_w] of `downsample`: h2v2 adds 1,2,1,2.. per column,
    h2v1 adds 0,1,0,1.., others k/2 (0 where not subsampled). Public for the projection's lattice
    search, which predicts how a change of the pixels moves a sample."""
    return _bias_row(out_w, factors, like.dtype, like.device).view(1, 1, out_w).expand(1, out_h, out_w)


def downsampled_size(height: int, width: int, factors: tuple[int, int]) -> tuple[int, int]:
    """The size of `downsample`'s output for [N, height, width]: libjpeg's sample rows, and its
    sample columns extended to whole blocks (the input itself where not subsampled)."""
    if factors == (1, 1):
        return height, width
    return math.ceil(height / factors[0]), BLOCK * math.ceil(math.ceil(width / factors[1]) / BLOCK)


def downsample(plane: torch.Tensor, factors: tuple[int, int], libjpeg_rounding: bool) -> torch.Tensor:
    """Average factor-sized cells of [N, H, W] as libjpeg does: the image is first extended (last
    column repeated) to whole blocks of output columns, and (last row repeated) to whole cells of
    rows. So the output is [N, ceil(H / fv), 8 * ceil(ceil(W / fh) / 8)]; its extra columns average
    the repeated last pixel column, which is not a repeat of the last output column.

    With libjpeg_rounding, the forward value is libjpeg's integer result (inputs must be integral)
    and the gradient is that of the plain average (straight-through)."""
    if factors == (1, 1):
        return plane
    n, h, w = plane.shape
    out_h, out_w = downsampled_size(h, w, factors)
    padded = pad_replicate(plane, out_h * factors[0], out_w * factors[1])
    cells = padded.reshape(n, out_h, factors[0], out_w, factors[1])
    mean = cells.mean(dim=(2, 4))
    if not libjpeg_rounding:
        return mean
    count = factors[0] * factors[1]
    exact = torch.floor((cells.sum(dim=(2, 4)) + round_bias(out_h, out_w, factors, plane)) / count)
    return mean + (exact - mean).detach()


def _fancy_upsample_axis(plane: torch.Tensor, axis: int) -> torch.Tensor:
    """Double one axis with libjpeg's triangle filter: 3/4 of the nearer sample, 1/4 of the other."""
    n = plane.shape[axis]
    before = torch.cat([plane.narrow(axis, 0, 1), plane.narrow(axis, 0, n - 1)], dim=axis)
    after = torch.cat([plane.narrow(axis, 1, n - 1), plane.narrow(axis, n - 1, 1)], dim=axis)
    first = 0.75 * plane + 0.25 * before
    second = 0.75 * plane + 0.25 * after
    out = torch.stack([first, second], dim=axis + 1)
    shape = list(plane.shape)
    shape[axis] *= 2
    return out.reshape(shape)


def upsample(plane: torch.Tensor, factors: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """[N, h, w] chroma samples -> [N, height, width] with libjpeg's "fancy" (triangle) upsampling.

    As in libjpeg, a component at most 2 samples wide is widened by repeating each sample instead
    (its h2v1 and h2v2 filters need 3 columns), and for 4:2:0 its rows are repeated too."""
    if factors[1] == 2 and plane.shape[2] <= 2:
        return spread(plane, factors)[:, :height, :width]
    if factors[0] == 2:
        plane = _fancy_upsample_axis(plane, 1)
    if factors[1] == 2:
        plane = _fancy_upsample_axis(plane, 2)
    return plane[:, :height, :width]


def spread(plane: torch.Tensor, factors: tuple[int, int]) -> torch.Tensor:
    """Repeat each sample over its cell: the least-squares inverse of `downsample`'s average (on the
    extended image; `fold_padding` then takes the extension back)."""
    if factors == (1, 1):
        return plane
    return plane.repeat_interleave(factors[0], dim=1).repeat_interleave(factors[1], dim=2)


def fold_padding(padded: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Least-squares pull-back of a change made to an edge-replicated plane: each replica's change
    is averaged into the real row/column it copies, then the padding is cut off."""
    if padded.shape[2] > width:
        last = padded[:, :, width - 1 :].mean(dim=2, keepdim=True)
        padded = torch.cat([padded[:, :, : width - 1], last], dim=2)
    if padded.shape[1] > height:
        last = padded[:, height - 1 :].mean(dim=1, keepdim=True)
        padded = torch.cat([padded[:, : height - 1], last], dim=1)
    return padded
