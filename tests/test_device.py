"""--dtype auto: which hardware computes bfloat16 natively, from /proc/cpuinfo flag lines and the oneDNN ISA cap.

``data/cpuinfo_avx512_bf16.txt`` was recorded on a project machine (AMD EPYC
with AVX512_BF16); ``data/cpuinfo_avx2.txt`` is a Zen 2 EPYC's flag line
(AVX2 and FMA, no AVX-512), the kind the "every CPU" issue was reported on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UserInputError
from runtime.execution.device import (
    Bf16Support,
    Device,
    choose_precision,
    cpu_amx_usable,
    cpu_bf16_support,
    cpu_flags,
    describe_cpu,
    gpu_bf16_support,
    onednn_isa_cap,
)

DATA = Path(__file__).parent / "data"
BF16_CPU = (DATA / "cpuinfo_avx512_bf16.txt").read_text()
AVX2_CPU = (DATA / "cpuinfo_avx2.txt").read_text()


def cpu(cpuinfo: str, cap: str | None = None, onednn_opts: bool = True) -> Device:
    return Device("CPU", "/device:CPU:0", bf16=cpu_bf16_support(cpu_flags(cpuinfo), cap, onednn_opts))


def test_recorded_flag_lines_are_the_two_kinds():
    assert {"avx2", "avx512f", "avx512_bf16"} <= cpu_flags(BF16_CPU)
    assert "avx2" in cpu_flags(AVX2_CPU) and not {"avx512f", "avx512_bf16", "amx_bf16"} & cpu_flags(AVX2_CPU)


def test_auto_is_bf16_on_a_cpu_with_avx512_bf16():
    precision = choose_precision("auto", cpu(BF16_CPU))
    assert precision.dtype == "bf16" and precision.warning is None
    assert precision.describe() == "bf16 (auto: this CPU has native bfloat16 (avx512_bf16))"


def test_auto_is_fp32_on_an_avx2_cpu():
    precision = choose_precision("auto", cpu(AVX2_CPU))
    assert precision.dtype == "fp32"
    assert precision.describe() == "fp32 (auto: this CPU has no native bfloat16)"


@pytest.mark.parametrize("cap", ["AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI", "AVX2_VNNI_2"])
def test_a_cap_below_the_bf16_isa_means_no_native_bf16(cap):
    assert choose_precision("auto", cpu(BF16_CPU, onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": cap}))).dtype == "fp32"


@pytest.mark.parametrize("cap", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX10_1_512", "ALL", "DEFAULT", ""])
def test_a_cap_at_or_above_the_bf16_isa_keeps_it(cap):
    assert choose_precision("auto", cpu(BF16_CPU, onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": cap}))).dtype == "bf16"


def test_the_older_dnnl_name_of_the_cap_counts_and_the_new_name_wins():
    assert onednn_isa_cap({"DNNL_MAX_CPU_ISA": "avx2"}) == "AVX2"
    assert onednn_isa_cap({"ONEDNN_MAX_CPU_ISA": "ALL", "DNNL_MAX_CPU_ISA": "AVX2"}) is None
    assert onednn_isa_cap({}) is None


def test_amx_needs_the_amx_level_of_the_cap():
    flags = {"avx2", "avx512f", "amx_bf16"}  # AMX without AVX512_BF16 (hypothetical): only AMX kernels compute bf16
    assert cpu_bf16_support(flags, None).native
    assert cpu_bf16_support(flags, "AVX512_CORE_AMX").native
    assert not cpu_bf16_support(flags, "AVX512_CORE_BF16").native


def test_an_unknown_cap_is_ignored_as_onednn_ignores_it():
    support = cpu_bf16_support(cpu_flags(BF16_CPU), "AVX9000")
    assert support.native and "not an ISA oneDNN knows" in support.why


def test_explicit_dtypes_mean_what_they_say():
    assert choose_precision("fp32", cpu(BF16_CPU)).describe() == "fp32 (--dtype fp32)"
    assert choose_precision("bf16", cpu(BF16_CPU)).warning is None
    slow = choose_precision("bf16", cpu(AVX2_CPU))
    assert slow.dtype == "bf16" and "about 10x slower than fp32" in slow.warning and "\n" not in slow.warning


def test_explicit_bf16_under_a_cap_that_onednn_cannot_serve_is_refused():
    """TensorFlow sends an AVX-512 CPU's bf16 convolutions to oneDNN, which fails under an AVX2 cap (measured)."""
    with pytest.raises(UserInputError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
        choose_precision("bf16", cpu(BF16_CPU, "AVX2"))
    assert choose_precision("bf16", cpu(BF16_CPU, "AVX2", onednn_opts=False)).dtype == "bf16"  # TF's own kernels
    assert choose_precision("bf16", cpu(BF16_CPU, "AVX512_CORE")).warning  # emulated by oneDNN: slow, but runs
    assert choose_precision("bf16", cpu(AVX2_CPU, "AVX2")).warning  # no AVX-512: TF's own kernels, slow


@pytest.mark.parametrize(("capability", "native"), [((8, 0), True), ((9, 0), True), ((8, 6), True),
                                                     ((7, 5), False), ((7, 0), False), (None, False)])
def test_gpus_from_ampere_on_compute_bf16(capability, native):
    assert gpu_bf16_support(capability).native is native


def test_gaudi_is_always_native():
    gaudi = Device("HPU", "/device:HPU:0", "GAUDI2", Bf16Support(True, "Gaudi computes bfloat16 natively"))
    assert choose_precision("auto", gaudi).describe() == "bf16 (auto: Gaudi computes bfloat16 natively)"


def test_describe_cpu_names_the_model_the_isa_and_the_cap():
    record = describe_cpu(BF16_CPU, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert record == {"cpu": "AMD EPYC (Zen 4, recorded on a project machine)", "isa": "avx2 avx512f avx512_bf16",
                      "onednn_max_cpu_isa": "AVX2", "native_bf16": "no"}
    assert describe_cpu(AVX2_CPU, {})["isa"] == "avx2"


AMX_FLAGS = cpu_flags(BF16_CPU) | {"amx_bf16", "amx_tile", "amx_int8"}  # a Sapphire Rapids line adds these


@pytest.mark.parametrize("flags, cap, onednn_opts, matmul", [
    (cpu_flags(AVX2_CPU), None, True, True), (cpu_flags(BF16_CPU), None, True, True),  # the matmul form wins
    (AMX_FLAGS, None, True, False), (AMX_FLAGS, "AVX512_CORE_AMX", True, False),  # oneDNN's kernel on AMX
    (AMX_FLAGS, "AVX512_CORE_BF16", True, True), (AMX_FLAGS, "AVX2", True, True),  # capped below AMX
    (AMX_FLAGS, None, False, True)])  # TF_ENABLE_ONEDNN_OPTS=0: no oneDNN, no AMX
def test_the_weight_gradient_is_onednns_own_where_it_runs_on_amx(flags, cap, onednn_opts, matmul):
    device = Device("CPU", "/device:CPU:0", bf16=cpu_bf16_support(flags, cap, onednn_opts),
                    amx=cpu_amx_usable(flags, cap, onednn_opts))
    assert device.prefers_matmul_filter_gradient is matmul
    assert not Device("GPU", "/device:GPU:0").prefers_matmul_filter_gradient
