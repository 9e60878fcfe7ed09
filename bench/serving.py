"""Serving latency and throughput on this CPU, in three parts (--parts, all by default):

    python bench/serving.py                                    # all three parts
    python bench/serving.py --parts engines --models efficientnet_lite0 --runs 30
    python bench/serving.py --parts formats --run saved_models/finetune_efficientnet_lite0_cifar10_sample
    python bench/serving.py --parts serve --server-cpus 0 --client-cpus 1

engines: Keras `predict` on each backend, the exported SavedModel (TensorFlow only) and the ONNX file
(onnxruntime), on raw 0-255 RGB images at 224x224: latency at batch 1 (median and 99th percentile over --runs
calls, after warm-up) and throughput at batch 32. EfficientNet-Lite0 carries its real ImageNet weights,
ResNet-50 random ones (its official file needs the network; weights do not change the time).

formats: a fine-tuned run (--run; `make demo` writes the default one) exported by kcnn.deploy.export.export into a
temporary folder as a SavedModel, an ONNX file and LiteRT float32, float16 and int8 flatbuffers; then each
format in its own process: file size (MB = 10^6 bytes; the SavedModel's whole folder), batch-1 latency (median
and 99th percentile of --runs calls on the first held-out image, after 5 warm-up calls) and the accuracy on the
run's held-out images (the first --images of its evaluation split, prepared by kcnn.deploy.litert._evaluation_images,
which the LiteRT export's own accuracy check uses). Keras is `model.predict` on the active backend (KERAS_BACKEND,
else Keras' default); the LiteRT processes import neither TensorFlow nor Keras (ai_edge_litert alone, and
kcnn.deploy.litert's `accuracy` loaded without kcnn's package). onnxruntime and LiteRT get one thread per CPU this
process may use (LiteRT's own default is 1); TensorFlow and PyTorch choose theirs.

serve: `kcnn serve MODEL.onnx --port 0` (the run's model exported to ONNX once), with kcnn serve's default
batching and with `--max-batch 1`; for 1, 4 and 16 concurrent clients (threads, each with its own keep-alive
requests.Session, one image per request) for --seconds each: requests/s, median and 99th percentile latency,
and the mean images per inference run (the server's X-Kcnn-Batch header gives the size of the run that
answered each request; the mean over runs is requests / sum(1/size)). Payloads (--payloads): `rows`, TF
Serving's row format with the image as nested lists of 0-255 integers at the model's size (JSON parsing in the
server is part of the cost), and `b64`, the same image as JPEG bytes (quality 90, at the model's size:
decoding, no resizing). Request bodies are encoded once, before the clock starts. CPUs: --server-cpus and
--client-cpus (taskset's list syntax, e.g. 0 or 0-3); by default both get every CPU this process may use
(start it under taskset to choose), so clients and server compete for them: name the split beside the figures.
kcnn serve leaves onnxruntime its default thread count, the machine's physical cores whatever the affinity: on
fewer CPUs than that its threads spin against each other (a small convolution network measured 2.2x slower on 1
of 2 cores than with one thread), so a server pinned to a subset of the cores is slower than it would have to be.

The CPU's instruction sets (AVX2, AVX-512, AMX, from /proc/cpuinfo) are printed above each table: name them
beside every time figure (BENCHMARKS.md).
"""

import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from common import ROOT

PARTS = ("engines", "formats", "serve")
ENGINES = ("keras/tensorflow", "keras/torch", "keras/jax", "saved_model", "onnxruntime")
DEFAULT_RUN = os.path.join("saved_models", "finetune_efficientnet_lite0_cifar10_sample")
EXPORT = "export"  # inside the temporary folder: every format, as kcnn.deploy.export lays them out
# (label, engine, path inside the temporary folder; None: the run's model.keras)
FORMATS = (("Keras predict", "keras", None),
           ("SavedModel (TensorFlow)", "saved_model", os.path.join(EXPORT, "1")),
           ("ONNX (onnxruntime)", "onnxruntime", os.path.join(EXPORT, "model.onnx")),
           ("LiteRT float32", "litert", os.path.join(EXPORT, "model.tflite")),
           ("LiteRT float16", "litert", os.path.join(EXPORT, "model_float16.tflite")),
           ("LiteRT int8", "litert", os.path.join(EXPORT, "model_int8.tflite")))
EXPORTS = {"formats": (("saved_model", None), ("onnx", None), ("litert", "none"), ("litert", "float16"),
                       ("litert", "int8")),
           "serve": (("onnx", None),)}
