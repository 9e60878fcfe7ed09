"""Fine-tuning targets of issue 3, printed as Markdown tables for BENCHMARKS.md.

    python bench/finetune.py [--parts default,sample224,scratch,cifar10] [--backends tensorflow,torch,jax]

- default: the bare `python workflows/finetune.py` on each backend (EfficientNet-Lite0, ImageNet weights,
  the embedded CIFAR-10 sample, its default resolution): held-out accuracy, plain and with test-time flips,
  and the workflow's time (target: at least 88% in at most 5 minutes).
- sample224: the same at 224x224, the weights' own resolution, linear probe (head only) and fine-tuned
  (target: at least 88% on the 1,000 held-out images).
- scratch: the same architecture from scratch on the same 2,000 images (kcnn train, 64x64, 30 epochs).
- cifar10: fine-tuning on batches 1-4, evaluated on batch 5 and the first 1,000 official test images.

Every run is a fresh process; run directories go to saved_models/bench_finetune/.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import BACKENDS, ROOT, run_training

OUT = os.path.join(ROOT, "saved_models", "bench_finetune")


def run_finetune(backend, name, *args):
    """`workflows/finetune.py ARGS` in a fresh process; (metrics, wall seconds of the whole command)."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("KCNN_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
    run_dir = os.path.join(OUT, f"{name}_{backend}")
    started = time.perf_counter()
    process = subprocess.run([sys.executable, os.path.join(ROOT, "workflows", "finetune.py"), "--output-dir",
                              run_dir, "--overwrite", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"finetune on {backend} failed:\n{process.stderr[-4000:]}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="default,sample224,scratch,cifar10")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    parts = args.parts.split(",")
    fastest = "tensorflow"

    if "default" in parts:
        print("### The bare `python workflows/finetune.py` (EfficientNet-Lite0, cifar10_sample, its defaults)\n")
        print("| backend | held-out accuracy | with test-time flip | workflow s | of which frozen pass s | "
              "whole command s |")
        print("|---|---:|---:|---:|---:|---:|")
        for backend in args.backends.split(","):
            metrics, seconds = run_finetune(backend, "default")
            tta = metrics.get("tta_accuracy", {}).get("flip")
            print(f"| {backend} | {100 * metrics['accuracy']:.2f}% | {f'{100 * tta:.2f}%' if tta else '-'} | "
                  f"{metrics['workflow_seconds']:.0f} | {metrics['feature_seconds']:.0f} | {seconds:.0f} |", flush=True)
        print()

    rows = []
    if "sample224" in parts:
        for label, extra in (("linear probe (head only)", ["--finetune-epochs", "0"]),
                             ("fine-tuned (head, then top 3 blocks)", [])):
            metrics, seconds = run_finetune(fastest, f"sample224_{'probe' if extra else 'tuned'}",
                                            "--image-size", "224", *extra)
            rows.append((f"EfficientNet-Lite0 ImageNet, 224x224, {label}", metrics["accuracy"], seconds))
    if "scratch" in parts:
        result = run_training(fastest, os.path.join(OUT, "scratch"), dataset="cifar10_sample",
                              arch="efficientnet_lite0", image_size=64, epochs=30, batch_size=64,
                              optimizer="adamw", learning_rate=2e-3, schedule="onecycle", augment="crop_flip")
        rows.append(("EfficientNet-Lite0 from scratch, 64x64, 30 epochs", result["accuracy"],
                     sum(result["epoch_train_seconds"])))
    if rows:
        print(f"### cifar10_sample: 2,000 training images, 1,000 held out ({fastest})\n")
        print("| model | held-out accuracy | seconds |")
        print("|---|---:|---:|")
        for label, accuracy, seconds in rows:
            print(f"| {label} | {100 * accuracy:.2f}% | {seconds:.0f} |")
        print(flush=True)

    if "cifar10" in parts:
        metrics, seconds = run_finetune(fastest, "cifar10", "--dataset", "cifar10", "--no-flip")
        print(f"### All of CIFAR-10: batches 1-4, evaluated on batch 5 ({fastest}, 128x128, no mirrors)\n")
        print("| held-out accuracy (batch 5) | first 1,000 official test images | whole command s |")
        print("|---:|---:|---:|")
        print(f"| {100 * metrics['accuracy']:.2f}% | {100 * metrics['test_first1000_accuracy']:.2f}% | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
