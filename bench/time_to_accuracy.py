"""Time to issue 2's accuracy targets on each backend, one table.

    python bench/time_to_accuracy.py                               # MNIST and CIFAR-10, 3 backends (hours)
    python bench/time_to_accuracy.py --datasets mnist              # minutes (3 seeds a backend)
    python bench/time_to_accuracy.py --datasets cifar10 --backends torch --seeds 0

Targets (issue 2): MNIST 99.0% test accuracy, LeNet-5 (bench/mnist.py's `fast` recipe); CIFAR-10 90% on the
held-out data_batch_5 (trained on batches 1-4; `kcnn train --dataset cifar10`'s defaults, bench/cifar10.py, the first 1,000 official test
images as the second check). Each run is a fresh process running `kcnn.training.train` with the workflow's own
defaults for its backend. "Training s" excludes the per-epoch evaluation and includes the first
compilation; every backend runs each of --seeds (default 0,1,2), and the row gives the mean and standard
deviation over the seeds, and the worst seed's final accuracy.
"""

import argparse
import os
import statistics

from common import BACKENDS, ROOT, mean_spread, run_training, time_to
from mnist import RECIPES as MNIST_RECIPES

from kcnn.backends.precision import cpu_flags, instruction_sets

TARGETS = {  # dataset: (recipe, target, training images per epoch, what the accuracy is measured on)
    "mnist": (MNIST_RECIPES["fast"], 0.99, 60_000, "official test set"),
    "cifar10": (dict(dataset="cifar10", arch="airbench"), 0.90, 40_000, "data_batch_5 held out"),  # the defaults
}


def row(dataset, backend, results):
    """One table row: every seed's run of `dataset` on `backend`."""
    recipe, target, images_per_epoch, _ = TARGETS[dataset]
    seconds = [time_to(result, target) for result in results]
    reached = [s for s in seconds if s is not None]
    epochs = [next((i + 1 for i, accuracy in enumerate(result["epoch_val_accuracy"]) if accuracy >= target), None)
              for result in results]
    finals = [result["accuracy"] for result in results]
    extra = ""
    if all("test_first1000_accuracy" in result for result in results):
        extra = f" (first 1,000 test: {mean_spread([r['test_first1000_accuracy'] for r in results])}%)"
    images = statistics.mean(images_per_epoch * len(r["epoch_val_accuracy"]) / sum(r["epoch_train_seconds"])
                             for r in results)
    to_target = "not reached" if not reached else _seconds(reached)
    if reached and len(reached) < len(results):
        to_target += f" ({len(reached)} of {len(results)} seeds)"
    return (f"| {dataset} | {recipe['arch']} | {100 * target:.0f}% | {backend} | {len(results)} | {to_target} | "
            f"{', '.join(str(e or '-') for e in epochs)} | {mean_spread(finals)}%{extra} | "
            f"{100 * min(finals):.2f}% | {images:,.0f} |")


def _seconds(values):
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(TARGETS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each seed one run per backend")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"CPU: {', '.join(instruction_sets(cpu_flags()))}, {len(os.sched_getaffinity(0))} cores; seeds {args.seeds}\n")
    print("| dataset | model | target | backend | seeds | training s to target (mean ± std) | epoch reached | "
          "final accuracy (mean ± std) | worst seed | training images/s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for dataset in args.datasets.split(","):
        recipe = TARGETS[dataset][0]
        for backend in args.backends.split(","):
            results = [run_training(backend, os.path.join(ROOT, "saved_models", "bench_time_to_accuracy",
                                                          f"{dataset}_{backend}"), **dict(recipe, seed=seed))
                       for seed in seeds]
            print(row(dataset, backend, results), flush=True)
    print()
    for dataset in args.datasets.split(","):
        recipe = TARGETS[dataset][0]
        print(f"{dataset}: accuracy on the {TARGETS[dataset][3]}; recipe "
              + ", ".join(f"{key}={value}" for key, value in recipe.items() if key != "dataset"))


if __name__ == "__main__":
    main()
