"""Time to issue 2's accuracy targets on each backend, one table.

    python bench/time_to_accuracy.py                               # MNIST and CIFAR-10, 3 backends (hours)
    python bench/time_to_accuracy.py --datasets mnist              # minutes
    python bench/time_to_accuracy.py --datasets cifar10 --backends torch

Targets (issue 2): MNIST 99.0% test accuracy, LeNet-5 (bench/mnist.py's `fast` recipe); CIFAR-10 90% on the
held-out data_batch_5 (trained on batches 1-4; `kcnn train --dataset cifar10`'s defaults, bench/cifar10.py, the first 1,000 official test
images as the second check). Each run is a fresh process running `kcnn.train` with the workflow's own
defaults for its backend. "Training s" excludes the per-epoch evaluation and includes the first
compilation; a backend that never reaches the target shows its best accuracy.
"""

import argparse
import os

from common import BACKENDS, ROOT, run_training, time_to
from mnist import RECIPES as MNIST_RECIPES

TARGETS = {  # dataset: (recipe, target, training images per epoch, what the accuracy is measured on)
    "mnist": (MNIST_RECIPES["fast"], 0.99, 60_000, "official test set"),
    "cifar10": (dict(dataset="cifar10", arch="airbench"), 0.90, 40_000, "data_batch_5 held out"),  # the defaults
}


def row(dataset, backend, result):
    recipe, target, images_per_epoch, _ = TARGETS[dataset]
    seconds = time_to(result, target)
    accuracies = result["epoch_val_accuracy"]
    epoch = next((i + 1 for i, accuracy in enumerate(accuracies) if accuracy >= target), None)
    training = sum(result["epoch_train_seconds"])
    extra = f" (first 1,000 test: {100 * result['test_first1000_accuracy']:.2f}%)" \
        if "test_first1000_accuracy" in result else ""
    return (f"| {dataset} | {recipe['arch']} | {100 * target:.0f}% | {backend} | "
            f"{'not reached' if seconds is None else f'{seconds:.0f}'} | {epoch or '-'} | "
            f"{100 * max(accuracies):.2f}% | {100 * result['accuracy']:.2f}%{extra} | "
            f"{images_per_epoch * len(accuracies) / training:,.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(TARGETS))
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    print("| dataset | model | target | backend | training s to target | epoch reached | best accuracy | "
          "final accuracy | training images/s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for dataset in args.datasets.split(","):
        recipe = TARGETS[dataset][0]
        for backend in args.backends.split(","):
            result = run_training(backend, os.path.join(ROOT, "saved_models", "bench_time_to_accuracy",
                                                        f"{dataset}_{backend}"), **recipe)
            print(row(dataset, backend, result), flush=True)
    print()
    for dataset in args.datasets.split(","):
        recipe = TARGETS[dataset][0]
        print(f"{dataset}: accuracy on the {TARGETS[dataset][3]}; recipe "
              + ", ".join(f"{key}={value}" for key, value in recipe.items() if key != "dataset"))


if __name__ == "__main__":
    main()
