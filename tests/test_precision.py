"""Precision and bits: "auto" follows the CPU's bf16 units (forced on and off here), reduced precision
runs channels_last with the same result as NCHW, outputs stay exact in any precision, and a seed's
sample is the same bits whatever the run that made it (n, the other seeds, a resume), with the bundled
model on real camera files with EXIF orientations."""

import pytest
import torch

import posterior_jpeg as pj
from jpeg_fuzz import REALFILES
from posterior_jpeg import precision
from posterior_jpeg.models.generator import AnchoredGenerator, GeneratorConfig, build_generator
from posterior_jpeg.precision import Precision, choose_precision
from posterior_jpeg.sampler import PosteriorSampler

ORIENTED = [REALFILES / "cameras" / name for name in ("orientation__landscape_2.jpg", "orientation__portrait_6.jpg")]
needs_realfiles = pytest.mark.skipif(not all(p.is_file() for p in ORIENTED), reason=f"no real files in {REALFILES}")


def test_auto_follows_the_cpus_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "amx_bf16")
    assert choose_precision("auto", "cpu") == Precision("bf16", True, "auto: this CPU multiplies bf16 natively (amx_bf16)")
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    assert choose_precision("auto", "cpu") == Precision("fp32", False, "auto: this CPU has no native bf16 units")
    assert choose_precision("auto", "cuda").name == "bf16"
    assert choose_precision("bf16", "cpu") == Precision("bf16", True, "as asked")  # forced on without the units
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "avx512_bf16")
    assert choose_precision("fp32", "cpu") == Precision("fp32", False, "as asked")  # forced off with them
    with pytest.raises(ValueError, match="precision must be auto or one of"):
        choose_precision("int8", "cpu")


def test_the_units_are_read_off_this_cpu():
    """On x86 the answer is torch's own reading of CPUID; it must agree with the kernel's flags."""
    flags = set()
    with open(precision.CPU_INFO) as handle:
        for line in handle:
            if line.startswith(("flags", "Features")):
                flags |= set(line.split(":", 1)[1].split())
    expected = next((f for f in (*precision.onednn_bf16_flags(), "bf16") if f in flags), None)
    assert precision.cpu_bf16_units() == expected


@pytest.mark.parametrize("cap, allowed", [("AVX2", ()), ("avx512_core", ()), ("AVX512_CORE_BF16", ("avx512_bf16",)),
                                          ("AVX512_CORE_AMX", ("amx_bf16", "avx512_bf16")),
                                          ("ALL", ("amx_bf16", "avx512_bf16"))])
def test_a_onednn_isa_cap_below_bf16_leaves_no_native_units(monkeypatch, cap, allowed):
    """ONEDNN_MAX_CPU_ISA=AVX2 (how one runs an AVX2-only CPU's kernels on a newer one) makes auto fp32."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert precision.onednn_bf16_flags() == allowed
    if not allowed and not _arm_bf16():
        assert precision.cpu_bf16_units() is None
        assert choose_precision("auto", "cpu").name == "fp32"


def _arm_bf16() -> bool:
    with open(precision.CPU_INFO) as handle:
        return any(line.startswith("Features") and "bf16" in line.split(":", 1)[1].split() for line in handle)


def test_channels_last_and_bf16_give_the_nchw_fp32_result_within_tolerance(natural_rgb, pillow_jpeg):
    """The sampler's reduced-precision path (bf16 autocast on channels_last weights and inputs) against
    fp32 NCHW, same weights, same seeds; and both project to exact outputs."""
    torch.manual_seed(0)
    mean = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8, noise=False))
    detail = build_generator(GeneratorConfig(trunk="plain", features=16, blocks=2, table_embedding=8,
                                             full_res_features=4))
    generator = AnchoredGenerator(mean, detail, antithetic=True)
    jf = pj.read_jpeg(pillow_jpeg(natural_rgb(96, 128), quality=30))
    fp32 = PosteriorSampler(generator, "test", dtype=torch.float32, tile=64, overlap=16)
    assert next(fp32.generator.parameters()).is_contiguous()
    out32 = fp32.sample(jf, n=2, seed=3, project=False)
    fp32_cl = PosteriorSampler(generator, "test", dtype=torch.float32, tile=64, overlap=16)
    fp32_cl.generator.to(memory_format=torch.channels_last)
    assert (fp32_cl.sample(jf, n=2, seed=3, project=False) - out32).abs().max() < 1e-5  # layout alone: fp32 rounding
    bf16 = PosteriorSampler(generator, "test", dtype=torch.bfloat16, tile=64, overlap=16)
    conv = bf16.generator.detail.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    out16 = bf16.sample(jf, n=2, seed=3, project=False)
    assert out16.dtype == torch.float32
    assert (out16 - out32).abs().max() < 4 / 255 and (out16 - out32).abs().mean() < 0.3 / 255
    projected = bf16.sample(jf, n=2, seed=3)
    assert pj.metrics.coefficient_agreement(projected, jf).coefficients == 1.0  # the projection stays fp32/fp64


@needs_realfiles
@pytest.mark.parametrize("path,dtype", [(ORIENTED[0], "fp32"), (ORIENTED[1], "fp32"), (ORIENTED[0], "bf16")],
                         ids=["landscape_2-fp32", "portrait_6-fp32", "landscape_2-bf16"])
def test_a_seeds_sample_is_the_same_bits_whatever_the_run(path, dtype):
    """Convolution kernels pick their blocking by the batch's shape (AVX-512 CPUs differ between a
    batch of 1 and of 2 in the last bit), so runs of n = 1, 2, 3, 8 and a resumed run that draws only
    seeds 7 and 5 must each compute a seed's sample exactly as the others do, unrounded."""
    if dtype == "bf16" and precision.cpu_bf16_units() is None:
        pytest.skip("emulated bf16 on this CPU: minutes for what takes seconds where it is native")
    jf = pj.read_jpeg(path)
    sampler = PosteriorSampler.from_checkpoint(None, device="cpu", dtype=dtype, posterior_mean_flips=1)
    whole = sampler.sample(jf, n=8, seed=0, project=False)
    for n in (1, 2, 3):
        assert torch.equal(sampler.sample(jf, n=n, seed=0, project=False), whole[:n]), n
    resumed = torch.stack([s.image for s in sampler.samples(jf, [7, 5], project=False)])
    assert torch.equal(resumed, whole[[7, 5]])
    assert (whole[0] - whole[1]).abs().max() > 2 / 255  # the seeds differ
