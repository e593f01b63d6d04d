"""Which device runs the model (Gaudi, NVIDIA GPU or CPU) and whether it computes bfloat16 natively, asked once.

Gaudi's TensorFlow module must be loaded before any TensorFlow op runs, so
``select_device`` is called first thing after the flags are parsed.

Native bfloat16 decides ``--dtype auto``: where the hardware has no bf16
instructions, TensorFlow emulates them and a bf16 step runs about 10x slower
than float32 (docs/performance.md), so ``auto`` keeps such machines on fp32.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from common.errors import UserInputError

# oneDNN's ISA levels as bit masks (dnnl_cpu_isa_t): a cap allows a level when it holds all of the level's bits.
ONEDNN_ISA_MASKS = {
    "SSE41": 0x1, "AVX": 0x3, "AVX2": 0x7, "AVX2_VNNI": 0xF, "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27, "AVX512_CORE_VNNI": 0x67, "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF, "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF, "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF, "AVX512_CORE_AMX_FP16": 0x1FEF,
}
NO_CAP = ("", "ALL", "DEFAULT")
# Each CPU flag that gives oneDNN bfloat16 arithmetic, with the ISA level its kernels need.
BF16_CPU_FLAGS = (("avx512_bf16", "AVX512_CORE_BF16"), ("amx_bf16", "AVX512_CORE_AMX"))
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what logs and benchmark records name
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # NVIDIA Ampere and newer
BF16_EMULATED_SLOWDOWN = "about 10x slower than fp32"  # measured, docs/performance.md


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    why: str  # e.g. "this CPU has no native bfloat16"
    unrunnable: str | None = None  # why bf16 would fail outright here, not only run slowly


@dataclass(frozen=True)
class Device:
    kind: str  # "HPU", "GPU" or "CPU"
    name: str  # TensorFlow device string, e.g. "/device:HPU:0"
    gaudi_type: str | None = None  # e.g. "GAUDI2", only on Gaudi
    bf16: Bf16Support = Bf16Support(False, "unknown device")
    amx: bool = False  # a CPU whose AMX tiles oneDNN may use (cpu_amx_usable)

    @property
    def is_gaudi(self) -> bool:
        return self.kind == "HPU"

    @property
    def is_gaudi2(self) -> bool:
        return self.gaudi_type is not None and "GAUDI2" in self.gaudi_type.upper()

    @property
    def prefers_matmul_filter_gradient(self) -> bool:
        """oneDNN's weight-gradient convolution on CPUs is slower than its matmul (model/matmul_conv.py),
        except where it runs on AMX tiles: on a 2-core Xeon with AMX-BF16, TensorFlow's own weight gradient
        trained 1.126 against 1.075 images/s in bf16 and 0.239 against 0.234 in fp32 (docs/performance.md).

        GPUs' and Gaudi's own convolution kernels are not known to be slower, so they keep them.
        """
        return self.kind == "CPU" and not self.amx

    def needs_exact_bias_gradient(self, bf16: bool) -> bool:
        """bf16 on a CPU without native bf16 runs TensorFlow's own kernels, whose bf16 bias gradient is lost
        (model/layers.py, ExactBiasConv2D); there every bias gradient is summed in float32."""
        return bf16 and self.kind == "CPU" and not self.bf16.native

    def describe(self) -> str:
        extra = f" ({self.gaudi_type})" if self.gaudi_type else ""
        return f"{self.kind}{extra} {self.name}"


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why: ``--dtype auto`` resolved against the device."""

    dtype: str  # "bf16" or "fp32"
    why: str  # e.g. "auto: this CPU has no native bfloat16", or "--dtype fp32"
    warning: str | None = None  # an explicit bf16 that the hardware only emulates

    @property
    def bf16(self) -> bool:
        return self.dtype == "bf16"

    def describe(self) -> str:
        return f"{self.dtype} ({self.why})"


def choose_precision(requested: str, device: Device) -> Precision:
    """``auto`` is bf16 where the device computes it natively, fp32 elsewhere; the others mean what they say."""
    if requested == "auto":
        return Precision("bf16" if device.bf16.native else "fp32", f"auto: {device.bf16.why}")
    warning = None
    if requested == "bf16" and device.bf16.unrunnable:
        raise UserInputError(f"--dtype bf16 cannot run here: {device.bf16.unrunnable}; use --dtype auto or fp32")
    if requested == "bf16" and not device.bf16.native:
        warning = (f"--dtype bf16 on hardware without native bfloat16 ({device.bf16.why}) is emulated, "
                   f"{BF16_EMULATED_SLOWDOWN} and with less accurate weight gradients; --dtype auto would pick "
                   "fp32 here")
    return Precision(requested, f"--dtype {requested}", warning)


# CPUs -----------------------------------------------------------------------

def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown CPU"


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # not Linux: no flags known, so no native bf16 is claimed
        return ""


