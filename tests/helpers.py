"""What several test files share: the backends, where the worker scripts are, starting a worker process,
the `kcnn` command line, and small real-data fixtures' makers. (Fixtures themselves are in conftest.py.)"""

import os
import subprocess
import sys

BACKENDS = ("tensorflow", "torch", "jax")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
WORKERS_DIR = os.path.join(TESTS_DIR, "workers")  # scripts the tests run in processes of their own
if WORKERS_DIR not in sys.path:
    sys.path.insert(0, WORKERS_DIR)  # test_zoo and test_weights import a worker's constants and helpers

# What every finished run directory holds (both workflows).
RUN_FILES = ("config.json", "model.keras", "history.csv", "metrics.json", "curves.png", "confusion.png",
             "samples.png", "explain.png")


def worker(name):
    """The path of tests/workers/NAME.py."""
    return os.path.join(WORKERS_DIR, f"{name}.py")


def run_python(args, backend, log_path):
    """Start `python args...` on `backend`, its output going to `log_path`
    (a file, not a pipe nobody reads while it runs)."""
    env = dict(os.environ, KERAS_BACKEND=backend)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)


def _tail(path, size=3000):
    with open(path, errors="replace") as f:
        return f.read()[-size:]


def kcnn_cli(backend, *args):
    env = dict(os.environ, KERAS_BACKEND=backend)
    return subprocess.run([sys.executable, "-m", "kcnn", *args], capture_output=True, text=True, env=env)


def image_folder_of_the_sample(root, per_class=12):
    """An image folder (cat/, ship/) of real CIFAR-10 sample images, as PNG files."""
    from PIL import Image

    import kcnn.data

    sample = kcnn.data.load("cifar10_sample", "train")
    for class_name in ("cat", "ship"):
        (root / class_name).mkdir(parents=True)
        label = kcnn.data.sources.CIFAR10_CLASSES.index(class_name)
        for i, image in enumerate(sample.images[sample.labels == label][:per_class]):
            Image.fromarray(image).save(root / class_name / f"{i}.png")
    return root


def _depthwise_kernel_paths(model):
    """Paths of the depthwise kernels in `model` and in the models nested in it: their fan-in is the window
    alone. (Keras names a DepthwiseConv2D's kernel plain `kernel`, so the path does not say so.)"""
    import keras

    from kcnn.backends.torch_fast import layers_of  # the model's layers, nested models included

    return ({layer.kernel.path for layer in layers_of(model) if isinstance(layer, keras.layers.DepthwiseConv2D)}
            | {layer.depthwise_kernel.path for layer in layers_of(model)
               if isinstance(layer, keras.layers.SeparableConv2D)})


def deterministic_weights(model):
    """The same varied weights on every backend, from NumPy: He-normal kernels (the fan-in of a depthwise
    kernel is its window), biases, betas and moving means around 0 and moving variances and gammas around 1,
    so that deep networks keep their activations in range and every term of batch norm is exercised."""
    import numpy as np

    depthwise = _depthwise_kernel_paths(model)
    values = []
    for index, variable in enumerate(model.weights):
        rng = np.random.default_rng(1000 + index)
        shape = tuple(variable.shape)
        path = variable.path
        # (drawn in float32: VGG's 138 million weights in 0.6 s rather than 1.6 s, on each backend's run)
        if path.endswith("moving_variance"):
            value = 0.5 + rng.random(shape, dtype=np.float32)
        elif path.endswith("gamma"):
            value = 0.8 + 0.4 * rng.random(shape, dtype=np.float32)
        elif len(shape) <= 1:  # biases, betas, moving means
            value = 0.05 * rng.standard_normal(shape, dtype=np.float32)
        else:
            if path in depthwise or "depthwise" in path or "pos_conv" in path:
                fan_in = shape[0] * shape[1]
            elif any(part in path for part in ("query", "key", "value")) and len(shape) == 3:
                fan_in = shape[0]
            else:
                fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, dtype=np.float32)
            value *= np.float32(np.sqrt(2.0 / fan_in))
        values.append(value)
    model.set_weights(values)


def temper_logits(model, images, spread=2.0):
    """Scale the last weighted layer so that `model`'s logits on `images` have a standard deviation of
    `spread`: probabilities that do not saturate to one-hot (deep He-initialised networks give logits in
    the hundreds). Exact for the usual heads: the logits are positively homogeneous in that layer's weights."""
    import keras
    import numpy as np

    # JAX: one compiled program (an eager call runs op by op, 4x slower on DenseNet); elsewhere eager is cheaper
    outputs = model.predict_on_batch(images) if keras.backend.backend() == "jax" else model(images, training=False)
    logits = keras.ops.convert_to_numpy(outputs).astype("float64")
    factor = spread / max(float(np.std(logits)), 1e-12)
    last = [layer for layer in model.layers if layer.weights][-1]
    last.set_weights([w * np.asarray(factor, w.dtype) for w in last.get_weights()])


def assert_varies(reference, floor=1e-3, what="outputs"):
    """`reference` is worth comparing: finite, and varying across the batch (first axis) and across the last
    axis by more than `floor` of its largest value. A model whose outputs collapse to a constant (Keras'
    default initialisation does that to several networks: probabilities 0.001 +- 1e-10) would pass any
    absolute tolerance while its export returned a constant. Give models varied weights first
    (`deterministic_weights`)."""
    import numpy as np

    reference = np.asarray(reference, "float64")
    assert np.all(np.isfinite(reference)), f"{what}: the reference is not finite"
    scale = np.abs(reference).max()
    across_batch = np.abs(reference - reference[:1]).max() if len(reference) > 1 else scale
    across_last = np.abs(reference - reference[..., :1]).max()
    assert min(across_batch, across_last) > floor * scale > 0, (
        f"{what}: the reference hardly varies (across the batch {across_batch:.2e}, across the last axis "
        f"{across_last:.2e}, largest {scale:.2e}): the comparison would pass a constant")


def assert_close(actual, reference, rtol=1e-4, floor=1e-3, what="outputs"):
    """`actual` equals `reference` within `rtol` of the reference's norm, and the reference varies
    (`assert_varies`), so that the comparison could fail."""
    import numpy as np

    actual, reference = np.asarray(actual, "float64"), np.asarray(reference, "float64")
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape}, expected {reference.shape}"
    assert_varies(reference, floor, what)
    relative = np.linalg.norm(actual - reference) / np.linalg.norm(reference)
    assert relative <= rtol, f"{what}: differ by {relative:.2e} of the reference's norm (allowed {rtol:.0e})"


def killed_then_resumed(config, output_dir, monkeypatch, crash_epoch=1):
    """`kcnn.training.train.train(config)` into `output_dir`, killed as epoch `crash_epoch` begins (it must write no
    model.keras), then resumed there: the resumed Run."""
    import keras
    import pytest

    from kcnn.config import TrainConfig
    from kcnn.training import train as training

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == crash_epoch:
                raise RuntimeError("simulated crash")

    original = training._callbacks
    monkeypatch.setattr(training, "_callbacks", lambda *args: original(*args) + [Crash()])
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train(TrainConfig(**config, output_dir=str(output_dir)))
    monkeypatch.setattr(training, "_callbacks", original)
    assert not (output_dir / "model.keras").exists()
    return training.train(TrainConfig(**config, output_dir=str(output_dir), resume=True))
