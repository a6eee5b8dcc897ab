"""One vocabulary for numeric precision, torch-free: training's mixed_precision, sampling's and
evaluation's dtype all take these names ("auto" aside)."""

PRECISIONS = ("fp32", "bf16", "fp16")
ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's mixed_precision values


def torch_dtype(name: str):
    """The torch dtype of a name in PRECISIONS."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
