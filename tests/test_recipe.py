"""airbench94's recipe in kcnn (issue 24): the triangular schedule, lookahead against a NumPy reference of
airbench's own loop, the parameter groups (batch-norm biases 64x, the whitening bias for N epochs), Dirac
initialisation, alternating flips with 2-pixel translations, and a whole recipe run that resumes exactly."""

import keras
import numpy as np
import pytest

import kcnn
from kcnn.training import optim
from kcnn.training import train as training
from kcnn.config import TrainConfig
from helpers import killed_then_resumed

QUICK = dict(dataset="digits", image_size=32, epochs=2, batch_size=64, limit=320, verbose=0)
# every ingredient of the CIFAR-10 recipe, on digits (one channel) and the small airbench
AIRBENCH = dict(QUICK, arch="airbench_small", optimizer="sgd", learning_rate=0.1, schedule="triangle", momentum=0.85,
                weight_decay=0.0089, norm_bias_lr=64.0, lookahead=True, dirac_init=True, whiten_bias_epochs=1,
                label_smoothing=0.2, augment="airbench", epochs=2, seed=3, limit=192)


def test_triangle_rises_over_23_percent_then_falls_to_7_percent():
    schedule = optim.Triangle(2.0, 100)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.4)  # 0.2 of the peak
    assert rates[23] == pytest.approx(2.0) and max(rates) == pytest.approx(2.0)
    assert rates[11] == pytest.approx(0.4 + 1.6 * 11 / 23)
    assert rates[100] == pytest.approx(0.14)  # 0.07 of the peak
    assert rates[60] == pytest.approx(2.0 * (1 - 0.93 * 37 / 77))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert float(restored(40)) == pytest.approx(rates[40])
    until = optim.Until(schedule, 30)
    assert float(until(29)) == pytest.approx(rates[29]) and float(until(30)) == 0.0
    assert float(keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(until))(12)) \
        == pytest.approx(rates[12])


def _airbench_lookahead_reference(start, target, rate, momentum, steps, every=5):
    """airbench94's loop (legacy/airbench94.py) on the loss 0.5 * |w - target|^2: torch's SGD with Nesterov
    momentum (Keras' form: the velocity holds the rate), LookaheadState.update every `every` steps with
    decay 0.95**5 * (step / total)**3, and the final update with decay 1."""
    weights, velocity, slow = start.copy(), np.zeros_like(start), start.copy()
    for step in range(1, steps + 1):
        gradient = weights - target
        velocity = momentum * velocity - rate * gradient
        weights = weights + momentum * velocity - rate * gradient
        if step % every == 0:
            decay = 0.95 ** 5 * (step / steps) ** 3
            slow = decay * slow + (1 - decay) * weights
            weights = slow.copy()
    return slow  # LookaheadState.update(decay=1.0): the model ends on the slow weights


def test_lookahead_follows_airbench_step_for_step():
    rng = np.random.default_rng(0)
    start, target = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(3, 4)).astype("float32")
    for steps in (23, 25):  # ending between two lookahead steps, and on one
        variable = keras.Variable(start)
        optimizer = optim.add_lookahead(keras.optimizers.SGD(0.1, momentum=0.85, nesterov=True), steps)
        optimizer.build([variable])
        for _ in range(steps):
            optimizer.apply([variable - target], [variable])
        optimizer.finalize_variable_values([variable])  # what fit() does at its end
        expected = _airbench_lookahead_reference(start, target, 0.1, 0.85, steps)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), expected, rtol=1e-5, atol=1e-6)
        plain = _airbench_lookahead_reference(start, target, 0.1, 0.85, steps, every=10**9)
        assert not np.allclose(expected, plain, atol=1e-3)  # lookahead changes where the run ends


