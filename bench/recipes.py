"""Each architecture on CIFAR-10 with the recipe it gets by default (`kcnn train --dataset cifar10 --arch ARCH`):
its own where its model file declares one (airbench: airbench94's), else the plain one (kcnn/recipes.py). Trained on
batches 1-4, evaluated on batch 5 (the holdout) and the first 1,000 official test images.

    python bench/recipes.py [--archs lenet5,cifar_resnet20] [--backend torch] [--seed 0] [--epochs N]

The "whole command" column is the wall time of the run (data, fit with validation, evaluation, plots); the
"training" column sums the epochs' training without validation. Every figure names the CPU it ran on.
"""

import argparse
import os
import time

from common import ROOT, run_training

from kcnn.backends.precision import cpu_flags, instruction_sets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="lenet5")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    args = parser.parse_args()
    print(f"CPU: {', '.join(instruction_sets(cpu_flags()))}, {len(os.sched_getaffinity(0))} cores, "
          f"{args.backend}\n")
    print("| architecture | recipe | epochs | holdout (batch 5) | first 1,000 test | training s | whole command s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for arch in args.archs.split(","):
        started = time.perf_counter()
        overrides = dict(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
        result = run_training(args.backend, os.path.join(ROOT, "saved_models", f"bench_recipe_{arch}"),
                              dataset="cifar10", arch=arch, **overrides)
        wall = time.perf_counter() - started
        tta = result.get("tta_accuracy", {})
        holdout = f"{100 * result['accuracy']:.2f}%" + (
            f" ({', '.join(f'{mode} {100 * a:.2f}%' for mode, a in tta.items())})" if tta else "")
        print(f"| {arch} | {result['recipe']} | {result['epochs_run']} | {holdout} | "
              f"{100 * result['test_first1000_accuracy']:.2f}% | {sum(result['epoch_train_seconds']):.0f} | "
              f"{wall:.0f} |", flush=True)
        print("  holdout accuracy per epoch: " + ", ".join(f"{100 * a:.1f}" for a in result["epoch_val_accuracy"]))


if __name__ == "__main__":
    main()
