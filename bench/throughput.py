"""Training and inference throughput (images/s) of kcnn on each Keras backend,
against keras.applications and native PyTorch, on this CPU.

    python bench/throughput.py                                # 5 models x 3 backends (long)
    python bench/throughput.py --models resnet50 --backends torch --rounds 5
    python bench/throughput.py --backends torch --data-format both   # kcnn NHWC and NCHW on torch
    python bench/throughput.py --memory                       # peak resident memory while training
    python bench/throughput.py --profile --models resnet50    # top torch ops of a training step
    python bench/throughput.py --backends jax --fast-depthwise  # adds kcnn.backends.jax_cpu's depthwise on JAX
    python bench/throughput.py --backends torch --keras-layers  # adds kcnn without kcnn.backends.torch_fast's kernels
    python bench/throughput.py --jit-compile both             # adds kcnn with the other jit_compile setting
    python bench/throughput.py --quick                        # smoke test: batch 2, 1 step, 2 rounds

What runs, and how it is timed:

- kcnn: `kcnn.build(name, num_classes=...)`, compiled with SGD (momentum 0.9)
  and SparseCategoricalCrossentropy(from_logits=True), Keras' defaults
  otherwise (so no XLA on TensorFlow with a CPU, XLA always on JAX, eager on
  torch). Training is what a Keras user runs: `fit()` on an in-memory array
  of --steps batches (`steps_per_epoch=--steps`, one epoch a round); inference
  is `predict()` on the same array (`batch_size` = the batch).
- keras.applications (ResNet50, MobileNetV2; weights=None, logits): the same.
- native PyTorch (torch worker only): the modules of bench/torch_models.py,
  a plain loop per batch (zero_grad, forward, cross-entropy, backward, SGD
  step with momentum 0.9) and `torch.inference_mode()` forward passes, on the
  same batches as NCHW tensors. Each one's parameter count must equal kcnn's.

Keras' backend is fixed per process, so each backend runs in its own worker
process, one after another. In a worker every implementation is warmed up
first (compilation and tracing are not timed), then the implementations take
turns round by round (round 1 kcnn, round 1 keras.applications, round 1
native, round 2 kcnn, ...); a round times --steps training steps, then --steps
inference batches. Tables give the median over rounds (and the range); ratios are the median of
the per-round ratios (paired: the two ran one after the other in the same round).
Threads are the installed defaults (not tuned); the torch worker reports
`torch.get_num_threads()`.

--memory measures, in one fresh process per backend and model (resnet50 and
mobilenet_v2 unless --models says otherwise), the peak resident set
(`ru_maxrss`) of `fit()` on --steps batches (default 3) of 16 images; "after
imports" is the peak once Keras and kcnn (or torch alone, for native) are
imported, before the model is built.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")
# model: (input height/width/channels, classes, keras.applications class or None)
MODELS = {
    "lenet5": ((32, 32, 1), 10, None),
    "cifar_resnet20": ((32, 32, 3), 10, None),
    "resnet50": ((224, 224, 3), 1000, "ResNet50"),
    "mobilenet_v2": ((224, 224, 3), 1000, "MobileNetV2"),
    "efficientnet_lite0": ((224, 224, 3), 1000, None),
}
MEMORY_MODELS = "resnet50,mobilenet_v2"
DEFAULT_BATCH = {32: 128, 224: 16}  # by input size
# Training steps (and inference batches) a round: enough that fit()'s own cost per call (tens of ms;
# 0.1-0.2 s on TensorFlow) is small against the steps, as it is in an epoch of real data.
DEFAULT_STEPS = {"lenet5": 100, "cifar_resnet20": 10, "resnet50": 3, "mobilenet_v2": 3, "efficientnet_lite0": 3}
LEARNING_RATE = 0.01


def batch_size(args, model):
    return args.batch_size or DEFAULT_BATCH[MODELS[model][0][0]]


def steps(args, model):
    return args.steps or DEFAULT_STEPS[model]


# ---------------------------------------------------------------------------
# Implementations: each gives `train(n)` and `infer(n)` over its own n batches


class KerasImplementation:
    """A Keras model trained with fit() and run with predict(), as a Keras user does."""

    def __init__(self, label, model, data_format, batch, n_steps, jit_compile="auto"):
        import keras

        self.label, self.model, self.data_format, self.batch = label, model, data_format, batch
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((n_steps * batch,) + tuple(model.input_shape[1:])).astype("float32")
        self.y = rng.integers(0, model.output_shape[-1], n_steps * batch)

    def train(self, n):
        self.model.fit(self.x[:n * self.batch], self.y[:n * self.batch], batch_size=self.batch, epochs=1,
                       steps_per_epoch=n, shuffle=False, verbose=0)

    def infer(self, n):
        self.model.predict(self.x[:n * self.batch], batch_size=self.batch, verbose=0)

    def describe(self):
        return {"jit_compile": str(self.model.jit_compile)}


class NativeTorchImplementation:
    """A torch.nn.Module with a plain PyTorch training loop."""

    def __init__(self, module, input_shape, classes, batch, n_steps):
        import torch

        self.label, self.model, self.data_format, self.batch = "native torch", module, "channels_first", batch
        self.optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=0.9)
        rng = np.random.default_rng(0)
        height, width, channels = input_shape
        x = rng.standard_normal((n_steps * batch, channels, height, width)).astype("float32")
        y = rng.integers(0, classes, n_steps * batch)
        self.x = list(torch.from_numpy(x).split(batch))
        self.y = list(torch.from_numpy(y).split(batch))

    def train(self, n):
        import torch

        self.model.train()
        for x, y in zip(self.x[:n], self.y[:n]):
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
        loss.item()

    def infer(self, n):
        import torch

        self.model.eval()
        with torch.inference_mode():
            for x in self.x[:n]:
                self.model(x).numpy()

    def describe(self):
        return {}


def native_module(name, classes):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import torch_models

    return {
        "lenet5": lambda: torch_models.LeNet5(classes),
        "cifar_resnet20": lambda: torch_models.CifarResNet(20, classes),
        "resnet50": lambda: torch_models.BottleneckResNet((3, 4, 6, 3), classes),
        "mobilenet_v2": lambda: torch_models.MobileNetV2(classes, dropout=0.0),  # kcnn's has no dropout
        "efficientnet_lite0": lambda: torch_models.EfficientNetLite0(classes),
    }[name]()


def build_keras(label, name, data_format):
    """kcnn's model or keras.applications', built in `data_format`."""
    import keras

    import kcnn

    shape, classes, application = MODELS[name]
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(data_format)
    try:
        if label == "kcnn":
            return kcnn.build(name, num_classes=classes)
        return getattr(keras.applications, application)(weights=None, classes=classes, classifier_activation=None)
    finally:
        keras.config.set_image_data_format(previous)


def parameter_check(name, keras_model, module):
    """kcnn's trainable weights and BN statistics against the module's parameters and buffers."""
    kcnn_trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
    kcnn_frozen = sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights)
    native_parameters = sum(p.numel() for p in module.parameters())
    native_statistics = sum(b.numel() for key, b in module.named_buffers()
                            if key.endswith(("running_mean", "running_var")))
    check = {"model": name, "kcnn_trainable": kcnn_trainable, "native_parameters": native_parameters,
             "kcnn_bn_statistics": kcnn_frozen, "native_bn_statistics": native_statistics}
    print(f"parameters {name}: kcnn {kcnn_trainable:,} trainable + {kcnn_frozen:,} BN statistics; "
          f"native torch {native_parameters:,} parameters + {native_statistics:,} running statistics",
          file=sys.stderr, flush=True)
    assert kcnn_trainable == native_parameters and kcnn_frozen == native_statistics, check
    return check


def implementations(name, backend, args):
    """The implementations of `name` this worker times, and the parameter check."""
    shape, classes, application = MODELS[name]
    batch, n_steps = batch_size(args, name), steps(args, name)
    formats = ("channels_last", "channels_first") if args.data_format == "both" else (args.data_format,)
    found, check = [], None
    for data_format in formats:
        for label in ("kcnn", "keras.applications") if application else ("kcnn",):
            model = build_keras(label, name, data_format)
            found.append(KerasImplementation(label, model, data_format, batch, n_steps))
            if label == "kcnn" and args.keras_layers and backend == "torch":
                from kcnn.backends import torch_fast

                os.environ[torch_fast.ENV_SWITCH] = "0"  # kcnn.build without kcnn.backends.torch_fast's kernels
                try:
                    plain = build_keras(label, name, data_format)
                finally:
                    del os.environ[torch_fast.ENV_SWITCH]
                found.append(KerasImplementation("kcnn, Keras layers", plain, data_format, batch, n_steps))
            if label == "kcnn" and args.jit_compile == "both":
                other = not model.jit_compile  # what "auto" did not choose
                found.append(KerasImplementation(f"kcnn, jit_compile={other}", build_keras(label, name, data_format),
                                                 data_format, batch, n_steps, jit_compile=other))
            if label == "kcnn" and args.fast_depthwise:
                from kcnn.backends import jax_cpu

                fast = jax_cpu.with_fast_depthwise(model)  # the same model where it does not pay
                if fast is not model:
                    found.append(KerasImplementation("kcnn, fast depthwise", fast, data_format, batch, n_steps))
    if backend == "torch" and not args.no_native:
        import torch

        torch.manual_seed(0)
        module = native_module(name, classes)
        check = parameter_check(name, found[0].model, module)
        found.append(NativeTorchImplementation(module, shape, classes, batch, n_steps))
    return found, check


# ---------------------------------------------------------------------------
# Workers (one process per backend)


def timed(call):
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def worker(backend, args):
    import keras

    info = {"backend": backend, "keras": keras.__version__, "cpu_count": os.cpu_count()}
    if backend == "torch":
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    elif backend == "tensorflow":
        import tensorflow as tf

        info.update(tensorflow=tf.__version__,
                    tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
                    tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads())
    elif backend == "jax":
        import jax

        info.update(jax=jax.__version__, jax_devices=str(jax.devices()))
    print("INFO " + json.dumps(info), flush=True)
    for name in args.models.split(","):
        keras.utils.set_random_seed(0)
        try:
            found, check = implementations(name, backend, args)
        except Exception as error:  # a parameter mismatch, a format this backend lacks: say so, go on
            print("FAILED " + json.dumps(dict(model=name, backend=backend, error=f"{type(error).__name__}: {error}")),
                  flush=True)
            continue
        if check:
            print("PARAMS " + json.dumps(check), flush=True)
        n = steps(args, name)
        warm = min(n, args.warmup)
        for impl in found:
            started = time.perf_counter()
            impl.train(warm)
            impl.infer(warm)
            print(f"{backend} {name} {impl.label} {impl.data_format}: warm-up {time.perf_counter() - started:.1f} s",
                  file=sys.stderr, flush=True)
        train = {id(impl): [] for impl in found}
        infer = {id(impl): [] for impl in found}
        for round_ in range(args.rounds):
            for impl in found:
                train[id(impl)].append(n * impl.batch / timed(lambda: impl.train(n)))
                infer[id(impl)].append(n * impl.batch / timed(lambda: impl.infer(n)))
                print(f"{backend} {name} {impl.label} {impl.data_format} round {round_ + 1}: "
                      f"train {train[id(impl)][-1]:.1f}, inference {infer[id(impl)][-1]:.1f} images/s",
                      file=sys.stderr, flush=True)
        for impl in found:
            print("RESULT " + json.dumps(dict(
                model=name, backend=backend, implementation=impl.label, data_format=impl.data_format,
                batch=impl.batch, steps=n, train=train[id(impl)], inference=infer[id(impl)],
                **impl.describe())), flush=True)
        del found
        keras.backend.clear_session()


def memory_worker(backend, name, args):
    """Peak resident set of training `name` for a few steps; one model a process."""
    kilobytes = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731 (KiB on Linux)
    shape, classes, _ = MODELS[name]
    batch, n = args.batch_size or 16, args.steps or 3
    for module in ("torch",) if backend == "native" else ("keras", "kcnn"):
        importlib.import_module(module)
    after_imports = kilobytes()
    if backend == "native":
        impl = NativeTorchImplementation(native_module(name, classes), shape, classes, batch, n)
    else:
        impl = KerasImplementation("kcnn", build_keras("kcnn", name, "channels_last"), "channels_last", batch, n)
    impl.train(n)
    print("MEMORY " + json.dumps(dict(backend=backend, model=name, batch=batch, steps=n,
                                      after_imports_mb=after_imports / 1024, peak_mb=kilobytes() / 1024)),
          flush=True)


def profile_worker(args):
    """torch.profiler on a few training steps (train_on_batch for Keras) of each implementation."""
    import torch

    name = args.models.split(",")[0]
    args.data_format = "both"
    found = [impl for impl in implementations(name, "torch", args)[0] if impl.label != "keras.applications"]
    tables = {}
    for impl in found:
        if isinstance(impl, KerasImplementation):
            x, y = impl.x[:impl.batch], impl.y[:impl.batch]
            step = lambda: impl.model.train_on_batch(x, y)  # noqa: E731 (the step fit() runs)
        else:
            step = lambda: impl.train(1)  # noqa: E731
        for _ in range(2):
            step()
        n = args.steps or 3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            wall = timed(lambda: [step() for _ in range(n)])
        # per step: self CPU ms and calls
        ops = {event.key: (event.self_cpu_time_total / 1000 / n, event.count / n) for event in profiler.key_averages()}
        tables[f"{impl.label} {impl.data_format}"] = dict(wall_ms=1000 * wall / n, ops=ops)
    print("PROFILE " + json.dumps(dict(model=name, batch=found[0].batch, steps=n, tables=tables)), flush=True)


# ---------------------------------------------------------------------------
# The parent: runs the workers and prints the tables


def run_worker(backend, extra, args):
    """Run this script as a worker; return its tagged stdout lines."""
    keras_backend = "torch" if backend in ("native", "profile") else backend
    env = dict(os.environ, KERAS_BACKEND=keras_backend, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), *extra, "--models", args.models,
               "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--data-format", args.data_format]
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value:
            command += [flag, str(value)]
    for flag in ("no_native", "fast_depthwise", "keras_layers"):
        if getattr(args, flag):
            command.append("--" + flag.replace("_", "-"))
    command += ["--jit-compile", args.jit_compile]
    done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        print(f"worker {' '.join(extra)} failed with exit status {done.returncode}", file=sys.stderr)
    lines = {}
    for line in done.stdout.splitlines():
        tag, _, payload = line.partition(" ")
        if tag in ("INFO", "RESULT", "PARAMS", "MEMORY", "PROFILE", "FAILED"):
            lines.setdefault(tag, []).append(json.loads(payload))
    return lines


def median_range(values):
    number = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.1f}"  # noqa: E731
    return f"{statistics.median(values):,.1f} ({number(min(values))}-{number(max(values))})"


def print_throughput(results, infos, checks):
    print("Worker settings: " + "; ".join(
        ", ".join(f"{k}={v}" for k, v in info.items()) for info in infos))
    print()
    if checks:
        print("| model | kcnn trainable | native torch parameters | kcnn BN statistics | native running statistics |")
        print("|---|---:|---:|---:|---:|")
        for c in checks:
            print(f"| {c['model']} | {c['kcnn_trainable']:,} | {c['native_parameters']:,} | "
                  f"{c['kcnn_bn_statistics']:,} | {c['native_bn_statistics']:,} |")
        print()
    print("Images/s, median over rounds (min-max). Keras: `fit()` / `predict()` on in-memory batches; "
          "native torch: a plain training loop / `torch.inference_mode()` forward.")
    print()
    print("| model | batch | backend | implementation | timed | data format | jit_compile | training images/s | "
          "inference images/s |")
    print("|---|---:|---|---|---|---|---|---:|---:|")
    for r in results:
        xla = {"True": "yes", "False": "no"}.get(r.get("jit_compile"), "-")
        timed = "loop / inference_mode" if r["implementation"] == "native torch" else "fit / predict"
        print(f"| {r['model']} | {r['batch']} | {r['backend']} | {r['implementation']} | {timed} | "
              f"{r['data_format']} | {xla} | {median_range(r['train'])} | {median_range(r['inference'])} |")
    print()
    # Ratios: kcnn against keras.applications (same backend and format) and against native torch
    index = {(r["model"], r["backend"], r["implementation"], r["data_format"]): r for r in results}
    rows = []
    for r in results:
        if not r["implementation"].startswith("kcnn"):
            continue
        refs = [("keras.applications", index.get((r["model"], r["backend"], "keras.applications", r["data_format"])))]
        if r["backend"] == "torch":
            refs.append(("native torch", index.get((r["model"], "torch", "native torch", "channels_first"))))
        for ref_label, ref in refs:
            if ref:
                rows.append(f"| {r['model']} | {r['backend']} | {r['implementation']} {r['data_format']} / "
                            f"{ref_label} | {paired_ratio(r, ref, 'train')} | {paired_ratio(r, ref, 'inference')} |")
    if rows:
        print("Ratios (above 1: kcnn faster): the median over rounds of each round's ratio, (min-max). Both ran in "
              "the same round, one after the other, so a slower minute of this shared machine slows both.")
        print()
        print("| model | backend | ratio | training | inference |")
        print("|---|---|---|---:|---:|")
        print("\n".join(rows))
        print()


def paired_ratio(row, reference, key):
    """Median and range of the round-by-round ratios of two implementations' throughputs."""
    ratios = [a / b for a, b in zip(row[key], reference[key])]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def print_memory(rows):
    print("Peak resident set (ru_maxrss) of one process training with `fit()` (native: the plain loop), "
          "channels_last for Keras.")
    print()
    print("| model | batch | steps | backend | after imports MB | peak MB | peak - after imports MB |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        backend = "native torch" if r["backend"] == "native" else f"kcnn on {r['backend']}"
        print(f"| {r['model']} | {r['batch']} | {r['steps']} | {backend} | {r['after_imports_mb']:,.0f} | "
              f"{r['peak_mb']:,.0f} | {r['peak_mb'] - r['after_imports_mb']:,.0f} |")
    print()


def print_profile(profile, top):
    tables = profile["tables"]
    labels = list(tables)
    print(f"torch.profiler on training steps of {profile['model']} at batch {profile['batch']} (Keras: "
          f"`train_on_batch`, the step `fit()` runs; 2 warm-up steps, then {profile['steps']} profiled): self CPU "
          f"ms (calls) per step of the top {top} ops of each implementation.")
    print()
    print("| op | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    keys = set()
    for table in tables.values():
        keys.update(sorted(table["ops"], key=lambda k: -table["ops"][k][0])[:top])
    order = sorted(keys, key=lambda k: -max(t["ops"].get(k, (0, 0))[0] for t in tables.values()))
    for key in order:
        cells = []
        for label in labels:
            ms, count = tables[label]["ops"].get(key, (0.0, 0))
            cells.append(f"{ms:,.1f} ({count:g})" if count else "-")
        print(f"| {key} | " + " | ".join(cells) + " |")
    totals = [sum(ms for ms, _ in tables[label]["ops"].values()) for label in labels]
    calls = [sum(count for _, count in tables[label]["ops"].values()) for label in labels]
    print("| all ops, self CPU total | " + " | ".join(f"{t:,.0f} ({c:,.0f})" for t, c in zip(totals, calls)) + " |")
    print("| step wall time (profiled) | " + " | ".join(f"{tables[label]['wall_ms']:,.0f}" for label in labels) + " |")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(MODELS)} (default: all; "
                                                       f"--memory: {MEMORY_MODELS})")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per implementation")
    parser.add_argument("--steps", type=int, default=None,
                        help="batches a round (default: lenet5 100, cifar_resnet20 10, 224x224 models 3; --memory: 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 for 32x32 models, 16 for 224x224")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training and inference batches first")
    parser.add_argument("--data-format", default="channels_last", choices=("channels_last", "channels_first", "both"),
                        help="of the Keras models (native torch is always NCHW)")
    parser.add_argument("--keras-layers", action="store_true",
                        help="on torch, also time kcnn with KCNN_TORCH_FAST=0 (Keras' own convolution and BN code)")
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "both"),
                        help="both: also time kcnn compiled with the jit_compile Keras' 'auto' did not pick")
    parser.add_argument("--no-native", action="store_true", help="skip the native PyTorch models")
    parser.add_argument("--fast-depthwise", action="store_true",
                        help="on JAX, also time kcnn.backends.jax_cpu.with_fast_depthwise(model) (models with depthwise layers)")
    parser.add_argument("--quick", action="store_true", help="smoke test: batch 2, 1 step a round, 2 rounds")
    parser.add_argument("--memory", action="store_true", help="measure peak memory instead of throughput")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler on --steps (default 3) training steps of the first --models "
                             "(default resnet50) in Keras-on-torch (both data formats) and native torch")
    parser.add_argument("--top", type=int, default=12, help="ops per implementation in the --profile table")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, metavar=("BACKEND", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.rounds, args.warmup = args.batch_size or 2, args.steps or 1, 2, 1
    if args.models is None:
        args.models = MEMORY_MODELS if args.memory else "resnet50" if args.profile else ",".join(MODELS)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if args.worker:
        return worker(args.worker, args)
    if args.memory_worker:
        return memory_worker(*args.memory_worker, args)
    if args.profile_worker:
        return profile_worker(args)

    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"Command: `python bench/throughput.py {shlex.join(sys.argv[1:])}`")
    print(f"Started {started:%Y-%m-%d %H:%M} UTC on {platform.machine()}, {os.cpu_count()} CPU cores.")
    print()
    backends = args.backends.split(",")
    if args.profile:
        profile = run_worker("profile", ["--profile-worker", "--top", str(args.top)], args).get("PROFILE")
        if profile:
            print_profile(profile[0], args.top)
    elif args.memory:
        rows = []
        for name in args.models.split(","):
            for backend in backends + ([] if args.no_native else ["native"]):
                rows += run_worker(backend, ["--memory-worker", backend, name], args).get("MEMORY", [])
        print_memory(rows)
    else:
        results, infos, checks, failed = [], [], [], []
        for backend in backends:
            lines = run_worker(backend, ["--worker", backend], args)
            results += lines.get("RESULT", [])
            infos += lines.get("INFO", [])
            checks += lines.get("PARAMS", [])
            failed += lines.get("FAILED", [])
        print_throughput(results, infos, checks)
        for f in failed:
            print(f"FAILED: {f['model']} on {f['backend']}: {f['error'][:300]}")
    print(f"Took {(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds() / 60:.1f} min.")


if __name__ == "__main__":
    main()
