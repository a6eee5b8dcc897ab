"""One vocabulary for numeric precision, torch-free at import: training's mixed_precision, sampling's
and evaluation's dtype all take these names, and "auto" is decided here, once, by what the hardware
multiplies natively.

Why a capability check and not "bf16 everywhere": on a CPU with bf16 matrix instructions (Intel AMX,
AVX512-BF16 on Xeon Cooper Lake / Sapphire Rapids and AMD Zen 4 and later, Arm's BF16 extension)
oneDNN runs bf16 convolutions several times faster than fp32; on a CPU without them it emulates bf16 and is
slower than fp32. Reduced precision goes with channels_last: oneDNN's bf16 kernels and tensor cores
want NHWC, and fp32 on a CPU gains little from it."""

import os
from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16", "fp16")
ACCELERATE_NAMES = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # Accelerate's mixed_precision values
CPU_INFO = "/proc/cpuinfo"


def torch_dtype(name: str):
    """The torch dtype of a name in PRECISIONS."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def onednn_bf16_flags() -> tuple[str, ...]:
    """The x86 bf16 instructions oneDNN may use under ONEDNN_MAX_CPU_ISA (or its old name
    DNNL_MAX_CPU_ISA): a cap below AVX512_CORE_BF16 leaves it none, so bf16 would be emulated."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    if cap in ("ALL", "DEFAULT", "") or cap.startswith("AVX512_CORE_AMX"):
        return ("amx_bf16", "avx512_bf16")
    if cap in ("AVX512_CORE_BF16", "AVX512_CORE_FP16"):
        return ("avx512_bf16",)
    return ()


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matrix instructions by name (amx_bf16, avx512_bf16, or Arm's bf16) that
    oneDNN may use, None when there are none (AVX2-only x86, older Arm, oneDNN capped below them, or a
    platform this cannot read)."""
    import torch

    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    for flag in onednn_bf16_flags():
        if capabilities.get(flag):
            return flag
    if os.path.exists(CPU_INFO):  # Linux on Arm lists the extension among each core's "Features"
        with open(CPU_INFO) as handle:
            for line in handle:
                if line.startswith("Features") and "bf16" in line.split(":", 1)[-1].split():
                    return "bf16"
    return None


@dataclass(frozen=True)
class Precision:
    """A decided precision: its name (one of PRECISIONS), whether the networks run channels_last, and
    why it was chosen, for the one line a command prints and the record it keeps."""

    name: str
    channels_last: bool
    reason: str

    def describe(self) -> str:
        layout = ", channels_last" if self.channels_last else ""
        return f"{self.name}{layout} ({self.reason})"


def choose_precision(requested: str, device_type: str) -> Precision:
    """requested: "auto" or a name in PRECISIONS; device_type: "cpu" or "cuda". auto is bf16 on CUDA
    and on a CPU with native bf16 units, fp32 on any other CPU."""
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {requested!r}")
        return Precision(requested, requested != "fp32", "as asked")
    if device_type == "cuda":
        return Precision("bf16", True, "auto: CUDA")
    units = cpu_bf16_units()
    if units:
        return Precision("bf16", True, f"auto: this CPU multiplies bf16 natively ({units})")
    return Precision("fp32", False, "auto: this CPU has no native bf16 units")
