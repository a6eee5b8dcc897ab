"""Consistency of images with a JPEG file, at two levels.

- 8-bit (`eight_bit_consistency`, which gives both `coefficient_agreement` and `consistency_rmse`
  from one re-encode): the images are rounded to 8-bit RGB (what a
  user saves; grayscale for a grayscale file) and compressed by libjpeg (the libjpeg-turbo bundled
  with jpeglib) with the file's own tables, per component, and sampling; the stored coefficients of
  that file are then compared with the original file's. What libjpeg prints while compressing (such
  as "Caution: quantization tables are too coarse for baseline JPEG", for tables above 255) becomes
  a LibjpegWarning naming the file.
- float (`float_consistency`): the exact DCT of the images as they are (no rounding, no clamping;
  float64 colour conversion, chroma averaged over libjpeg's cells and padding) lies inside every
  quantization interval of the file: the paper's notion.
"""

import contextlib
import os
import sys
import tempfile
import warnings
from abc import ABC, abstractmethod
from dataclasses import astuple, dataclass

import jpeglib
import numpy as np
import torch

from ..errors import LibjpegWarning
from ..jpeg import codec, subsampling
from ..jpeg.codec import component_planes, component_tables, plane_blocks
from ..jpeg.color import rgb_to_ycbcr
from ..jpeg.dct import dct_blocks
from ..jpeg.file import JpegFile, libjpeg_read_fd
from ..pixels import to_uint8

LIBJPEG_VERSION = "turbo210"


def _as_batch(images: torch.Tensor, jpeg: JpegFile) -> torch.Tensor:
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    channels = (1, 3) if jpeg.sampling == subsampling.GRAY else (3,)
    if batch.dim() != 4 or batch.shape[1] not in channels or tuple(batch.shape[-2:]) != tuple(jpeg.size):
        raise ValueError(f"images must be [N, {' or '.join(map(str, channels))}, {jpeg.height}, {jpeg.width}] "
                         f"for {jpeg.source}, got {tuple(images.shape)}")
    return batch


