"""Periodic artefacts: how far the luma spectrum peaks at the frequencies of a 2-, 4- or 8-pixel pattern.

A pixel-shuffle mesh or a hatch repeats with a period of a few pixels and puts a sharp peak into
the spectrum, while a natural photo's spectrum is smooth there. The score of a period p and an
orientation is the spectrum's magnitude at that frequency over the median magnitude of a square
ring of frequencies around it: 1 to 3 for most photos (the largest of the 4 orientations), far
above for a pattern. JPEG's block grid earns nothing here (flat 8-pixel blocks have no energy at
multiples of 1/8 cycles per pixel): `blockiness` measures it.
"""

import math

import torch

from .psnr import as_batch, luma

PERIODS = (2, 4, 8)
# Direction of the frequency -> its (vertical, horizontal) components in units of 1/p cycles per pixel:
# a "horizontal" frequency repeats along x (vertical stripes), a "diagonal" one along x + y.
ORIENTATIONS = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1), "antidiagonal": (1, -1)}
RING_INNER = 3  # a windowed sinusoid's peak spans +-2 frequency bins: the ring starts outside it
RING_OUTER = 8


def periodic_peaks(images: torch.Tensor, periods: tuple[int, ...] = PERIODS) -> torch.Tensor:
    """[N, len(periods), 4] peak-to-median ratio of images [N, 3, H, W] (or [3, H, W], N = 1) in [0, 1],
    per period and orientation (the order of ORIENTATIONS).

    Luma minus its mean is tapered by a Hann window (the image's borders make no spectral cross)
    and zero-padded to a multiple of every period, so each pattern frequency falls on a bin."""
    y = luma(as_batch(images).double())[:, 0]
    y = y - y.mean(dim=(-2, -1), keepdim=True)
    height, width = y.shape[-2:]
    if min(height, width) < 2 * RING_OUTER:
        raise ValueError(f"periodic peaks need images of at least {2 * RING_OUTER} pixels a side, got {tuple(images.shape)}")
    window = torch.hann_window(height, periodic=False, dtype=y.dtype)[:, None] * torch.hann_window(
        width, periodic=False, dtype=y.dtype
    )
    multiple = math.lcm(*periods)
    size = (math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple)
    spectrum = torch.fft.fft2(y * window.to(y.device), s=size).abs()
    offsets = torch.arange(-RING_OUTER, RING_OUTER + 1, device=y.device)
    dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
    ring = torch.maximum(dy.abs(), dx.abs()) >= RING_INNER
    dy, dx = dy[ring], dx[ring]
    scores = torch.empty(y.shape[0], len(periods), len(ORIENTATIONS), dtype=y.dtype)
    for i, period in enumerate(periods):
        for j, (fy, fx) in enumerate(ORIENTATIONS.values()):
            ky, kx = fy * size[0] // period, fx * size[1] // period
            around = spectrum[:, (ky + dy) % size[0], (kx + dx) % size[1]]
            scores[:, i, j] = spectrum[:, ky % size[0], kx % size[1]] / around.median(dim=1).values
    return scores.float()