def test_groups_batch_norm_biases_at_64x_and_the_whitening_bias_for_its_epochs():
    config = TrainConfig(dataset="cifar10").resolved()
    assert (config.arch, config.batch_size, config.momentum, config.norm_bias_lr) == ("airbench", 1024, 0.85, 64)
    assert (config.lookahead, config.dirac_init, config.whiten_bias_epochs, config.tta) == (True, True, 3, "flip_crop")
    model = kcnn.build("airbench_small")
    optimizer = training._optimizer(config, steps_per_epoch=10, model=model)
    optimizer.build(model.trainable_variables)
    by_path = {variable.path: optimizer._optimizer_map(variable) for variable in model.weights}
    main = by_path["head/kernel"]
    beta = by_path["block2_bn1/beta"]
    whiten = by_path["whiten/bias"]
    assert beta is by_path["block3_bn2/beta"] and len({id(main), id(beta), id(whiten)}) == 3
    assert by_path["block1_conv1/kernel"] is main
    rate = {group: group._learning_rate for group in (main, beta, whiten)}  # the schedules
    for step in (0, 5, 29, 100):
        assert float(rate[beta](step)) == pytest.approx(64 * float(rate[main](step)))
        assert float(rate[whiten](step)) == pytest.approx(float(rate[main](step)) if step < 30 else 0)
    assert float(rate[main](0)) == pytest.approx(0.2 * 1.5)
    assert beta.weight_decay == pytest.approx(0.0089 / 64) and main.weight_decay == pytest.approx(0.0089)
    assert (main.momentum, main.nesterov, main.use_ema, main.ema_overwrite_frequency) == (0.85, True, True, 5)
    assert float(optimizer.learning_rate) == pytest.approx(64 * float(main.learning_rate))  # the fastest group's


def test_dirac_initialisation_passes_the_input_through():
    inputs = keras.Input((6, 6, 4))
    outputs = keras.layers.Conv2D(7, 3, padding="same", use_bias=False)(inputs)
    model = keras.Model(inputs, outputs)
    assert optim.dirac_init(model) == 1
    images = np.random.default_rng(1).normal(size=(2, 6, 6, 4)).astype("float32")
    result = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(result[..., :4], images, atol=1e-6)
    assert np.abs(result[..., 4:]).sum() > 0  # the other filters keep their random start


