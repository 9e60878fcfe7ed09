"""Serving latency and throughput: Keras `predict` on each backend, the exported
SavedModel (TensorFlow only) and the ONNX file (onnxruntime), on this CPU.

    python bench/serving.py                       # efficientnet_lite0 and resnet50
    python bench/serving.py --models efficientnet_lite0 --runs 30

Each engine runs in its own process (one at a time), on raw 0-255 RGB images at
224x224: latency at batch 1 (median and 99th percentile over --runs calls,
after warm-up) and throughput at batch 32. EfficientNet-Lite0 carries its real
ImageNet weights, ResNet-50 random ones (its official file needs the network;
weights do not change the time).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ENGINES = ("keras/tensorflow", "keras/torch", "keras/jax", "saved_model", "onnxruntime")


def _time(call, batch, runs):
    images = np.random.default_rng(0).uniform(0, 255, (batch, 224, 224, 3)).astype("float32")
    for _ in range(3):
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
    from kcnn.export import export

    weights = "imagenet" if name == "efficientnet_lite0" else None
    model = kcnn.build(name, weights=weights)
    model.save(os.path.join(folder, "model.keras"))
    for format in ("saved_model", "onnx"):
        export(os.path.join(folder, "model.keras"), format, os.path.join(folder, "export"), verbose=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--runs", type=int, default=50, help="batch-1 calls timed per engine")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, metavar=("MODEL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker, args.runs)
    if args.prepare:
        return prepare(*args.prepare)
    quiet = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    print(f"{'model':20s} {'engine':18s} {'batch 1 median':>15s} {'p99':>9s} {'batch 32':>12s} {'vs keras':>9s}")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as folder:
            subprocess.run([sys.executable, __file__, "--prepare", name, folder], env=quiet, check=True,
                           capture_output=True)
            results = {}
            for engine in ENGINES:
                backend = engine.split("/")[1] if "/" in engine else "tensorflow"
                done = subprocess.run([sys.executable, __file__, "--worker", engine, folder, "--runs", str(args.runs)],
                                      env=dict(quiet, KERAS_BACKEND=backend), capture_output=True, text=True)
                if done.returncode:
                    print(f"{name:20s} {engine:18s} failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
            fastest_keras = min((r["median_ms"] for e, r in results.items() if e.startswith("keras")), default=None)
            for engine, r in results.items():
                ratio = f"{fastest_keras / r['median_ms']:.2f}x" if fastest_keras else ""
                print(f"{name:20s} {engine:18s} {r['median_ms']:12.1f} ms {r['p99_ms']:6.1f} ms "
                      f"{r['images_per_s']:8.1f} im/s {ratio:>9s}", flush=True)


if __name__ == "__main__":
    main()
