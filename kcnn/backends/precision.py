"""The mixed-precision policy this machine trains fastest in, read from its CPU's instruction sets."""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Collection

import keras


PRECISION_OVERRIDE = "KCNN_MIXED_PRECISION"  # bfloat16, float16, float32, or auto (the default)
_OVERRIDES = {"bfloat16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16", "float16": "mixed_float16",
              "mixed_float16": "mixed_float16", "float32": "float32"}
# The instruction sets that decide a CPU's training speed: (flag as Linux's /proc/cpuinfo names it, usual name).
SPEED_INSTRUCTION_SETS = (("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_bf16", "AVX-512 BF16"),
                          ("amx_bf16", "AMX"), ("asimd", "NEON"), ("sve", "SVE"), ("bf16", "BF16"))
# Those that compute in bfloat16 (x86: Cooper Lake, Sapphire Rapids' AMX, AMD Zen 4 on; Arm v8.6 on: Graviton3,
# Apple M2). Without one, bfloat16 is converted to float32 and back around every operation: airbench's training
# step ran 12x slower than in float32 on a 2-core AMD EPYC with AVX2 only.
NATIVE_BFLOAT16 = ("amx_bf16", "avx512_bf16", "bf16")
_told = set()  # the float32 reasons already printed by this process


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """This CPU's instruction-set flags, lower case as Linux names them ("avx2", "avx512_bf16", "amx_bf16"; on Arm
    "asimd", "bf16"), or None where they cannot be read.

    `cpuinfo`: the text of a /proc/cpuinfo to read them from (the first `flags` line, `Features` on Arm), so that
    tests can pass other CPUs'. By default this machine's, read once: /proc/cpuinfo on Linux, sysctl on macOS,
    None elsewhere (Windows)."""
    if cpuinfo is None:
        return _this_cpu_flags()
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() in ("flags", "features"):
            return frozenset(value.lower().split())
    return None


@functools.lru_cache(maxsize=None)
def _this_cpu_flags():
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                return cpu_flags(f.read())
        except OSError:
            return None
    if sys.platform == "darwin":
        import platform
        import subprocess

        def sysctl(name):
            try:
                return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                return ""

        if platform.machine() == "arm64":  # Apple silicon: NEON always, bfloat16 from the M2 on
            return frozenset({"asimd"} | ({"bf16"} if sysctl("hw.optional.arm.FEAT_BF16").strip() == "1" else set()))
        words = sysctl("machdep.cpu.features") + " " + sysctl("machdep.cpu.leaf7_features")  # Intel: "AVX2 ..."
        return frozenset(words.lower().split()) or None
    return None


def instruction_sets(flags: Collection[str] | None) -> list[str]:
    """The usual names of the instruction sets in `flags` (`cpu_flags`) that decide training speed, in
    SPEED_INSTRUCTION_SETS' order: ["AVX2", "AVX-512F", "AVX-512 BF16", "AMX"]."""
    return [name for flag, name in SPEED_INSTRUCTION_SETS if flag in (flags or ())]


def native_bfloat16(flags: Collection[str] | None) -> list[str]:
    """The usual names of the instruction sets in `flags` that compute in bfloat16: ["AMX", "AVX-512 BF16"]."""
    names = dict(SPEED_INSTRUCTION_SETS)
    return [names[flag] for flag in NATIVE_BFLOAT16 if flag in (flags or ())]