def onednn_opts_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether TensorFlow hands ops to oneDNN (TF_ENABLE_ONEDNN_OPTS, on unless set to 0)."""
    return environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip() != "0"


def onednn_isa_cap(environ: Mapping[str, str] = os.environ) -> str | None:
    """The ISA cap oneDNN honours (ONEDNN_MAX_CPU_ISA, or its older name DNNL_MAX_CPU_ISA); None if uncapped."""
    value = environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    return None if value in NO_CAP else value


def cpu_bf16_support(flags: set[str], isa_cap: str | None, onednn_opts: bool = True) -> Bf16Support:
    """Whether oneDNN may use this CPU's bfloat16 instructions, given its flags and an ISA cap.

    TensorFlow hands bfloat16 convolutions to oneDNN on any CPU with AVX-512,
    whatever the cap; oneDNN capped below AVX512_CORE then has no bfloat16
    convolution and the first step fails (measured on TF 2.15 and 2.21), so
    that case is refused up front. A CPU without AVX-512 gets TensorFlow's own
    (emulated) kernels instead and only runs slowly.
    """
    unrunnable = None
    cap_mask = ONEDNN_ISA_MASKS.get(isa_cap) if isa_cap else None
    core = ONEDNN_ISA_MASKS["AVX512_CORE"]
    if onednn_opts and "avx512f" in flags and cap_mask is not None and cap_mask & core != core:
        unrunnable = (f"ONEDNN_MAX_CPU_ISA={isa_cap} leaves oneDNN no bfloat16 convolution, yet TensorFlow hands it "
                      "this AVX-512 CPU's (unset the cap, or set TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own "
                      "slow bfloat16 kernels)")
    present = [(flag, level) for flag, level in BF16_CPU_FLAGS if flag in flags]
    if not present:
        return Bf16Support(False, "this CPU has no native bfloat16", unrunnable)
    names = "/".join(flag for flag, _ in present)
    if isa_cap is None:
        return Bf16Support(True, f"this CPU has native bfloat16 ({names})")
    if cap_mask is None:  # oneDNN ignores a value it does not know
        return Bf16Support(True, f"this CPU has native bfloat16 ({names}); ONEDNN_MAX_CPU_ISA={isa_cap} is "
                                 "not an ISA oneDNN knows")
    allowed = [flag for flag, level in present if ONEDNN_ISA_MASKS[level] & cap_mask == ONEDNN_ISA_MASKS[level]]
    if allowed:
        return Bf16Support(True, f"this CPU has native bfloat16 ({'/'.join(allowed)}) within "
                                 f"ONEDNN_MAX_CPU_ISA={isa_cap}")
    return Bf16Support(False, f"ONEDNN_MAX_CPU_ISA={isa_cap} keeps oneDNN from this CPU's bfloat16 ({names})",
                       unrunnable)


def cpu_amx_usable(flags: set[str], isa_cap: str | None, onednn_opts: bool = True) -> bool:
    """Whether oneDNN may run this CPU's convolutions on AMX tiles: the CPU has AMX-BF16, TensorFlow hands
    convolutions to oneDNN, and ONEDNN_MAX_CPU_ISA (if set to a level oneDNN knows) allows AVX512_CORE_AMX."""
    if not onednn_opts or "amx_bf16" not in flags:
        return False
    cap_mask = ONEDNN_ISA_MASKS.get(isa_cap) if isa_cap else None
    amx = ONEDNN_ISA_MASKS["AVX512_CORE_AMX"]
    return cap_mask is None or cap_mask & amx == amx


def describe_cpu(cpuinfo: str | None = None, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The CPU as logs and benchmark records name it: model, the ISA flags that matter here, and the cap."""
    cpuinfo = read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = cpu_flags(cpuinfo)
    cap = onednn_isa_cap(environ)
    return {"cpu": cpu_model(cpuinfo), "isa": " ".join(f for f in ISA_FLAGS if f in flags) or "none",
            "onednn_max_cpu_isa": cap or "none",
            "native_bf16": "yes" if cpu_bf16_support(flags, cap).native else "no"}


# GPUs and Gaudi ---------------------------------------------------------------

def gpu_bf16_support(compute_capability: tuple[int, int] | None) -> Bf16Support:
    if compute_capability is None:
        return Bf16Support(False, "the GPU's compute capability is unknown")
    major, minor = compute_capability
    native = tuple(compute_capability) >= BF16_MIN_COMPUTE_CAPABILITY
    verb = "has" if native else "has no"
    return Bf16Support(native, f"GPU compute capability {major}.{minor} {verb} native bfloat16")


def _load_gaudi() -> Device | None:
    """Load the Habana module if it is installed; None when it is not."""
    try:
        habana = importlib.import_module("habana_frameworks.tensorflow")
    except ImportError:
        return None
    habana.load_habana_module()
    habana_device = importlib.import_module("habana_frameworks.tensorflow.habana_device")
    return Device("HPU", "/device:HPU:0", str(habana_device.get_type()),
                  Bf16Support(True, "Gaudi computes bfloat16 natively"))


def select_device(no_hpu: bool) -> Device:
    if not no_hpu:
        gaudi = _load_gaudi()
        if gaudi is not None:
            return gaudi
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return Device("GPU", "/device:GPU:0", bf16=gpu_bf16_support(details.get("compute_capability")))
    flags, cap, onednn_opts = cpu_flags(read_cpuinfo()), onednn_isa_cap(), onednn_opts_enabled()
    return Device("CPU", "/device:CPU:0", bf16=cpu_bf16_support(flags, cap, onednn_opts),
                  amx=cpu_amx_usable(flags, cap, onednn_opts))
