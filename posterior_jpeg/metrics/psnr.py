"""PSNR against ground truth, on RGB and on luma Y, per image."""

import torch

# JPEG's (JFIF, full-range BT.601) luma weights: Y is the component the file stores at full resolution.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] as it is, [3, H, W] as a batch of one; anything else is an error."""
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W] or [3, H, W], got {tuple(images.shape)}")
    return batch


def luma(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in [0, 1] -> [N, 1, H, W] Y in [0, 1]."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def psnr(images: torch.Tensor, reference: torch.Tensor, min_mse: float = 1e-10) -> torch.Tensor:
    """[N] PSNR in dB of images against reference, both [N, C, H, W] in [0, 1] (peak 1).

    MSE is floored at min_mse (100 dB), so identical images give a finite number."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(dim=1).clamp_min(min_mse)
    return (-10.0 * torch.log10(mse)).float()


def psnr_y(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[N] PSNR on luma Y (as often reported for JPEG restoration)."""
    return psnr(luma(images.double()), luma(reference.double()))