def precision_decision(*, backend: str | None = None, device: str | None = None,
                       cpuinfo: str | None = None) -> tuple[str, str]:
    """(policy, reason): the Keras policy `--mixed-precision` trains in on this machine, and why in a few words.

    - On a GPU, half precision: float16 for torch on CUDA (its usual choice) and on an Apple GPU; for TensorFlow
      and JAX, bfloat16 on NVIDIA GPUs that compute in it (compute capability 8.0 on: Ampere, Hopper) and float16
      on older ones (Keras' choice for GPUs). bfloat16 on a TPU or an Intel GPU.
    - On a CPU, "mixed_bfloat16" only where it computes in bfloat16 (AVX-512 BF16 or AMX on x86, BF16 on Arm; see
      NATIVE_BFLOAT16). Elsewhere, and where the CPU's flags cannot be read (Windows), "float32": emulated bfloat16
      is many times slower than float32.

    The environment variable KCNN_MIXED_PRECISION overrides the choice, for those who know their machine better:
    `bfloat16`, `float16` or `float32` (`auto`, or unset: decide as above); another value raises.

    `backend`, `device` ("cpu", "cuda", "cuda:8.0" with its compute capability, "gpu", "mps", "tpu", "xpu") and
    `cpuinfo` (the text of a /proc/cpuinfo) are for tests; by default the active backend, the device it computes
    on and this CPU's flags."""
    override = os.environ.get(PRECISION_OVERRIDE, "").strip()
    if override.lower() not in ("", "auto"):
        if override.lower() not in _OVERRIDES:
            from kcnn.errors import InvalidArgumentError

            raise InvalidArgumentError(f"{PRECISION_OVERRIDE} must be bfloat16, float16, float32 or auto. "
                                       f"Received: {PRECISION_OVERRIDE}={override!r}")
        return _OVERRIDES[override.lower()], f"set by {PRECISION_OVERRIDE}={override}"
    backend = backend or keras.backend.backend()
    kind, _, capability = (device or _compute_device(backend)).partition(":")
    if kind == "tpu":
        return "mixed_bfloat16", "a TPU computes in bfloat16"
    if kind == "xpu":
        return "mixed_bfloat16", "an Intel GPU computes in bfloat16"
    if kind == "mps":
        return "mixed_float16", "float16 on an Apple GPU"
    if kind != "cpu":
        if backend == "torch":
            return "mixed_float16", "float16 for torch on a GPU, its usual choice"
        version = re.match(r"(\d+)\.(\d+)", capability)
        if version and (int(version[1]), int(version[2])) >= (8, 0):
            return "mixed_bfloat16", f"a GPU of compute capability {capability} computes in bfloat16"
        return "mixed_float16", f"float16 on a GPU{' of compute capability ' + capability if capability else ''}"
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return "float32", (f"this CPU's instruction sets cannot be read here, and emulated bfloat16 is slower than "
                           f"float32; set {PRECISION_OVERRIDE}=bfloat16 if it has AVX-512 BF16, AMX or Arm BF16")
    native = native_bfloat16(flags)
    if native:
        return "mixed_bfloat16", f"native bfloat16 ({', '.join(native)})"
    arm = "asimd" in flags or "neon" in flags
    return "float32", (f"no native bfloat16 on this CPU (no {'BF16' if arm else 'AVX-512 BF16 or AMX'} in its "
                       f"flags), where float32 is faster")


def _compute_device(backend):
    """Where `backend` computes by default: "cpu", "cuda" (with ":8.0", its compute capability, where the backend
    says), "gpu", "mps", "tpu" or "xpu": the device of a fresh tensor."""
    x = keras.ops.zeros(())
    if backend == "torch":
        return x.device.type
    if backend == "tensorflow":
        kind = x.device.split(":")[-2].lower() if x.device else "cpu"  # /job:localhost/.../device:GPU:0
        if kind == "gpu":
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            capability = details.get("compute_capability")
            return f"cuda:{capability[0]}.{capability[1]}" if capability else "gpu"
        return kind
    if backend == "jax":
        device = next(iter(x.devices()))
        capability = getattr(device, "compute_capability", None)  # CUDA devices: "9.0"
        return f"cuda:{capability}" if device.platform == "gpu" and capability else device.platform
    return "cpu"


def mixed_precision_policy() -> str:
    """The Keras policy `--mixed-precision` trains in on this machine (`precision_decision`, which
    KCNN_MIXED_PRECISION=bfloat16|float16|float32 overrides). Where that is float32, one line on stderr says why,
    once per process."""
    policy, reason = precision_decision()
    if policy == "float32" and reason not in _told:
        _told.add(reason)
        print(f"kcnn: --mixed-precision: training stays in float32: {reason}", file=sys.stderr, flush=True)
    return policy
