"""8x8 block DCT: the orthonormal float transform, and libjpeg's exact integer one (jfdctint.c)."""

import functools
import math

import torch

BLOCK = 8


def dct_matrix(dtype=torch.float32, device=None) -> torch.Tensor:
    """D with D[k, n] = c(k) cos((2n + 1) k pi / 16): JPEG's DCT of a block B is D @ B @ D.T."""
    k = torch.arange(BLOCK, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(BLOCK, dtype=torch.float64).unsqueeze(0)
    d = torch.cos((2 * n + 1) * k * math.pi / (2 * BLOCK)) * math.sqrt(2 / BLOCK)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=None)
def block_dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The 2-D DCT of a flattened 8x8 block as a [64, 64] matrix (row k: coefficient 8u + v), built
    once per (dtype, device): the codec and the projection call it every pass, on any device."""
    d = dct_matrix(torch.float64)
    return torch.kron(d, d).to(dtype=dtype, device=device)


def dct_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """Forward DCT of [..., 8, 8] blocks (one 64x64 matmul: fast on CPU and GPU alike)."""
    k = block_dct_matrix(blocks.dtype, blocks.device)
    return (blocks.reshape(-1, BLOCK * BLOCK) @ k.T).reshape(blocks.shape)


def idct_blocks(coefficients: torch.Tensor) -> torch.Tensor:
    """Inverse of `dct_blocks` (the transform is orthonormal, so this is its transpose)."""
    k = block_dct_matrix(coefficients.dtype, coefficients.device)
    return (coefficients.reshape(-1, BLOCK * BLOCK) @ k).reshape(coefficients.shape)


def blockify(plane: torch.Tensor) -> torch.Tensor:
    """[N, H, W] with H, W multiples of 8 -> [N, H/8, W/8, 8, 8] (the layout jpeglib uses)."""
    n, h, w = plane.shape
    return plane.reshape(n, h // BLOCK, BLOCK, w // BLOCK, BLOCK).permute(0, 1, 3, 2, 4)


def unblockify(blocks: torch.Tensor) -> torch.Tensor:
    """Inverse of `blockify`."""
    n, hb, wb, _, _ = blocks.shape
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, hb * BLOCK, wb * BLOCK)


# libjpeg's accurate integer forward DCT (jfdctint.c, as kept by libjpeg-turbo): fixed-point constants
# with 13 fraction bits; pass 1 keeps 2 extra bits, the output is scaled up by 8.
_CONST_BITS = 13
_PASS1_BITS = 2
_FIX = {
    "0_298631336": 2446,
    "0_390180644": 3196,
    "0_541196100": 4433,
    "0_765366865": 6270,
    "0_899976223": 7373,
    "1_175875602": 9633,
    "1_501321110": 12299,
    "1_847759065": 15137,
    "1_961570560": 16069,
    "2_053119869": 16819,
    "2_562915447": 20995,
    "3_072711026": 25172,
}


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _islow_pass(d: torch.Tensor, first_pass: bool) -> torch.Tensor:
    """One 1-D pass of jfdctint.c along the last axis of an integer tensor."""
    d0, d1, d2, d3, d4, d5, d6, d7 = d.unbind(-1)
    tmp0, tmp7 = d0 + d7, d0 - d7
    tmp1, tmp6 = d1 + d6, d1 - d6
    tmp2, tmp5 = d2 + d5, d2 - d5
    tmp3, tmp4 = d3 + d4, d3 - d4
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    if first_pass:
        out0, out4 = (tmp10 + tmp11) << _PASS1_BITS, (tmp10 - tmp11) << _PASS1_BITS
        shift = _CONST_BITS - _PASS1_BITS
    else:
        out0, out4 = _descale(tmp10 + tmp11, _PASS1_BITS), _descale(tmp10 - tmp11, _PASS1_BITS)
        shift = _CONST_BITS + _PASS1_BITS
    z1 = (tmp12 + tmp13) * _FIX["0_541196100"]
    out2 = _descale(z1 + tmp13 * _FIX["0_765366865"], shift)
    out6 = _descale(z1 - tmp12 * _FIX["1_847759065"], shift)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _FIX["1_175875602"]
    tmp4 = tmp4 * _FIX["0_298631336"]
    tmp5 = tmp5 * _FIX["2_053119869"]
    tmp6 = tmp6 * _FIX["3_072711026"]
    tmp7 = tmp7 * _FIX["1_501321110"]
    z1 = z1 * -_FIX["0_899976223"]
    z2 = z2 * -_FIX["2_562915447"]
    z3 = z3 * -_FIX["1_961570560"] + z5
    z4 = z4 * -_FIX["0_390180644"] + z5
    out7 = _descale(tmp4 + z1 + z3, shift)
    out5 = _descale(tmp5 + z2 + z4, shift)
    out3 = _descale(tmp6 + z2 + z3, shift)
    out1 = _descale(tmp7 + z1 + z4, shift)
    return torch.stack([out0, out1, out2, out3, out4, out5, out6, out7], dim=-1)


def islow_fdct(samples: torch.Tensor) -> torch.Tensor:
    """libjpeg's JDCT_ISLOW forward DCT of level-shifted integer blocks [..., 8, 8]; output scaled by 8."""
    rows = _islow_pass(samples, first_pass=True)
    return _islow_pass(rows.transpose(-1, -2), first_pass=False).transpose(-1, -2)
