"""The main job's levers, one at a time: what each adds in held-out accuracy and costs in seconds.

    python bench/finetune_levers.py [--backend torch] [--levers all|NAME,NAME] [--seeds 0] [--base FLAGS]
    python bench/finetune_levers.py --tta-latency RUN_DIR     # what test-time augmentation costs an export

Every row is `workflows/finetune.py` (EfficientNet-Lite0 with its ImageNet weights, the embedded CIFAR-10
sample: 2,000 training images, 1,000 held out) in a fresh process, with the flags in its row on top of
the main job's defaults; run directories go to saved_models/bench_levers/. "plain" is the saved model's
accuracy on the 1,000 held-out images, "TTA" the same model with test-time augmentation (kcnn.data.tta), and
"workflow s" the fine-tuning's own clock (metrics.json's workflow_seconds: the backbone, the frozen-layer pass,
both phases and the evaluation with its views; not the process start, the plots or the export). Times depend on the CPU: name its instruction sets beside them (`kcnn doctor`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import ROOT

OUT = os.path.join(ROOT, "saved_models", "bench_levers")

# (name, flags, what it tries); the defaults' own row first.
LEVERS = (
    ("default", [], "the main job as it ships"),
    ("128px", ["--image-size", "128"], "input resolution 128 (round 1's default)"),
    ("160px", ["--image-size", "160"], "input resolution 160"),
    ("192px", ["--image-size", "192"], "input resolution 192"),
    ("224px", ["--image-size", "224"], "input resolution 224, the weights' own"),
    ("no_tta", ["--tta", "none"], "no test-time augmentation"),
    ("flip_crop", ["--tta", "flip_crop"], "test-time flips and shifts (6 views)"),
    ("views2", ["--extra-views", "2"], "2 more augmented views of each training image, cached once"),
    ("ema", ["--ema"], "phase 2 ends on the moving average of its weights"),
    ("mixup", ["--mixup", "0.4"], "mixup (alpha 0.4) on the pooled features in phase 1"),
    ("layer_decay", ["--layer-decay", "0.5", "--finetune-learning-rate", "3e-4"],
     "phase 2: layer-wise learning-rate decay 0.5 from 3e-4 at the top (3e-4, 1.5e-4, 7.5e-5, 3.75e-5)"),
    ("layer_decay_07", ["--layer-decay", "0.7", "--finetune-learning-rate", "2e-4"],
     "phase 2: layer-wise learning-rate decay 0.7 from 2e-4 at the top"),
    ("unfreeze1", ["--unfreeze", "1"], "cut point: the top block only in phase 2"),
    ("unfreeze6", ["--unfreeze", "6"], "cut point: the top 6 blocks in phase 2"),
    ("head_only", ["--finetune-epochs", "0"], "no phase 2 (a linear probe on the frozen features)"),
    ("bfloat16", ["--mixed-precision"], "mixed bfloat16 (pays only with native bfloat16: AVX-512 BF16, AMX)"),
    ("lite1", ["--backbone", "efficientnet_lite1"], "EfficientNet-Lite1 (issue 3/6's weights)"),
    ("lite2", ["--backbone", "efficientnet_lite2"], "EfficientNet-Lite2"),
)


def run(backend, name, flags, seed):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("KCNN_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
    run_dir = os.path.join(OUT, f"{name}_{backend}_seed{seed}")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "workflows", "finetune.py"), "--output-dir", run_dir,
                           "--overwrite", "--no-export", "--seed", str(seed), *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{name} on {backend} failed:\n{done.stderr[-3000:]}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return metrics, wall


def cell(values, percent=True):
    values = [100 * v if percent else v for v in values]
    text = f"{statistics.mean(values):.2f}" if percent else f"{statistics.mean(values):.0f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.2f}" if percent else f" ± {statistics.stdev(values):.0f}"
    return text + ("%" if percent else "")


def tta_latency(run_dir, repeats=50):
    """The latency test-time augmentation adds to a served model: the run's ONNX export without TTA, with
    flip and with flip_crop, batch 1 in onnxruntime (median of `repeats` calls), and its held-out accuracy."""
    import numpy as np
    import onnxruntime

    sys.path.insert(0, ROOT)
    from kcnn.deploy.export import export
    from kcnn.data.tta import passes

    images = None
    print(f"### Test-time augmentation in an export: {os.path.basename(run_dir)} (ONNX, onnxruntime, batch 1)\n")
    print("| export | forward passes | median latency ms | size MB |")
    print("|---|---:|---:|---:|")
    for mode in (None, "flip", "flip_crop"):
        path = export(run_dir, "onnx", os.path.join(OUT, "tta_latency", mode or "plain"), tta=mode, overwrite=True,
                      verbose=False)
        session = onnxruntime.InferenceSession(path)
        if images is None:
            shape = [1 if d in (None, "batch") else d for d in session.get_inputs()[0].shape]
            images = np.random.default_rng(0).uniform(0, 255, shape).astype("float32")
        for _ in range(5):
            session.run(None, {"image": images})
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, {"image": images})
            times.append(1000 * (time.perf_counter() - started))
        print(f"| {mode or 'plain'} | {passes(mode)} | "
              f"{statistics.median(times):.1f} | {os.path.getsize(path) / 1e6:.1f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--levers", default="all", help="comma-separated names, or all: "
                        + ", ".join(name for name, _, _ in LEVERS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (mean ± spread over them)")
    parser.add_argument("--tta-latency", metavar="RUN_DIR", help="instead: the latency of TTA exports of a run")
    parser.add_argument("--base", default="", help="flags added to every row, e.g. \"--image-size 224\"")
    args = parser.parse_args()
    if args.tta_latency:
        return tta_latency(args.tta_latency)
    chosen = [lever for lever in LEVERS if args.levers == "all" or lever[0] in args.levers.split(",")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    base = args.base.split()
    print(f"### The main job's levers ({args.backend}; seeds {args.seeds}; every row also "
          f"`{args.base or '(nothing)'}`)\n")
    print("| lever | flags | plain | TTA | workflow s | frozen pass s | command s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, flags, what in chosen:
        results = [run(args.backend, name + "".join(base).replace("-", "_"), base + flags, seed) for seed in seeds]
        metrics = [m for m, _ in results]
        modes = list(metrics[0].get("tta_accuracy", {}))
        tta = [m["tta_accuracy"][modes[0]] for m in metrics] if modes else []
        print(f"| {what} | `{' '.join(flags) or '(none)'}` | {cell([m['accuracy'] for m in metrics])} | "
              f"{cell(tta) + ' (' + modes[0] + ')' if tta else '-'} | "
              f"{cell([m.get('workflow_seconds', m['train_seconds']) for m in metrics], False)} | "
              f"{cell([m['feature_seconds'] for m in metrics], False)} | "
              f"{cell([wall for _, wall in results], False)} |", flush=True)


if __name__ == "__main__":
    main()