@contextlib.contextmanager
def _libjpeg_messages(source: str):
    """Capture what C code prints on stderr (file descriptor 2) inside the block and raise each
    distinct line as a LibjpegWarning naming `source`, instead of letting it reach the terminal
    unattributed (and past a --quiet)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        lines = capture.read().decode(errors="replace").splitlines()
    for line in dict.fromkeys(line.strip() for line in lines if line.strip()):
        warnings.warn(LibjpegWarning(source, line), stacklevel=3)


def _reencoded_coefficients(images: torch.Tensor, jpeg: JpegFile) -> list[tuple[list[np.ndarray], np.ndarray]]:
    """Round [N, 3, H, W] (or [3, H, W]; a grayscale file's may have one channel) in [0, 1] to 8 bits
    and compress each with libjpeg, using `jpeg`'s tables and sampling: (coefficient planes, tables)
    per image, read back by libjpeg from one unnamed temporary file that each image overwrites (no
    named file, no header walk: the stream is our own)."""
    pixels = to_uint8(_as_batch(images, jpeg).cpu())
    components = len(jpeg.coefficients)
    factors = [(1, 1)] if jpeg.sampling == subsampling.GRAY else [(1, 1)] * 3
    if jpeg.sampling != subsampling.GRAY:
        v, h = subsampling.SUBSAMPLING[jpeg.sampling]
        factors[0] = (v, h)  # jpeglib takes (vertical, horizontal) per component
    results = []
    with tempfile.TemporaryFile() as scratch:
        path = f"/dev/fd/{scratch.fileno()}"  # libjpeg's fopen(path, "wb") truncates it for each image
        for image in pixels:
            if jpeg.sampling == subsampling.GRAY:
                # gray pixels as they are; RGB through libjpeg's own RGB -> Y, as when it converts a
                # colour image to grayscale
                array = component_planes(image[None] / 255.0, subsampling.GRAY)[0][0, :, :, None].to(torch.uint8).numpy()
            else:
                array = image.permute(1, 2, 0).numpy()
            with jpeglib.version(LIBJPEG_VERSION), _libjpeg_messages(jpeg.source):
                spatial = jpeglib.from_spatial(np.ascontiguousarray(array))
                spatial.samp_factor = np.array(factors)
                spatial.write_spatial(path, qt=jpeg.qtables.astype(np.uint16), quant_tbl_no=np.arange(components))
            planes, tables, _, _ = libjpeg_read_fd(scratch.fileno(), jpeg.source)
            results.append((planes, tables))
    return results


@dataclass(frozen=True)
class _Shares(ABC):
    """A batch's coefficients and 8x8 blocks, counted; `coefficients` and `blocks` are the shares
    that pass a check, from the counts of those that fail it (`failing`)."""

    total_coefficients: int
    total_blocks: int

    @abstractmethod
    def failing(self) -> tuple[int, int]:
        """(coefficients, blocks) that fail the check."""

    @property
    def coefficients(self) -> float:
        return 1.0 - self.failing()[0] / self.total_coefficients

    @property
    def blocks(self) -> float:
        return 1.0 - self.failing()[1] / self.total_blocks


@dataclass(frozen=True)
class Agreement(_Shares):
    """How much of a batch's libjpeg re-encode equals the file: shares and the counts behind them."""

    differing_coefficients: int
    differing_blocks: int

    def failing(self) -> tuple[int, int]:
        return self.differing_coefficients, self.differing_blocks

    def __add__(self, other: "Agreement") -> "Agreement":
        return Agreement(*(a + b for a, b in zip(astuple(self), astuple(other))))


@dataclass(frozen=True)
class EightBitConsistency:
    """Both 8-bit figures of a batch from one re-encode: agreement per image and the paper's
    consistency RMSE per image [N] (gray levels, 0..255)."""

    agreements: tuple[Agreement, ...]
    rmse: torch.Tensor

    @property
    def agreement(self) -> Agreement:
        """The batch's agreement: the counts summed over its images."""
        return sum(self.agreements[1:], self.agreements[0])


def eight_bit_consistency(images: torch.Tensor, jpeg: JpegFile) -> EightBitConsistency:
    """Coefficient and block agreement, and consistency RMSE, of each image after one 8-bit libjpeg
    re-encode with the file's own tables and subsampling. The RMSE is between the decodes of the
    re-encode and of the file, both by our decoder (`codec.decode`, as `JpegFile.decode`), so
    identical coefficients give exactly 0."""
    reference = jpeg.decode(dtype=torch.float64)
    agreements, errors = [], []
    for planes, tables in _reencoded_coefficients(images, jpeg):
        differing_coefficients = total_coefficients = differing_blocks = total_blocks = 0
        for ours, stored in zip(planes, jpeg.coefficients):
            differ = ours != stored
            differing_coefficients += int(differ.sum())
            total_coefficients += differ.size
            differing_blocks += int(differ.reshape(-1, 64).any(axis=1).sum())
            total_blocks += differ.size // 64
        agreements.append(Agreement(total_coefficients=total_coefficients, total_blocks=total_blocks,
                                    differing_coefficients=differing_coefficients, differing_blocks=differing_blocks))
        coefficients = [torch.from_numpy(p.astype(np.float64))[None] for p in planes]
        again = codec.decode(coefficients, torch.from_numpy(tables).double(), jpeg.sampling, jpeg.size)[0]
        errors.append(((again - reference) * 255.0).pow(2).mean().sqrt())
    return EightBitConsistency(tuple(agreements), torch.stack(errors).float())


def coefficient_agreement(images: torch.Tensor, jpeg: JpegFile) -> Agreement:
    """Share of quantized coefficients, and of 8x8 blocks, identical after an 8-bit libjpeg re-encode
    of each image with the file's own tables and subsampling (see `eight_bit_consistency`, which
    gives the RMSE from the same re-encode)."""
    return eight_bit_consistency(images, jpeg).agreement


def consistency_rmse(images: torch.Tensor, jpeg: JpegFile) -> torch.Tensor:
    """The paper's consistency index per image [N]: RMSE in gray levels (0..255) between the decode
    of the libjpeg re-encode and the decode of the file (see `eight_bit_consistency`, which gives the
    agreement from the same re-encode)."""
    return eight_bit_consistency(images, jpeg).rmse


@dataclass(frozen=True)
class FloatConsistency(_Shares):
    """How much of a batch lies inside the file's quantization intervals before any rounding.

    violating_edge_blocks counts the violating blocks that libjpeg pads (the last block row or
    column of a component whose samples do not fill it): there the intervals can be out of reach
    of every image, since the padding repeats the last real row or column."""

    violating_coefficients: int
    violating_blocks: int
    violating_edge_blocks: int

    def failing(self) -> tuple[int, int]:
        return self.violating_coefficients, self.violating_blocks


def float_consistency(images: torch.Tensor, jpeg: JpegFile) -> FloatConsistency:
    """Float consistency of [N, 3, H, W] (or [3, H, W]; a grayscale file's may have one channel) images in [0, 1] (any float values): a
    coefficient is consistent when its exact DCT, divided by its step, lies within 1/2 of the stored
    value (a tolerance of 1e-9 steps absorbs float64 rounding)."""
    batch = _as_batch(images, jpeg).detach().double().cpu()
    ycc = rgb_to_ycbcr(batch.expand(-1, 3, -1, -1) * 255.0)  # one gray channel: R = G = B
    tables = component_tables(jpeg.qtable_tensor(dtype=torch.float64), 1, len(jpeg.coefficients))
    violating_coefficients = total_coefficients = violating_blocks = total_blocks = violating_edge_blocks = 0
    for c, stored in enumerate(jpeg.coefficient_tensors()):
        factors = subsampling.component_factors(jpeg.sampling, c)
        plane = subsampling.downsample(ycc[:, c], factors, libjpeg_rounding=False)
        coefficients = dct_blocks(plane_blocks(plane) - 128.0) / tables[:, c, None, None]
        outside = (coefficients - stored.double()).abs() > 0.5 + 1e-9
        blocks = outside.flatten(-2).any(-1)  # [N, hb, wb]
        height, width = subsampling.component_size(*jpeg.size, factors)
        edge = torch.zeros(blocks.shape[1:], dtype=torch.bool)
        edge[-1, :] |= height % 8 != 0
        edge[:, -1] |= width % 8 != 0
        violating_coefficients += int(outside.sum())
        total_coefficients += outside.numel()
        violating_blocks += int(blocks.sum())
        violating_edge_blocks += int((blocks & edge).sum())
        total_blocks += blocks.numel()
    return FloatConsistency(total_coefficients=total_coefficients, total_blocks=total_blocks,
                            violating_coefficients=violating_coefficients, violating_blocks=violating_blocks,
                            violating_edge_blocks=violating_edge_blocks)
