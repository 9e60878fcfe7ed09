"""MNIST targets of issue 2, printed as Markdown tables for BENCHMARKS.md.

    python bench/mnist.py [--seeds 3] [--backends tensorflow,torch,jax]

1. Time to 99.0% test accuracy per backend: the `fast` recipe (LeNet-5),
   training seconds with validation excluded, first compilation included.
2. LeNet-5 with kcnn's default MNIST recipe, `--seeds` seeds, on the fastest
   backend of (1): mean and spread of the test accuracy (target >= 99.0%).
3. The best recipe (airbench_small, random crops), same seeds (target >= 99.5%).

Every run is a fresh process running `kcnn.training.train`; run directories go to
saved_models/bench_mnist/.
"""

import argparse
import os

from common import BACKENDS, ROOT, mean_spread, run_training, time_to

RECIPES = {
    # Reach 99% as early as possible: 3 epochs of batch 256 (fewer, cheaper steps), one-cycle AdamW. Issue 24 gave it
    # a margin. Searched with common.run_training (TensorFlow, seeds 0-2, two runs at a time, each pinned to one core
    # with taskset and OMP_NUM_THREADS=1: accuracies only, not timings); final accuracy at a peak of 6e-3
    # 99.07/99.06/99.09%, 1e-2 99.17/99.13/99.17, 1.5e-2 99.28/99.08/99.26, 2e-2 99.17/99.16/99.15, 3e-2 99.16/98.98/99.25; at 1.5e-2 with decoupled weight
    # decay 5e-3 99.28/99.19/99.23 (decay 2e-2: 99.25/99.09/99.28). Batch 512 (at 1e-2) and 2 epochs of batch 128
    # ended below 99% (seed 0); without label smoothing, at 6e-3: 99.02/99.16/99.07.
    "fast": dict(dataset="mnist", arch="lenet5", epochs=3, batch_size=256, optimizer="adamw", learning_rate=1.5e-2,
                 schedule="onecycle", weight_decay=5e-3, label_smoothing=0.1),
    "lenet5": dict(dataset="mnist", arch="lenet5"),  # kcnn's defaults for mnist
    "best": dict(dataset="mnist", arch="airbench_small", epochs=8, batch_size=128, optimizer="sgd",
                 learning_rate=0.4, schedule="onecycle", weight_decay=5e-4, label_smoothing=0.1, augment="crop"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: speed, lenet5, best")
    args = parser.parse_args()
    out = os.path.join(ROOT, "saved_models", "bench_mnist")
    skip = set(filter(None, args.skip.split(",")))
    fastest = "tensorflow"

    if "speed" not in skip:
        print("### Time to 99.0% MNIST test accuracy (LeNet-5, `fast` recipe)\n")
        print("| backend | training s to 99.0% | epochs | final test accuracy | images/s |")
        print("|---|---:|---:|---:|---:|")
        times = {}
        for backend in args.backends.split(","):
            result = run_training(backend, os.path.join(out, f"fast_{backend}"), **RECIPES["fast"])
            reached = time_to(result, 0.99)
            epochs = next((i + 1 for i, a in enumerate(result["epoch_val_accuracy"]) if a >= 0.99), None)
            times[backend] = reached if reached is not None else float("inf")
            images = 60_000 * len(result["epoch_train_seconds"]) / sum(result["epoch_train_seconds"])
            print(f"| {backend} | {'not reached' if reached is None else f'{reached:.1f}'} | {epochs or '-'} | "
                  f"{100 * result['accuracy']:.2f}% | {images:,.0f} |", flush=True)
        fastest = min(times, key=times.get)
        print(f"\nFastest backend: {fastest}\n")

    for part in ("lenet5", "best"):
        if part in skip:
            continue
        results = [run_training(fastest, os.path.join(out, f"{part}_seed{seed}"), seed=seed, **RECIPES[part])
                   for seed in range(args.seeds)]
        recipe = RECIPES[part]
        print(f"### {recipe['arch']} on MNIST, recipe `{part}`, {args.seeds} seeds ({fastest})\n")
        print("| seed | test accuracy | epochs | training s |")
        print("|---:|---:|---:|---:|")
        for seed, result in enumerate(results):
            print(f"| {seed} | {100 * result['accuracy']:.2f}% | {result['epochs_run']} | "
                  f"{sum(result['epoch_train_seconds']):.0f} |")
        print(f"| mean ± std | {mean_spread([r['accuracy'] for r in results])}% | | |\n", flush=True)


if __name__ == "__main__":
    main()
