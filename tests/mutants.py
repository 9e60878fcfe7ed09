"""Mutation check: small deliberate bugs in kcnn, each of which some test must catch.

    python tests/mutants.py [NAME ...]      # every mutant (or the named ones): a table, killed or survived
    python tests/mutants.py --list          # the mutants and the tests that should kill them

Each mutant replaces one exact piece of text in one file of a scratch copy of the project (the tracked
files, `git ls-files`), then runs only the tests that should catch it, with the copy first on PYTHONPATH (so
the worker processes import the mutated kcnn too). A mutant is killed when those tests fail. The test suite
checks, cheaply, that every mutant still applies to today's code (tests/test_structure.py); running them all
takes about 15 minutes on 2 cores.

Hand-written rather than mutmut or cosmic-ray: those generate thousands of operator mutants over the pure
Python and run the whole suite for each; the bugs worth proving caught here are semantic (a BGR flip
forgotten, a shard that returns the whole batch) and need a chosen test, often in a worker process.
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the project's root
    old: str  # occurs exactly once in the file
    new: str
    tests: tuple  # pytest arguments: the tests that should catch it


MUTANTS = (
    Mutant("export-returns-zeros", "kcnn/deploy/export.py",
           'return {"probabilities": probabilities,', 'return {"probabilities": tf.zeros_like(probabilities),',
           ("tests/test_export.py::test_architectures_with_every_kind_of_layer_export_to_both_formats",)),
    Mutant("flip-does-nothing", "kcnn/data/pipeline.py",
           'flip = [keras.layers.RandomFlip("horizontal", seed=seed)]', "flip = []",
           ("tests/test_data.py", "-k", "augmentation")),
    Mutant("mixup-does-not-mix", "kcnn/data/pipeline.py",
           'layers.append((keras.layers.MixUp if augment == "mixup" else keras.layers.CutMix)(seed=seed))',
           "pass", ("tests/test_data.py", "-k", "augmentation")),
    Mutant("shard-returns-the-whole-batch", "kcnn/data/pipeline.py",
           "batches = batches.map(lambda indices: indices[shard_index::shard_count])", "pass",
           ("tests/test_data.py", "-k", "shards")),
    Mutant("evaluation-shard-ignored", "kcnn/data/pipeline.py",
           "dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shard(shard_count, shard_index)",
           "dataset = tf.data.Dataset.from_tensor_slices((images, labels))",
           ("tests/test_data.py", "-k", "shards")),
    Mutant("epoch-order-ignores-the-epoch", "kcnn/data/pipeline.py",
           "seed=tf.stack([seed, epoch]))", "seed=tf.stack([seed, 0]))",
           ("tests/test_data.py", "-k", "resumes_at_an_epoch")),
    Mutant("grayscale-is-bilevel", "kcnn/data/folder.py",
           '"grayscale": ("L", 1)}', '"grayscale": ("1", 1)}',
           ("tests/test_folder.py", "-k", "palette")),
    Mutant("validation-images-also-train", "kcnn/data/folder.py",
           "training.append(members[count:])", "training.append(members)",
           ("tests/test_folder.py",)),
    Mutant("batch-norm-fold-wrong-epsilon", "kcnn/backends/torch_fast.py",
           "scale = torch.rsqrt(batch_norm.moving_variance.value + batch_norm.epsilon)",
           "scale = torch.rsqrt(batch_norm.moving_variance.value + 1e-5)",
           ("tests/test_torch_fast.py",)),
    Mutant("depthwise-left-to-keras", "kcnn/backends/torch_fast.py",
           "    keras.layers.DepthwiseConv2D: _depthwise_call,\n", "",
           ("tests/test_torch_fast.py",)),
    Mutant("bgr-flip-forgotten", "kcnn/weights/loading.py",
           "conv.set_weights([kernel[:, :, ::-1, :], *rest])", "conv.set_weights([kernel, *rest])",
           ("tests/test_weights.py", "-k", "official_keras_file")),
    Mutant("dense-after-flatten-not-reordered", "kcnn/weights/loading.py",
           'values = [_flatten_order(layer, tensors["weight"].T)]', 'values = [tensors["weight"].T]',
           ("tests/test_weights.py", "-k", "torchvision_layout and vgg16")),
    Mutant("conv-kernel-height-and-width-swapped", "kcnn/weights/loading.py",
           'values = [tensors["weight"].transpose(2, 3, 1, 0)]', 'values = [tensors["weight"].transpose(3, 2, 1, 0)]',
           ("tests/test_weights.py", "-k", "torchvision_layout and resnet18")),
    Mutant("checksum-check-passes-everything", "kcnn/weights/loading.py",
           "return digest.hexdigest().startswith(expected.lower())", "return True",
           ("tests/test_weights.py", "-k", "checksum")),
    Mutant("imagenet-mean-in-bgr-order", "kcnn/weights/__init__.py",
           "IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)",
           "IMAGENET_MEAN = (0.406 * 255, 0.456 * 255, 0.485 * 255)",
           ("tests/test_weights.py", "-k", "named_source and resnet18")),
    Mutant("evaluation-resize-nearest", "kcnn/weights/transform.py",
           "getattr(Image.Resampling, self.interpolation.upper())", "Image.Resampling.NEAREST",
           ("tests/test_weights.py", "-k", "evaluation_transform")),
    Mutant("recipe-of-another-family", "kcnn/recipes.py",
           "return own.get(dataset, PLAIN[dataset])",
           "return own.get(dataset) or next(iter(_declared(dataset)), PLAIN[dataset])",
           ("tests/test_config.py", "-k", "another_familys_recipe or lenet5_on_cifar10")),
    Mutant("recipe-name-ignored", "kcnn/recipes.py",
           "    if name is None:\n        return own.get(dataset, PLAIN[dataset])",
           "    if True:\n        return own.get(dataset, PLAIN[dataset])",
           ("tests/test_config.py", "-k", "recipe_by_name")),
    Mutant("config-file-ignored", "kcnn/cli/arguments.py",
           "        values.update(read_config_file(args.config, kind))", "        pass",
           ("tests/test_config.py", "-k", "config_file_sets_defaults")),
    Mutant("foreign-files-not-checked", "kcnn/runs/rundir.py",
           "others = self.other_files()\n            if others:", "others = self.other_files()\n            if False:",
           tuple(f"tests/test_bad_input.py::test_api[{row}]" for row in (
               "output folder holding the user's own files", "overwrite of a folder that is not a kcnn run",
               "fine-tuning into the user's own files"))),
    Mutant("overwrite-removes-whole-sub-folders", "kcnn/runs/rundir.py",
           "        for name in sorted(names, reverse=True):\n            self._remove_entry(name, manifest[\"files\"].get(",
           "        for name in [n for n in SUB_FOLDERS if os.path.isdir(self.file(n))]:\n"
           "            __import__(\"shutil\").rmtree(self.file(name))\n"
           "        for name in sorted(names, reverse=True):\n            self._remove_entry(name, manifest[\"files\"].get(",
           ("tests/test_run_folder.py", "-k", "users_file_in_logs or users_file_in_backup")),
    Mutant("cleaning-follows-links", "kcnn/runs/rundir.py",
           "        if os.path.islink(path) or not os.path.isdir(path):\n            os.remove(path)",
           "        if os.path.islink(path) or not os.path.isdir(path):\n            os.remove(os.path.realpath(path))",
           ("tests/test_run_folder.py", "-k", "link_at_the_top")),
    Mutant("record-not-bound-to-its-folder", "kcnn/runs/rundir.py",
           "        return record if record is not None and self._bound(record) else None",
           "        return record", ("tests/test_run_folder.py", "-k", "copied or changed_file")),
    Mutant("early-stopping-keeps-the-last-weights", "kcnn/training/train.py",
           "restore_best_weights=True, verbose=config.verbose))", "restore_best_weights=False, verbose=config.verbose))",
           ("tests/test_train.py", "-k", "early_stopping")),
    Mutant("resume-repeats-an-epoch", "kcnn/training/callbacks.py",
           "keras_private.set_initial_epoch(self.model, epoch)",
           "keras_private.set_initial_epoch(self.model, max(epoch - 1, 0))",
           ("tests/test_train.py", "-k", "resume_after_a_crash")),
    Mutant("min-input-size-not-checked", "kcnn/registry.py",
           "if min(image_shape[:2]) < info.min_input_size:", "if False:",
           ("tests/test_zoo.py", "-k", "min_input_size and lenet5")),
    Mutant("lenet5-with-8-first-filters", "kcnn/models/lenet.py",
           'x = layers.Conv2D(6, 5, activation=activation, name="conv1")(x)',
           'x = layers.Conv2D(8, 5, activation=activation, name="conv1")(x)',
           ("tests/test_zoo.py", "-k", "parameter_count and lenet5")),
    Mutant("top-k-is-the-least-likely", "kcnn/weights/__init__.py",
           'best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top]',
           'best = np.argsort(probabilities, axis=-1, kind="stable")[:, :top]',
           ("tests/test_weights.py", "-k", "decode_predictions")),
    Mutant("moving-statistics-not-broadcast", "kcnn/training/distribute.py",
           "            dist.broadcast(value, src=0)\n", "",
           ("tests/test_distribute.py", "-k", "moving_statistics")),
    Mutant("fresh-head-left-unset", "kcnn/registry.py",
           "        initialize_the_rest(model)  # a fresh head", "        pass",
           ("tests/test_weights.py", "-k", "fresh_head")),
    Mutant("divergence-check-skipped", "kcnn/training/callbacks.py",
           "        raise DivergedError(f\"Training diverged", "        return (f\"Training diverged",
           ("tests/test_divergence.py",)),
    Mutant("diverged-model-file-loaded", "kcnn/runs/modelfile.py",
           "    if not finite_outputs(model, probe_images(shape, count=2)):", "    if False:",
           ("tests/test_bad_input.py", "-k", "NaN and not learning")),
    Mutant("exif-ignored", "kcnn/data/folder.py",
           "image = ImageOps.exif_transpose(image)", "image = image",
           ("tests/test_images.py", "-k", "orientation")),
    Mutant("fifo-opened", "kcnn/data/folder.py",  # the tests fail after their time limit instead of hanging
           "kind = None if isinstance(file, io.BytesIO) else special_file(file)", "kind = None",
           ("tests/test_images.py", "-k", "named_pipe_is_not_opened_as_an_image or image_folder_is_skipped")),
    Mutant("pixel-budget-off", "kcnn/deploy/serve.py",
           "    if pixels > MAX_REQUEST_PIXELS:", "    if False:",
           ("tests/test_serve.py", "-k", "budget")),
    Mutant("non-finite-pixels-accepted", "kcnn/deploy/serve.py",
           "    if image.size and not np.isfinite(image).all():", "    if False:",
           ("tests/test_serve.py", "-k", "pixel and not budget")),
)


def apply(mutant, root):
    """Write the mutant into the file under `root`; refuses one whose text is not there exactly once."""
    path = os.path.join(root, mutant.path)
    with open(path) as f:
        text = f.read()
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: its text occurs {count} times in {mutant.path}, not once; "
                         f"update tests/mutants.py to today's code")
    mutated = text.replace(mutant.old, mutant.new)
    compile(mutated, path, "exec")  # a mutant is a bug, not a syntax error
    with open(path, "w") as f:
        f.write(mutated)


def scratch_copy():
    folder = tempfile.mkdtemp(prefix="kcnn-mutant-")
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(folder, name))
    return folder


def run(mutant):
    """(killed, seconds, the tail of pytest's output)."""
    folder = scratch_copy()
    try:
        apply(mutant, folder)
        env = dict(os.environ, PYTHONPATH=folder + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.setdefault("KCNN_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))
        which = subprocess.run([sys.executable, "-c", "import kcnn; print(kcnn.__file__)"], cwd=folder, env=env,
                               capture_output=True, text=True)
        assert which.stdout.startswith(folder), f"the scratch copy's kcnn was not imported: {which.stdout}{which.stderr}"
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests],
                                cwd=folder, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        tail = (result.stdout + result.stderr)[-1500:]
        if result.returncode == 5:
            raise RuntimeError(f"mutant {mutant.name}: its tests {mutant.tests} select nothing")
        return result.returncode != 0, seconds, tail
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv):
    if argv[:1] == ["--list"]:
        for mutant in MUTANTS:
            print(f"{mutant.name:40s} {mutant.path:28s} {' '.join(mutant.tests)}")
        return 0
    chosen = [m for m in MUTANTS if not argv or m.name in argv]
    print(f"{'mutant':40s} {'tests run':72s} {'result':9s} seconds", flush=True)
    survivors = []
    for mutant in chosen:
        killed, seconds, tail = run(mutant)
        print(f"{mutant.name:40s} {' '.join(mutant.tests)[:72]:72s} {'killed' if killed else 'SURVIVED':9s} "
              f"{seconds:6.1f}", flush=True)
        if not killed:
            survivors.append((mutant.name, tail))
    print(f"\n{len(chosen) - len(survivors)} killed of {len(chosen)}")
    for name, tail in survivors:
        print(f"\n--- {name} survived:\n{tail}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
