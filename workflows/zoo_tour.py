"""Tour of the kcnn zoo: every architecture, its size and cost, and a forward pass.

    KERAS_BACKEND=jax python workflows/zoo_tour.py            # the README's `make demo`
    KERAS_BACKEND=torch python workflows/zoo_tour.py --pattern "resnet*"

For each registered model: the parameter count at its default input next to
the published reference (and whether they agree), multiply-accumulates,
parameter and activation memory, then a forward pass of two images at a
small input on the active backend. The table is printed and written to
saved_models/zoo_tour/ (zoo.csv, zoo.md, config.json).
"""

import argparse
import csv
import json
import os
import time

import keras
import numpy as np

import kcnn
from kcnn.runs.atomic import atomic_open

# ---- config (all defaults in one place) -----------------------------------
PATTERN = "*"  # which models (wildcard)
OUTPUT_DIR = "saved_models/zoo_tour"
BATCH = 2  # images in the forward-pass check
# On backends other than JAX, building a model allocates its weights; above this
# many parameters the tour leaves the full-size count to JAX.
MAX_ALLOCATED_PARAMS = 300_000_000


def tour(pattern, output_dir):
    backend = keras.backend.backend()
    rows = []
    for info in kcnn.list_models(pattern):
        if backend != "jax" and info.reference_params > MAX_ALLOCATED_PARAMS:
            print(f"{info.name}: {info.reference_params:,} parameters; run on KERAS_BACKEND=jax to count "
                  f"them without allocating {info.reference_params * 4 / 1024**3:.1f} GiB")
            continue
        table = kcnn.summary(info.name, print_fn=None)
        counted = table.trainable_params if info.params_counted == "torch" else table.total_params
        model = kcnn.build(info.name, input_shape=info.test_input_shape)
        images = np.random.default_rng(0).uniform(0, 1, (BATCH,) + info.test_input_shape).astype("float32")
        model(images)  # warm-up: tracing and compilation
        started = time.perf_counter()
        logits = keras.ops.convert_to_numpy(model(images))
        seconds = time.perf_counter() - started
        rows.append({
            "model": info.name,
            "input": "x".join(map(str, info.default_input_shape)),
            "params": counted,
            "reference": info.reference_params,
            "matches": "yes" if counted == info.reference_params else "NO",
            "GMACs": round(table.total_macs / 1e9, 3),
            "params_MB": round(table.params_bytes / 1024**2, 1),
            "activations_MB": round(table.activation_bytes / 1024**2, 1),
            "forward_input": "x".join(map(str, info.test_input_shape)),
            "forward_ms": round(seconds * 1000, 1),
            "finite": bool(np.all(np.isfinite(logits))),
        })
        print(_format_row(rows[-1]), flush=True)
    _write(rows, output_dir, pattern, backend)
    return rows


def _format_row(row):
    return (f"{row['model']:18s} {row['input']:>11s} {row['params']:>15,} {row['matches']:>4s} "
            f"{row['GMACs']:>8.3f} GMACs {row['params_MB']:>8.1f} MB  forward {row['forward_ms']:>7.1f} ms")


def _write(rows, output_dir, pattern, backend):
    os.makedirs(output_dir, exist_ok=True)
    _atomic_write(os.path.join(output_dir, "config.json"),
                  json.dumps({"pattern": pattern, "backend": backend, "batch": BATCH,
                              "keras": keras.__version__, "kcnn": kcnn.__version__}, indent=1))
    if not rows:
        return
    fields = list(rows[0])
    with atomic_open(os.path.join(output_dir, "zoo.csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) and not isinstance(r[k], bool) else str(r[k])
                                for k in fields) + " |" for r in rows]
    _atomic_write(os.path.join(output_dir, "zoo.md"), "\n".join(lines) + "\n")


def _atomic_write(path, text):
    with atomic_open(path) as f:
        f.write(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pattern", default=PATTERN, help="wildcard of model names")
    parser.add_argument("--output-dir", default=OUTPUT_DIR)
    args = parser.parse_args()
    rows = tour(args.pattern, args.output_dir)
    bad = [r["model"] for r in rows if r["matches"] != "yes" or not r["finite"]]
    print(f"\n{len(rows)} models; parameter counts match their references: {'all' if not bad else 'not ' + ', '.join(bad)}."
          f" Table written to {args.output_dir}/zoo.md")