ACCURACY_BATCH = 64  # images per call when measuring accuracy (kcnn.deploy.litert.BATCH_SIZE)
SERVE_IMAGES = 16  # distinct request bodies the clients cycle through
URL_LINE = re.compile(r"kcnn serve: (http://\S+?)/ ")
QUIET = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


# ---- the machine -------------------------------------------------------------------------------------------------


def cpu_description(cpus=None):
    """One line: the CPU's model, how many CPUs `cpus` (default: this process's) are, and its vector instruction sets
    (AVX2, AVX-512 and its extensions, AMX) from /proc/cpuinfo."""
    cpus = sorted(cpus or os.sched_getaffinity(0))
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = " ".join(value.split())
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    sets = ["AVX2"] if "avx2" in flags else []
    avx512 = [name for flag, name in (("avx512f", "F"), ("avx512bw", "BW"), ("avx512vl", "VL"),
                                      ("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"))
              if flag in flags]
    if avx512:
        sets.append(f"AVX-512 ({'/'.join(avx512)})")
    amx = [name for flag, name in (("amx_bf16", "BF16"), ("amx_int8", "INT8")) if flag in flags]
    if amx:
        sets.append(f"AMX ({'/'.join(amx)})")
    return (f"CPU: {model}; {len(cpus)} of {os.cpu_count()} CPUs ({cpu_list(cpus)}); "
            f"{', '.join(sets) or 'no AVX2'}")


def parse_cpus(text):
    """taskset's list syntax ("0", "0-3", "0,2-3") as a set of CPU numbers."""
    cpus = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def cpu_list(cpus):
    """A set of CPU numbers in taskset's list syntax."""
    cpus, parts = sorted(cpus), []
    for cpu in cpus:
        if parts and parts[-1][1] == cpu - 1:
            parts[-1][1] = cpu
        else:
            parts.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def threads():
    return len(os.sched_getaffinity(0))


# ---- part 1, engines: Keras predict per backend, SavedModel, onnxruntime -----------------------------------------


def _time(call, batch, runs):
    images = np.random.default_rng(0).uniform(0, 255, (batch, 224, 224, 3)).astype("float32")
    return _latencies(call, images, runs, warmup=3)


def _latencies(call, images, runs, warmup=5):
    for _ in range(warmup):
        call(images)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call(images)
        times.append(time.perf_counter() - started)
    return times


