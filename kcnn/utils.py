"""Small helpers shared by the API and the tests."""

import contextlib
import functools
import os
import re
import sys

import keras


@contextlib.contextmanager
def weightless_scope():
    """Build models for their shapes only.

    Inside a `keras.StatelessScope`, the JAX backend defers creating weight
    values, so counting the 1.5 billion parameters of `mlp` allocates
    nothing. Keras would initialise the deferred weights when the scope
    closes; here they are dropped instead, so models built inside must not
    be run afterwards. Other backends allocate the weights as usual.
    """
    from kcnn import keras_private  # no public way to forget deferred variables

    before = keras_private.uninitialized_variables()
    with keras.StatelessScope(initialize_variables=False):
        yield
    keras_private.set_uninitialized_variables(before)


def initializers_deferred():
    """A scope in which models whose weights are about to be replaced (by a weights file) are built without
    running their initializers, on JAX: each is a traced and compiled random draw there, more time than
    reading the file (densenet121: 5.8 s of build against 0.4 s). Call `initialize_the_rest(model)` once
    the file is loaded, for what it did not set (a fresh head). Elsewhere the build is as usual, and under a
    keras.distribution too (a variable takes its place on the devices when its initializer runs)."""
    if keras.backend.backend() == "jax" and keras.distribution.distribution() is None:
        return weightless_scope()
    return contextlib.nullcontext()


def initialize_the_rest(model):
    """Run the initializers of `model`'s variables that nothing has given a value (see
    `initializers_deferred`), in the order they were made."""
    from kcnn import keras_private

    for variable in model.variables:
        if not keras_private.has_value(variable):
            keras_private.initialize(variable)


def without_initializer_draws(load):
    """`load()`: a function that makes a model and assigns every weight from a file
    (`keras.saving.load_model`), run on JAX without the initializers whose values the file replaces (each
    is a traced and compiled random draw there: a googlenet run's model.keras took 22.9 s to load, 0.6 s
    without them). Inside a StatelessScope Keras defers them and records the assignments; they are applied once
    it closes, and a variable the file does not hold (a dropout's seed) gets its initializer's value, as it
    would have. Elsewhere, under a keras.distribution, and for a file holding an optimizer (Keras refuses to
    make its variables in the scope), it is `load()`."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return load()
    from kcnn import keras_private

    before = keras_private.uninitialized_variables()
    known = {id(variable) for variable in before}
    made = None
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            result = load()
            made = [v for v in keras_private.uninitialized_variables() if id(v) not in known]
            values = [scope.get_current_value(variable) for variable in made]
    except ValueError as error:  # a file with a compiled optimizer: Keras makes its variables from values
        if "stateless scope" not in str(error):
            raise
    finally:
        keras_private.set_uninitialized_variables(before)  # what the scope made is forgotten (given values below)
    if made is None:
        return load()
    for variable, value in zip(made, values):
        if value is None:
            keras_private.initialize(variable)
        else:
            variable.assign(value)
    return result


@contextlib.contextmanager
def atomic_path(destination):
    """The one way kcnn writes a file or a folder: yield a temporary path beside `destination`, and when the
    block ends without an error, flush it to disk and rename it into place (a folder: the old one is moved
    aside first, and put back if the rename fails). On an error the temporary goes and `destination` stays
    as it was. Readers never see half of anything.

    Temporaries are named so that `kcnn.rundir.remove_stale_temporaries` finds what a killed process left:
    a file `NAME.tmp.EXT` (`model.tmp.keras`, `epoch_1.tmp.weights.h5`), a folder inside a `.NAME.*` workspace."""
    import os
    import shutil
    import tempfile

    parent = os.path.dirname(destination) or "."
    name = os.path.basename(destination)
    root, dot, extension = name.partition(".")  # the whole extension: epoch_1.tmp.weights.h5
    workspace = None
    if dot and root:  # a file
        temporary = os.path.join(parent, f"{root}.tmp.{extension}")
    else:  # a folder (a SavedModel): built in a workspace of its own
        workspace = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
        temporary = os.path.join(workspace, name)
    try:
        yield temporary
        if not os.path.lexists(temporary):
            return  # the block chose to write nothing (a checkpoint that was not better)
        if os.path.isdir(temporary):
            old = os.path.join(workspace or parent, f".{name}.old")
            if os.path.isdir(destination):  # a folder cannot be replaced in one rename: move it aside first
                os.replace(destination, old)
            try:
                os.replace(temporary, destination)
            except OSError:
                if os.path.exists(old):
                    os.replace(old, destination)  # put the previous one back
                raise
        else:
            with open(temporary, "rb") as f:  # the flush makes the rename safe against a power cut too
                os.fsync(f.fileno())
            os.replace(temporary, destination)  # atomic on POSIX and Windows
    finally:
        if workspace:
            shutil.rmtree(workspace, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """`open(path, mode)` through `atomic_path`: the file appears whole when the block ends, or not at all."""
    with atomic_path(path) as temporary, open(temporary, mode, **kwargs) as f:
        yield f


# ---- mixed precision: the policy this machine trains fastest in ---------------------------------------------

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


def cpu_flags(cpuinfo=None):
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


def instruction_sets(flags):
    """The usual names of the instruction sets in `flags` (`cpu_flags`) that decide training speed, in
    SPEED_INSTRUCTION_SETS' order: ["AVX2", "AVX-512F", "AVX-512 BF16", "AMX"]."""
    return [name for flag, name in SPEED_INSTRUCTION_SETS if flag in (flags or ())]


def native_bfloat16(flags):
    """The usual names of the instruction sets in `flags` that compute in bfloat16: ["AMX", "AVX-512 BF16"]."""
    names = dict(SPEED_INSTRUCTION_SETS)
    return [names[flag] for flag in NATIVE_BFLOAT16 if flag in (flags or ())]


def precision_decision(*, backend=None, device=None, cpuinfo=None):
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


def mixed_precision_policy():
    """The Keras policy `--mixed-precision` trains in on this machine (`precision_decision`, which
    KCNN_MIXED_PRECISION=bfloat16|float16|float32 overrides). Where that is float32, one line on stderr says why,
    once per process."""
    policy, reason = precision_decision()
    if policy == "float32" and reason not in _told:
        _told.add(reason)
        print(f"kcnn: --mixed-precision: training stays in float32: {reason}", file=sys.stderr, flush=True)
    return policy
