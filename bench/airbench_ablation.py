"""airbench94's ingredients added one at a time to kcnn's CIFAR-10 recipe, at a budget this CPU allows.

Jordan 2024 ("94% on CIFAR-10 in 3.29 seconds", section 3) reports the epochs each ingredient saves on the
way to 94% on a GPU (35 without them, 21 with whitening, ... 9.9 with all). Epochs to 94% cost hours per
row on 2 CPU cores, so this table trains every row for the same number of epochs (--epochs, default 4)
and compares the accuracy on batch 5 (trained on batches 1-4) with and without test-time augmentation:
each row adds one ingredient to the row above it.

    python bench/airbench_ablation.py [--epochs 4] [--backend tensorflow] [--seeds 0]

Rows: the baseline (kcnn's airbench network, its first layer whitened and frozen, SGD with Nesterov momentum
0.85, the triangular schedule, label smoothing 0.2, batch 1024, random flips and 2-pixel translations), then
the whitening bias trained for the first 30% of the epochs (airbench: 3 of 9.9), Dirac initialisation,
batch-norm biases at 64x the rate, lookahead, alternating flips; the last row's test-time augmentation
column is airbench's 6-view TTA. Not ablated: the whitening itself (kcnn's airbench is built with it).
"""

import argparse
import os
import statistics

from common import ROOT, run_training

from kcnn.backends.precision import cpu_flags, instruction_sets

BASELINE = dict(dataset="cifar10", augment="translate_flip", whiten_bias_epochs=0, dirac_init=False,
                norm_bias_lr=1.0, lookahead=False, tta="flip_crop")
# (row name, what it adds): cumulative
INGREDIENTS = [
    ("baseline (whitened first layer, frozen)", {}),
    ("+ whitening bias trained (first 30% of the epochs)", "whiten_bias"),
    ("+ Dirac initialisation", dict(dirac_init=True)),
    ("+ batch-norm biases at 64x the rate", dict(norm_bias_lr=64.0)),
    ("+ lookahead (every 5 steps)", dict(lookahead=True)),
    ("+ alternating flips", dict(augment="airbench")),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rows", type=int, default=len(INGREDIENTS), help="only the first N rows")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"CPU: {', '.join(instruction_sets(cpu_flags()))}, {len(os.sched_getaffinity(0))} cores; {args.backend}, "
          f"{args.epochs} epochs, seeds {args.seeds}\n")
    print("| recipe | holdout (batch 5) | with 6-view TTA | training s |")
    print("|---|---:|---:|---:|")
    config = dict(BASELINE, epochs=args.epochs)
    for name, adds in INGREDIENTS[:args.rows]:
        if adds == "whiten_bias":
            adds = dict(whiten_bias_epochs=max(1, round(0.3 * args.epochs)))
        config.update(adds)
        plain, tta, seconds = [], [], []
        for seed in seeds:
            result = run_training(args.backend, os.path.join(ROOT, "saved_models", "bench_airbench_ablation"),
                                  **dict(config, seed=seed))
            plain.append(result["accuracy"])
            tta.append(result["tta_accuracy"]["flip_crop"])
            seconds.append(sum(result["epoch_train_seconds"]))
        print(f"| {name} | {_mean_spread(plain)} | {_mean_spread(tta)} | {statistics.mean(seconds):.0f} |",
              flush=True)


def _mean_spread(values):
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


if __name__ == "__main__":
    main()