def worker(engine, folder, runs):
    if engine.startswith("keras/"):
        import keras

        model = keras.saving.load_model(os.path.join(folder, "model.keras"))
        call = lambda images: model.predict(images, batch_size=len(images), verbose=0)  # noqa: E731
    elif engine == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(os.path.join(folder, "export", "1")).signatures["serving_default"]
        call = lambda images: serve(image=tf.constant(images))["probabilities"].numpy()  # noqa: E731
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(os.path.join(folder, "export", "model.onnx"))
        call = lambda images: session.run(["probabilities"], {"image": images})  # noqa: E731
    single = _time(call, 1, runs)
    batch = _time(call, 32, max(3, runs // 10))
    print(json.dumps({"median_ms": 1000 * float(np.median(single)), "p99_ms": 1000 * float(np.percentile(single, 99)),
                      "images_per_s": 32 / float(np.median(batch))}))


def prepare(name, folder):
    """Build, save and export `name` (on TensorFlow)."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import kcnn
    from kcnn.deploy.export import export

    weights = "imagenet" if name == "efficientnet_lite0" else None
    model = kcnn.build(name, weights=weights)
    model.save(os.path.join(folder, "model.keras"))
    for format in ("saved_model", "onnx"):
        export(os.path.join(folder, "model.keras"), format, os.path.join(folder, "export"), verbose=False)


def engines(args):
    print(cpu_description())
    print(f"{'model':20s} {'engine':18s} {'batch 1 median':>15s} {'p99':>9s} {'batch 32':>12s} {'vs keras':>9s}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            done = subprocess.run([sys.executable, __file__, "--prepare", name, folder], env=QUIET,
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"preparing {name} failed:\n{done.stderr.strip()[-2000:]}")
            results = {}
            for engine in ENGINES:
                backend = engine.split("/")[1] if "/" in engine else "tensorflow"
                done = subprocess.run([sys.executable, __file__, "--worker", engine, folder, "--runs", str(args.runs)],
                                      env=dict(QUIET, KERAS_BACKEND=backend), capture_output=True, text=True)
                if done.returncode:
                    print(f"{name:20s} {engine:18s} failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
            fastest_keras = min((r["median_ms"] for e, r in results.items() if e.startswith("keras")), default=None)
            for engine, r in results.items():
                ratio = f"{fastest_keras / r['median_ms']:.2f}x" if fastest_keras else ""
                print(f"{name:20s} {engine:18s} {r['median_ms']:12.1f} ms {r['p99_ms']:6.1f} ms "
                      f"{r['images_per_s']:8.1f} im/s {ratio:>9s}", flush=True)


# ---- the run's exports and held-out images (parts 2 and 3) -------------------------------------------------------


def prepare_run(request):
    """On TensorFlow: export the run into FOLDER/export (request["exports"]: (format, quantize) pairs), and save the
    first request["images"] images of its evaluation split as FOLDER/images.npy (float32, the model's input size,
    as kcnn.deploy.litert._evaluation_images prepares them) and labels.npy; FOLDER/prepare.json: the split, the seconds
    each export took, and the LiteRT accuracy the exports measured themselves (kcnn_export.json)."""
    import onnxruntime

    from kcnn.deploy.export import EXPORT_MARKER, export
    from kcnn.deploy.litert import _evaluation_images

    run, folder = request["run"], request["folder"]
    output = os.path.join(folder, EXPORT)
    seconds = {}
    for format, quantize in request["exports"]:
        started = time.perf_counter()
        export(run, format, output, quantize=quantize, overwrite=True, verbose=False)
        seconds[f"{format}{f' {quantize}' if quantize else ''}"] = round(time.perf_counter() - started, 1)
    shape = tuple(onnxruntime.InferenceSession(os.path.join(output, "model.onnx")).get_inputs()[0].shape[1:])
    evaluation = _evaluation_images(run, shape, request["images"])
    if evaluation is None:
        print(f"the evaluation images of {run} do not load (its config.json names data that is not here; set "
              f"KCNN_DATA_DIR)", file=sys.stderr)
        return 2
    images, labels, split = evaluation
    np.save(os.path.join(folder, "images.npy"), images.astype("float32"))
    np.save(os.path.join(folder, "labels.npy"), labels)
    with open(os.path.join(output, EXPORT_MARKER)) as f:
        exported = json.load(f)["kcnn"]["exports"]
    accuracy = {name: entry["accuracy"] for name, entry in exported.items() if "accuracy" in entry}
    with open(os.path.join(folder, "prepare.json"), "w") as f:
        json.dump({"split": split, "shape": shape, "seconds": seconds, "export_accuracy": accuracy}, f)
    return 0


def prepare_in_child(run, folder, parts, images):
    """prepare_run in a TensorFlow process; its prepare.json."""
    exports = list(dict.fromkeys(e for part in parts if part in EXPORTS for e in EXPORTS[part]))
    request = {"run": run, "folder": folder, "exports": exports, "images": images}
    print(f"exporting {run} ({', '.join(f'{f} {q}' if q else f for f, q in exports)}) and preparing {images} "
          f"held-out images...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, __file__, "--prepare-run", json.dumps(request)],
                          env=dict(QUIET, KERAS_BACKEND="tensorflow"), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"preparing {run} failed:\n{done.stderr.strip()[-3000:]}")
    with open(os.path.join(folder, "prepare.json")) as f:
        return json.load(f)


def check_run(run):
    if not os.path.isfile(os.path.join(run, "model.keras")) or not os.path.isfile(os.path.join(run, "config.json")):
        print(f"{run} is not a finished kcnn run (no model.keras or config.json). `make demo` writes the default one, "
              f"{DEFAULT_RUN} (as does `python workflows/finetune.py --overwrite`), or pass another run with --run.", file=sys.stderr)
        sys.exit(2)


# ---- part 2, formats: size, batch-1 latency and held-out accuracy of each format ---------------------------------


def _bare_litert():
    """kcnn.deploy.litert without kcnn's package __init__ (which imports Keras): this process stays free of
    TensorFlow and Keras (kcnn.deploy and kcnn.runs.atomic import neither)."""
    import types

    package = types.ModuleType("kcnn")
    package.__path__ = [os.path.join(ROOT, "kcnn")]
    sys.modules["kcnn"] = package
    from kcnn.deploy import litert

    return litert


def format_worker(engine, path, folder, runs):
    """One format in this process: batch-1 latency on the first held-out image, and accuracy on all of them."""
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(folder, "labels.npy"))
    one = np.ascontiguousarray(images[:1])
    batches = lambda: (np.ascontiguousarray(images[i:i + ACCURACY_BATCH])  # noqa: E731
                       for i in range(0, len(images), ACCURACY_BATCH))
    detail = ""
    if engine == "keras":
        import keras

        from kcnn.deploy.export import load_model

        model = load_model(path)
        call = lambda x: model.predict(x, batch_size=len(x), verbose=0)  # noqa: E731
        predicted = np.concatenate([np.argmax(call(x), axis=-1) for x in batches()])
        detail = keras.backend.backend()
    elif engine == "saved_model":
        import tensorflow as tf

        serve = tf.saved_model.load(path).signatures["serving_default"]
        call = lambda x: serve(image=tf.constant(x))["class_index"].numpy()  # noqa: E731
        predicted = np.concatenate([call(x) for x in batches()])
    elif engine == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads()
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        call = lambda x: session.run(["class_index"], {"image": x})[0]  # noqa: E731
        predicted = np.concatenate([call(x) for x in batches()])
    else:
        from ai_edge_litert.interpreter import Interpreter

        litert = _bare_litert()
        with open(path, "rb") as f:
            content = f.read()
        accuracy = litert.accuracy(content, np.asarray(images), labels)  # kcnn.deploy.litert's own measurement
        runner = Interpreter(model_content=content, num_threads=threads()).get_signature_runner(litert.SIGNATURE)
        call = lambda x: runner(image=x)["class_index"]  # noqa: E731
        predicted = None
        leaked = sorted(name for name in ("tensorflow", "keras", "torch", "jax") if name in sys.modules)
        detail = f"imported {', '.join(leaked)}" if leaked else "no TensorFlow, no Keras"
    if predicted is not None:
        accuracy = float(np.mean(predicted == labels))
    times = _latencies(call, one, runs)
    print(json.dumps({"p50_ms": 1000 * float(np.median(times)), "p99_ms": 1000 * float(np.percentile(times, 99)),
                      "accuracy": accuracy, "images": len(labels), "detail": detail}))


def size_mb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 1e6
    return os.path.getsize(path) / 1e6


def formats(args, folder, prepared):
    rows = []
    for label, engine, path in FORMATS:
        path = os.path.join(args.run, "model.keras") if path is None else os.path.join(folder, path)
        env = QUIET if engine == "keras" else dict(QUIET, KERAS_BACKEND="tensorflow")
        print(f"measuring {label}...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--format-worker", engine, path, folder,
                               "--runs", str(args.runs)], env=env, capture_output=True, text=True)
        if done.returncode:
            rows.append((label, size_mb(path), None, done.stderr.strip().splitlines()[-1][:200]))
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if engine == "keras":
            label = f"{label} ({result['detail']})"
        rows.append((label, size_mb(path), result, result["detail"] if engine == "litert" else ""))
    print()
    print(cpu_description())
    print(f"run {args.run}; accuracy on the first {prepared['images']} images of {prepared['split']}; batch-1 "
          f"latency over {args.runs} calls after 5 warm-up calls; exports took "
          + ", ".join(f"{k} {v:.0f} s" for k, v in prepared["seconds"].items()))
    print(f"| {'format':30s} | {'size MB':>8s} | {'p50 ms':>7s} | {'p99 ms':>7s} | {'accuracy':>8s} |")
    print(f"|{'-' * 32}|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 9}:|")
    for label, size, result, note in rows:
        if result is None:
            print(f"| {label:30s} | {size:8.2f} | failed: {note}")
            continue
        print(f"| {label:30s} | {size:8.2f} | {result['p50_ms']:7.2f} | {result['p99_ms']:7.2f} | "
              f"{100 * result['accuracy']:7.2f}% |" + (f" ({note})" if note else ""))
    for name, accuracy in prepared["export_accuracy"].items():
        shown = ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items() if k not in ("split", "images"))
        print(f"  {name}: the export's own check (kcnn.deploy.litert.accuracy, first {accuracy['images']} images): {shown}")
    sys.stdout.flush()


# ---- part 3, serve: kcnn serve under concurrent clients, with and without batching -------------------------------


class Server:
    """`kcnn serve ONNX --port 0 --max-batch N` on `cpus`; waits for the line giving its URL."""

    def __init__(self, onnx, max_batch, cpus, timeout=120):
        command = [sys.executable, "-m", "kcnn", "serve", onnx, "--port", "0"]
        command += ["--max-batch", str(max_batch)] if max_batch else []
        self.command = f"kcnn serve {os.path.basename(onnx)} --port 0" + (f" --max-batch {max_batch}"
                                                                          if max_batch else "")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=QUIET, cwd=ROOT, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not any(URL_LINE.search(line) for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{self.command} did not start:\n{''.join(self.lines)[-3000:]}")
            time.sleep(0.05)
        self.url = next(URL_LINE.search(line) for line in self.lines if URL_LINE.search(line)).group(1)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def default_max_batch():
    """kcnn serve's default --max-batch, read from kcnn/deploy/serve.py's source (importing kcnn imports Keras)."""
    with open(os.path.join(ROOT, "kcnn", "deploy", "serve.py")) as f:
        found = re.search(r"^MAX_BATCH = (\d+)", f.read(), re.M)
    return found.group(1) if found else "default"


def bodies(images, payload):
    """One predict request body (bytes) per image: row format, nested lists of integers or JPEG bytes as b64."""
    from PIL import Image

    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    if payload == "rows":
        return [json.dumps({"instances": [image.tolist()]}).encode() for image in pixels]
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=90)
        encoded.append(json.dumps({"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}]}).encode())
    return encoded


def load(url, requests_bodies, clients, seconds, warmup=2):
    """`clients` threads posting for `seconds`: (requests/s, latencies s, batch sizes, failures, first failure)."""
    import requests

    endpoint = f"{url}/v1/models/model:predict"
    ready = threading.Barrier(clients + 1)
    deadline = [float("inf")]  # set once every client is warm (at the barrier)
    results = [([], [], [0], [None], [0.0]) for _ in range(clients)]

    def client(number):
        latencies, batches, failed, failure, finished = results[number]
        session = requests.Session()
        headers = {"Content-Type": "application/json"}

        def post(body):
            response = session.post(endpoint, data=body, headers=headers, timeout=120)
            if response.status_code != 200 or "predictions" not in response.json():
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            return int(response.headers["X-Kcnn-Batch"])

        try:
            for i in range(warmup):
                post(requests_bodies[(number + i) % len(requests_bodies)])
        except Exception as error:  # shown; the measured requests then fail too, and are counted
            failure[0] = f"warm-up: {str(error)[:200]}"
        ready.wait()
        i = number
        while time.perf_counter() < deadline[0]:
            started = time.perf_counter()
            try:
                batch = post(requests_bodies[i % len(requests_bodies)])
            except Exception as error:  # counted, and the first one shown
                failed[0] += 1
                failure[0] = failure[0] or str(error)[:200]
            else:
                latencies.append(time.perf_counter() - started)
                batches.append(batch)
            finished[0] = time.perf_counter()
            i += 1

    workers = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in workers:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    deadline[0] = start + seconds
    for thread in workers:
        thread.join()
    elapsed = max(max(r[4][0] for r in results) - start, 1e-9)
    latencies = [t for r in results for t in r[0]]
    batches = [b for r in results for b in r[1]]
    failures = sum(r[2][0] for r in results)
    return (len(latencies) / elapsed, latencies, batches, failures,
            next((r[3][0] for r in results if r[3][0]), None))


def serve(args, folder, prepared):
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")[:SERVE_IMAGES]
    onnx = os.path.join(folder, EXPORT, "model.onnx")
    available = os.sched_getaffinity(0)
    server_cpus = parse_cpus(args.server_cpus) if args.server_cpus else available
    client_cpus = parse_cpus(args.client_cpus) if args.client_cpus else available
    payloads = {payload: bodies(images, payload) for payload in args.payloads.split(",")}
    concurrency = [int(n) for n in args.clients.split(",")]
    results, commands = {}, {}
    for max_batch in (args.max_batch, 1):
        server = Server(onnx, max_batch, server_cpus)
        commands[max_batch] = server.command
        try:
            os.sched_setaffinity(0, client_cpus)
            for payload, encoded in payloads.items():
                for clients in concurrency:
                    print(f"{server.command}: {clients} clients, {payload}...", file=sys.stderr, flush=True)
                    results[payload, max_batch, clients] = load(server.url, encoded, clients, args.seconds)
        finally:
            os.sched_setaffinity(0, available)
            server.stop()
    print()
    print(cpu_description(server_cpus) + " for the server")
    print(cpu_description(client_cpus) + " for the clients")
    sizes = {payload: np.mean([len(body) for body in encoded]) / 1e3 for payload, encoded in payloads.items()}
    print(f"run {args.run}: images {tuple(prepared['shape'])}; {args.seconds:g} s per row; one image per request "
          f"({', '.join(f'{p} {s:.0f} kB' for p, s in sizes.items())} a body); batched: "
          f"`{commands[args.max_batch]}`" + ("" if args.max_batch else " (its default --max-batch)")
          + "; images/run: mean images per inference run")
    print(f"| {'payload':7s} | {'max batch':>12s} | {'clients':>7s} | {'requests/s':>10s} | {'p50 ms':>7s} | "
          f"{'p99 ms':>7s} | {'images/run':>10s} | {'failed':>6s} | {'req/s vs max batch 1':>20s} |")
    print(f"|{'-' * 9}|{'-' * 13}:|{'-' * 8}:|{'-' * 11}:|{'-' * 8}:|{'-' * 8}:|{'-' * 11}:|{'-' * 7}:|{'-' * 21}:|")
    for payload in payloads:
        for clients in concurrency:
            for max_batch in (args.max_batch, 1):
                rate, latencies, batches, failed, failure = results[payload, max_batch, clients]
                per_run = len(batches) / sum(1 / b for b in batches) if batches else float("nan")
                base = results[payload, 1, clients][0]
                ratio = f"{rate / base:.2f}x" if max_batch != 1 and base else ""
                shown = f"{default_max_batch()} (default)" if max_batch is None else str(max_batch)
                p50, p99 = (1000 * np.median(latencies), 1000 * np.percentile(latencies, 99)) if latencies else (0, 0)
                print(f"| {payload:7s} | {shown:>12s} | {clients:7d} | {rate:10.1f} | {p50:7.1f} | {p99:7.1f} | "
                      f"{per_run:10.2f} | {failed:6d} | {ratio:>20s} |" + (f" first failure: {failure}" if failure
                                                                          else ""))
    sys.stdout.flush()


# ---- the command -------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--models", default="efficientnet_lite0,resnet50", help="engines: the architectures")
    parser.add_argument("--runs", type=int, default=50, help="engines, formats: batch-1 calls timed per engine")
    parser.add_argument("--run", default=os.path.join(ROOT, DEFAULT_RUN),
                        help=f"formats, serve: a fine-tuned run directory (default {DEFAULT_RUN}, what `make demo` "
                             f"writes)")
    parser.add_argument("--images", type=int, default=1000, help="formats: held-out images the accuracy is "
                        "measured on (the first of the run's evaluation split; default 1000, as the LiteRT export)")
    parser.add_argument("--seconds", type=float, default=10, help="serve: seconds per measurement (default 10)")
    parser.add_argument("--clients", default="1,4,16", help="serve: concurrent clients, comma-separated")
    parser.add_argument("--payloads", default="rows,b64", help="serve: rows (nested lists), b64 (JPEG), or both")
    parser.add_argument("--max-batch", type=int, help="serve: the batched server's --max-batch (default: kcnn "
                        "serve's own)")
    parser.add_argument("--server-cpus", help="serve: the server's CPUs, e.g. 0 or 0-3 (default: all of this "
                        "process's)")
    parser.add_argument("--client-cpus", help="serve: the clients' CPUs (default: all of this process's)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare-run", metavar="REQUEST", help=argparse.SUPPRESS)
    parser.add_argument("--format-worker", nargs=3, metavar=("ENGINE", "PATH", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.runs)
    if args.prepare:
        return prepare(*args.prepare)
    if args.prepare_run:
        return prepare_run(json.loads(args.prepare_run))
    if args.format_worker:
        return format_worker(*args.format_worker, args.runs)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if "engines" in parts:
        engines(args)
    run_parts = [part for part in parts if part in ("formats", "serve")]
    if not run_parts:
        return 0
    args.run = os.path.abspath(args.run)
    check_run(args.run)
    folder = tempfile.mkdtemp(prefix="kcnn-bench-serving-")
    try:
        images = args.images if "formats" in run_parts else SERVE_IMAGES
        prepared = dict(prepare_in_child(args.run, folder, run_parts, images), images=images)
        if "formats" in run_parts:
            formats(args, folder, prepared)
        if "serve" in run_parts:
            serve(args, folder, prepared)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