def test_airbench_augmentation_alternates_flips_and_translates_two_pixels():
    """Each image appears once per epoch, shifted by at most 2 pixels within its reflected border, and
    mirrored in exactly one of any two consecutive epochs (airbench94's alternating flip)."""
    from kcnn.data import ImageData
    from kcnn.data.pipeline import make_dataset

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype="uint8")
    data = ImageData(images=images, labels=np.arange(16), class_names=[str(i) for i in range(16)], name="noise")
    padded = np.pad(images.astype("float32"), [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    dataset = make_dataset(data, batch_size=8, training=True, num_classes=16, augment="airbench", seed=4, epochs=3)
    mirrored = {}
    shifts = set()
    for step, (batch, labels) in enumerate(dataset.as_numpy_iterator()):
        for image, label in zip(batch, labels):
            found = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                     if np.array_equal(image, (padded[label, :, ::-1] if flip else padded[label])[dy:dy + 32,
                                                                                                 dx:dx + 32])]
            assert len(found) == 1, (step, label)
            mirrored[(step // 2, int(label))] = found[0][2]
            shifts.add(found[0][:2])
    assert len(mirrored) == 3 * 16  # every image once per epoch
    for label in range(16):
        assert mirrored[(0, label)] != mirrored[(1, label)] and mirrored[(1, label)] != mirrored[(2, label)]
    assert 0 < sum(mirrored[(0, label)] for label in range(16)) < 16  # the first epoch's flips are random
    assert len(shifts) > 15  # of the 25 translations: each image its own (Keras' RandomCrop shifts a whole batch)


def test_airbench_recipe_trains_its_whitening_bias_only_and_resumes_exactly(tmp_path, monkeypatch):
    from kcnn.models.airbench import WHITEN_NAME

    class WhiteningBias(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.per_step = []

        def on_train_batch_end(self, batch, logs=None):
            layer = next(layer for layer in self.model._flatten_layers() if layer.name == WHITEN_NAME)
            self.per_step.append(np.array(keras.ops.convert_to_numpy(layer.bias)))

    recorded = WhiteningBias()
    uninterrupted = training.train(TrainConfig(**AIRBENCH, output_dir=str(tmp_path / "full")), callbacks=[recorded])
    resumed = killed_then_resumed(AIRBENCH, tmp_path / "resumed", monkeypatch)
    for a, b in zip(uninterrupted.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def whitening(model):
        return next(layer for layer in model._flatten_layers() if layer.name == WHITEN_NAME)

    config = TrainConfig(**AIRBENCH).resolved()
    data = config.load(config.train_split_name())
    untrained = training.normalized_model("airbench_small", 10, (32, 32, 1), data.images[:192])
    kernel, bias = whitening(uninterrupted.model).get_weights()
    np.testing.assert_array_equal(kernel, whitening(untrained).get_weights()[0])  # as the data set it
    assert np.abs(bias).max() > 1e-4  # it trained in its epoch (the first: steps 1-3), and stopped: step 4 leaves
    # it (its momentum included), step 5 (lookahead, as airbench's) moves it, step 6 leaves it again
    steps = recorded.per_step
    assert len(steps) == 6 and not np.array_equal(steps[1], steps[2])
    np.testing.assert_array_equal(steps[3], steps[2])
    assert not np.array_equal(steps[4], steps[3])
    np.testing.assert_array_equal(steps[5], steps[4])
    np.testing.assert_array_equal(steps[5], bias)
    assert not whitening(uninterrupted.model).trainable  # saved frozen, as built
    loaded = keras.models.load_model(tmp_path / "full" / "model.keras")  # with its optimizer's groups and schedules
    for a, b in zip(loaded.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(arch="lenet5", whiten_bias_epochs=2), "whiten_bias_epochs trains the bias of a whitening layer, "
                                                    "which lenet5 does not have"),
        (dict(momentum=1.0), "momentum must be in \\[0, 1\\)"),
        (dict(norm_bias_lr=0), "norm_bias_lr must be a number above 0"),
        (dict(whiten_bias_epochs=-1), "whiten_bias_epochs must be a whole number of epochs of at least 0"),
        (dict(augment="airbench_flip"), "augment must be one of .*airbench"),
    ],
)
def test_bad_recipe_input_writes_nothing(changes, message, tmp_path):
    with pytest.raises(kcnn.KcnnError, match=message):
        training.train(TrainConfig(**dict(dict(QUICK, arch="lenet5"), **changes), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_cli_flags_reach_the_recipe():
    """Each of the recipe's flags sets its field; the bare command keeps CIFAR-10's defaults, and "none" and
    --no-... turn a default off."""
    from kcnn.cli import _parser
    from kcnn.cli.arguments import config_from_args

    def resolved(*flags):
        return config_from_args(TrainConfig, _parser().parse_args(["train", "--dataset", "cifar10", *flags])).resolved()

    bare = resolved()
    assert (bare.schedule, bare.augment, bare.mixed_precision, bare.tta) == ("triangle", "airbench", True, "flip_crop")
    changed = resolved("--momentum", "0.9", "--norm-bias-lr", "1", "--no-lookahead", "--no-dirac-init",
                       "--whiten-bias-epochs", "0", "--tta", "none", "--no-mixed-precision", "--schedule", "onecycle",
                       "--augment", "translate_flip")
    assert (changed.momentum, changed.norm_bias_lr, changed.lookahead, changed.dirac_init) == (0.9, 1.0, False, False)
    assert (changed.whiten_bias_epochs, changed.tta, changed.mixed_precision) == (0, None, False)
    assert (changed.schedule, changed.augment) == ("onecycle", "translate_flip")
    assert TrainConfig(dataset="mnist").resolved().lookahead is False  # other datasets: as before
