"""The job both workflows are: one object holds the config, the distribution plan and the run folder, and
`Job.run()` reads as the steps in order. From-scratch training (kcnn.training.train.TrainJob) and fine-tuning
(kcnn.training.finetune.FinetuneJob) supply the steps that differ as methods: `load_data`, `fit`, `evaluate`.

    run = TrainJob(TrainConfig(arch="lenet5", dataset="mnist")).run()

What they share is here: the plan (quiet workers other than the chief, a restarted worker resumes), the
mixed-precision policy restored, the run folder prepared and locked, and at the end the model, metrics, plots,
export and summary written in the same order (the backup last, so that a run killed on the way resumes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from kcnn.training import distribute
from kcnn.runs.rundir import Run, RunDir, write_errors_explained  # noqa: F401 (Run: what a job returns)
from kcnn.backends.precision import mixed_precision_policy, precision_decision

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras
    from kcnn.data.datasets import ImageData


class Job:
    """One run: `config` (resolved), `plan` (kcnn.training.distribute), `folder` (the RunDir), and what the
    steps make (`model`, `metrics`, `predicted`). Subclasses set `kind` and define the steps."""

    kind = None  # the run folder's marker: "train" or "finetune"

    def __init__(self, config, callbacks=()):
        self.config = config.resolved()
        self.callbacks = list(callbacks)  # the user's Keras callbacks, after kcnn's own
        self.folder = RunDir(self.config.output_dir)
        self.plan = None
        self.model = self.metrics = self.predicted = None

    def run(self) -> Run:
        """The steps in order; returns the `Run` (on workers other than the chief: without metrics)."""
        with self.distribution_plan():  # closed whatever happens
            self.load_data()  # every check on the data before the run folder is touched
            self.check_class_names()  # what the export and the server need, before the first epoch
            with self.own_run_folder():  # the chief prepares and locks it; the others wait
                self.fit()  # self.model
                self.evaluate()  # self.metrics, self.predicted (on the chief)
                return self.plan.on_chief(self.save) or self.result(metrics=None, history=None)

    # ---- the steps each workflow defines (TrainJob, FinetuneJob): a Job without them is a bug, raised as one ----

    def load_data(self) -> None:
        raise NotImplementedError

    def fit(self) -> None:
        raise NotImplementedError

    def evaluate(self) -> None:
        raise NotImplementedError

    def eval_data_for_plots(self) -> ImageData:
        return self.eval_data

    def phase_starts(self) -> dict | None:
        """{phase name: first epoch} to mark on the training curves, or None."""
        return None

    # ---- the steps they share ---------------------------------------------------------------------------

    def check_class_names(self) -> None:
        from kcnn.deploy.export import check_class_names
        from kcnn.errors import InvalidArgumentError

        check_class_names(list(self.train_data.class_names), InvalidArgumentError,
                          where=self.config.dataset if self.config.is_folder else "")

    @contextlib.contextmanager
    def distribution_plan(self) -> Iterator[distribute.Plan]:
        """self.plan for the block, closed whatever happens. When torchrun (--max-restarts) starts the workers
        again after one failed, they resume the run they were writing."""
        self.plan = distribute.plan(self.config.distribute)
        try:
            if self.plan.restarted and self.folder.is_run() and not self.folder.is_finished():
                self.config = dataclasses.replace(self.config, resume=True, overwrite=False)
            if not self.plan.is_chief:
                self.config = dataclasses.replace(self.config, verbose=0)  # the chief reports for every worker
            self.plan.check_batch(self.config.batch_size)
            yield self.plan
        finally:
            self.plan.close()

    @contextlib.contextmanager
    def own_run_folder(self) -> Iterator[RunDir]:
        """The run folder, prepared by the chief alone (the others wait for it) and locked while the block
        runs; the operating system's refusals to write come out as one sentence."""
        config, folder = self.config, self.folder
        lock = self.plan.on_chief(lambda: folder.prepare(config, self.kind, resume=config.resume,
                                                          overwrite=config.overwrite))
        with lock or contextlib.nullcontext(), write_errors_explained(folder.path, resumable=True):
            yield folder

    def save(self) -> Run:
        """On the chief: model.keras, metrics.json and the plots, the export, then the backup deleted (last:
        while it exists, --resume can finish a run killed after training), then the summary."""
        import keras

        config, folder, metrics = self.config, self.folder, self.metrics
        metrics.setdefault("backend", keras.backend.backend())
        metrics.setdefault("dtype_policy", dtype_policy(config.mixed_precision))
        if config.distribute:
            metrics["distribute"] = self.plan.describe()
        with self.saying("Writing model.keras, metrics.json and the plots (curves, confusion, samples, Grad-CAM)"):
            folder.save_model(self.model)
            folder.write_json("metrics.json", metrics)
            phase_starts = self.phase_starts()
            plots(folder, folder.history(), self.eval_data_for_plots(), self.predicted, config,
                  phase_starts=phase_starts, model=self.model)
        if config.export:
            self.export()
        folder.finish()
        if config.verbose:
            print(summary_table(config, metrics))
        return self.result(metrics=metrics, history=folder.history())

    def result(self, metrics: dict | None, history: dict | None) -> Run:
        """The `Run` the workflow returns (a worker other than the chief: without metrics and history)."""
        return Run(self.folder, self.config, tuple(self.train_data.class_names), self.model,
                   self.folder.file("model.keras"), metrics=metrics, history=history)

    def export(self) -> None:
        """A SavedModel for serving in export/1 (overwrite: a resumed run replaces the export its killed
        predecessor finished), its path in metrics.json."""
        from kcnn.deploy.export import export

        with self.saying("Exporting a SavedModel for serving (on TensorFlow)"):
            self.metrics["export"] = export(self.folder.path, "saved_model", overwrite=True, verbose=False)
            self.folder.write_json("metrics.json", self.metrics)

    @contextlib.contextmanager
    def saying(self, what: str) -> Iterator[None]:
        """The steps after training take seconds each: say what is happening, and how long it took."""
        clock = Stopwatch()
        if self.config.verbose:
            print(f"{what} ...", flush=True)
        yield
        if self.config.verbose:
            print(f"... {clock.seconds:.0f} s.", flush=True)


