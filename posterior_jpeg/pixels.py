"""8-bit pixels and [0, 1] floats: each conversion written once. Rounding is to the nearest level
(ties to even), as libjpeg's and Pillow's 8-bit saves of these floats do."""

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1], any layout -> the uint8 levels an 8-bit file stores (clamped, rounded)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any layout) -> float32 k / 255 on their device: the values that the codec and
    the losses take for 8-bit pixels."""
    return images.float() / 255.0


def round_to_8_bits(images: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] -> float32 on the 8-bit grid k / 255: what saving as an 8-bit file keeps."""
    return to_unit_float(to_uint8(images))


def to_chw_float(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] (a decoded image) -> float32 [C, H, W] in k / 255."""
    return to_unit_float(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [0, 1] -> uint8 [H, W, C] on the host, to save or show."""
    return to_uint8(image).permute(1, 2, 0).cpu().numpy()
