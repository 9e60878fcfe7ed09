"""The degradation experiment of the lecture notes (He et al. 2016, Figure 6):
plain-20 and plain-56 against ResNet-20 and ResNet-56 on CIFAR-10, one command.

    python bench/degradation.py [--epochs 20] [--limit N] [--backend tensorflow] [--mixed-precision]

Trains each network with the same recipe (SGD, Nesterov momentum 0.9, cosine
schedule, weight decay 5e-4, crops and flips) on batches 1-4, evaluates on
batch 5, prints a table of training and holdout error, and plots the training
error per epoch of all four in saved_models/bench_degradation/degradation.png.
The paper's numbers (8.75% for ResNet-20, 6.97% for ResNet-56) need its full
schedule (64,000 steps of 128 images, about --epochs 200 here), i.e. a GPU; on
this CPU use --epochs and --limit (BENCHMARKS.md: --epochs 10 --limit 5000).
"""

import argparse
import os

from common import ROOT, run_training

MODELS = ("plain20", "plain56", "cifar_resnet20", "cifar_resnet56")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--backend", default="tensorflow")
    parser.add_argument("--mixed-precision", action="store_true", help="bfloat16 (float16 on torch)")
    args = parser.parse_args()
    out = os.path.join(ROOT, "saved_models", "bench_degradation")
    recipe = dict(dataset="cifar10", epochs=args.epochs, batch_size=128, optimizer="sgd", learning_rate=0.1,
                  schedule="cosine", weight_decay=5e-4, augment="crop_flip", limit=args.limit,
                  mixed_precision=args.mixed_precision)
    results = {arch: run_training(args.backend, os.path.join(out, arch), arch=arch, **recipe) for arch in MODELS}

    print("| network | final training error | holdout error (batch 5) | training s |")
    print("|---|---:|---:|---:|")
    for arch, result in results.items():
        print(f"| {arch} | {100 * (1 - result['train_accuracy'][-1]):.2f}% | {100 * (1 - result['accuracy']):.2f}% | "
              f"{sum(result['epoch_train_seconds']):.0f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kcnn.inspect.viz import save_figure

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for arch, result in results.items():
        errors = [100 * (1 - a) for a in result["train_accuracy"]]
        axis.plot(range(1, len(errors) + 1), errors, label=arch, linestyle="--" if arch.startswith("plain") else "-")
    axis.set(xlabel="epoch", ylabel="training error (%)", title="Degradation: deeper plain nets train worse")
    axis.legend()
    axis.grid(alpha=0.3)
    save_figure(figure, os.path.join(out, "degradation.png"))
    print(f"\nplot: {os.path.relpath(os.path.join(out, 'degradation.png'), ROOT)}")


if __name__ == "__main__":
    main()