@contextlib.contextmanager
def precision(mixed: bool) -> Iterator[None]:
    """Keras' mixed-precision policy for the block (if `mixed`: the one this machine trains fastest in, which
    can be float32, kcnn.backends.precision.precision_decision), and the caller's policy again after it."""
    import keras

    policy = keras.mixed_precision.global_policy()
    try:
        if mixed:
            keras.mixed_precision.set_global_policy(mixed_precision_policy())
        yield
    finally:
        keras.mixed_precision.set_global_policy(policy)


def dtype_policy(mixed: bool) -> str:
    """The name of the policy a run trains in (metrics.json's `dtype_policy`): what `precision(mixed)` sets."""
    import keras

    return precision_decision()[0] if mixed else keras.mixed_precision.global_policy().name


def plots(run: RunDir, history: dict, eval_data: ImageData, predicted: np.ndarray, config: Any,
          phase_starts: dict | None = None, model: keras.Model | None = None) -> None:
    from kcnn.inspect import viz

    save_figure(run, viz.training_curves(history, title=f"{config.arch} on {config.dataset_name}",
                                        phase_starts=phase_starts),
                    run.file("curves.png"))
    save_figure(run, viz.confusion_matrix(eval_data.labels, predicted, eval_data.class_names,
                                         title=f"{config.arch} on {eval_data.name}"),
                    run.file("confusion.png"))
    wrong_first = np.argsort(predicted[:32] == eval_data.labels[:32], kind="stable")
    save_figure(run, viz.sample_predictions(eval_data.images[:32][wrong_first], eval_data.labels[:32][wrong_first],
                                           predicted[:32][wrong_first], eval_data.class_names),
                    run.file("samples.png"))
    if model is not None:
        explanations(run, model, eval_data, predicted)


def explanations(run: RunDir, model: keras.Model, eval_data: ImageData, predicted: np.ndarray,
                 count: int = 8) -> None:
    """explain.png: Grad-CAM on `count` held-out images, the wrong ones first (up to half), each map of the
    class the model predicted. A model without a convolution feature map (the mlp) gets none: one line says so."""
    from kcnn.inspect import explain
    from kcnn.inspect import viz

    right, wrong = (np.flatnonzero((predicted[:64] == eval_data.labels[:64]) == ok) for ok in (True, False))
    chosen = np.concatenate([wrong[:count // 2], right[:count - min(len(wrong), count // 2)], wrong[count // 2:]])
    chosen = chosen[:count]
    images = explain.fit_to_model(model, eval_data.images[chosen])
    try:
        heatmaps = explain.grad_cam(model, images, class_index=predicted[chosen])
    except explain.NoSpatialLayerError:
        print(f"explain.png skipped: {model.name} has no convolution feature map for Grad-CAM")
        return
    save_figure(run, viz.grad_cam_grid(images, heatmaps, eval_data.labels[chosen], predicted[chosen],
                                      eval_data.class_names, title=f"Grad-CAM on {eval_data.name}"),
                    run.file("explain.png"))


def save_figure(run: RunDir, figure: Any, path: str) -> None:
    """A plot of the run (kcnn.inspect.viz.save_figure), entered in its manifest before it is written."""
    from kcnn.inspect import viz

    with run.track(path):
        viz.save_figure(figure, path)


def summary_table(config: Any, metrics: dict) -> str:
    """The table a run prints at its end (both workflows; the rows a run has no figure for are left out)."""
    from kcnn.training.report import tta_note

    width = 26
    weights = f" ({config.weights})" if getattr(config, "weights", None) else ""
    what = "backbone / dataset" if weights else "model / dataset"
    lines = [
        f"{'run':{width}s} {config.output_dir}",
        f"{what:{width}s} {config.arch}{weights} / {config.dataset_name} ({metrics['backend']})",
        *([f"{'recipe':{width}s} {metrics['recipe']} (kcnn info {config.arch})"] if metrics.get("recipe") else []),
    ]
    if "validation_images" in metrics:  # fine-tuning: the epochs watched part of the training images, not these
        lines.append(f"{'held-out accuracy':{width}s} {metrics['accuracy']:.4f} on the {metrics['eval_split']} split, "
                     f"never trained on")
    else:
        lines.append(f"{metrics['eval_split'] + ' accuracy':{width}s} {metrics['accuracy']:.4f}")
    for mode, accuracy in metrics.get("tta_accuracy", {}).items():
        note = tta_note(mode, accuracy, metrics["accuracy"])
        lines.append(f"{'with test-time ' + mode:{width}s} {accuracy:.4f}{note}")
    if "validation_images" in metrics:
        from kcnn.data.views import describe_views

        views = " and their views" if config.flip or config.extra_views else ""
        watched = "epochs' val_accuracy"
        # the epochs' validation images are set aside from the training images: the rest is what fit() saw
        trained = describe_views(metrics["train_images"] - metrics["validation_images"], config.flip,
                                 config.extra_views)
        lines.append(f"{'trained on':{width}s} {trained}")
        lines.append(f"{watched:{width}s} on {metrics['validation_images']:,} other training images, set aside "
                     f"(validation_split {config.validation_split:g}){views}; not on the held-out ones")
    for key, value in metrics.items():
        if key.endswith("_accuracy") and key != "per_class_accuracy" and isinstance(value, float):
            lines.append(f"{key:{width}s} {value:.4f}")
    if "image_size" in metrics:
        lines.append(f"{'image size':{width}s} {metrics['image_size']}x{metrics['image_size']}")
    if "unfrozen_from" in metrics:
        lines.append(f"{'fine-tuned from':{width}s} {metrics['unfrozen_from']}")
    lines.append(f"{'epochs':{width}s} {metrics['epochs_run']}")
    if "feature_seconds" in metrics:
        lines.append(f"{'time':{width}s} {metrics.get('workflow_seconds', metrics['train_seconds']):.1f} s "
                     f"({metrics['feature_seconds']:.1f} s of it through the frozen layers, once; "
                     f"{metrics['train_seconds']:.1f} s to the end of training)")
    else:
        lines.append(f"{'training time':{width}s} {metrics['train_seconds']:.1f} s "
                     f"({metrics['train_images_per_second']:.0f} images/s)")
    lines.append(f"{'parameters':{width}s} {metrics['parameters']:,}")
    if "export" in metrics:
        lines.append(f"{'export (SavedModel)':{width}s} {metrics['export']}")
    if "per_class" in metrics:
        from kcnn.training.report import format_report

        lines += ["", f"per class, {metrics['eval_split']} images (metrics.json: per_class)",
                  format_report(metrics["per_class"], width)]
    return "\n".join(lines)


class Stopwatch:
    """Seconds since it started (time.perf_counter)."""

    def __init__(self):
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
