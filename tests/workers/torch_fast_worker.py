"""On the torch backend, models whose layers run kcnn.backends.torch_fast's kernels against the same
models running Keras' own code: outputs, a few fit() steps, and what model.save() writes.

    python tests/workers/torch_fast_worker.py OUT.json

Writes one JSON report; tests/test_torch_fast.py reads it. Runs in its own process because
Keras fixes its backend once per process (the in-process tests run on JAX).
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kcnn  # noqa: E402
from kcnn.backends import torch_fast  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: helpers
from helpers import deterministic_weights  # noqa: E402

layers = keras.layers


def edge_cases():
    """Every option the torch kernels handle (pooling included), and one they leave to Keras (depth_multiplier=2)."""
    inputs = keras.Input((9, 10, 6))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="odd_padding")(inputs)  # 9x10 -> 5x5
    x = layers.BatchNormalization(center=False, name="bn_no_beta")(x)
    x = layers.Conv2D(8, 3, dilation_rate=2, padding="same", groups=2, use_bias=False, name="grouped_dilated")(x)
    x = layers.BatchNormalization(scale=False, momentum=0.9, epsilon=1e-5, name="bn_no_gamma")(x)
    x = layers.MaxPooling2D(3, strides=1, padding="same", name="max_same")(x)  # padding inside the op
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6", name="depthwise_strided")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depth_multiplier_2")(x)  # Keras' code
    x = layers.AveragePooling2D(2, strides=1, padding="same", name="avg_same_odd")(x)  # one pixel after: F.pad
    x = layers.Conv2D(6, 2, padding="valid", name="valid")(x)
    y = layers.Permute((3, 1, 2))(x)
    y = layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="channels_first")(y)
    y = layers.BatchNormalization(axis=1, name="bn_channels_first")(y)
    y = layers.AveragePooling2D(2, data_format="channels_first", name="avg_channels_first")(y)
    y = layers.GlobalAveragePooling2D(data_format="channels_first")(y)
    outputs = layers.Dense(3)(y)
    return keras.Model(inputs, outputs, name="edge_cases")


def plain_and_fast(build, varied=False):
    """The model built with Keras' code (KCNN_TORCH_FAST=0), and a copy with the same weights accelerated."""
    os.environ[torch_fast.ENV_SWITCH] = "0"
    plain = build()
    if varied:  # batch norms with real statistics, gammas and betas (Keras' initial ones are the identity)
        deterministic_weights(plain)
    os.environ[torch_fast.ENV_SWITCH] = "1"
    fast = keras.models.clone_model(plain)
    fast.set_weights(plain.get_weights())
    config_before = json.dumps(fast.get_config(), sort_keys=True)
    torch_fast.accelerate(fast)
    assert json.dumps(fast.get_config(), sort_keys=True) == config_before
    assert not any(torch_fast.is_accelerated(layer) for layer in torch_fast.layers_of(plain))
    return plain, fast


def numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def relative(a, b):
    """|a - b| / |b| over all the arrays together."""
    a, b = np.concatenate([np.ravel(v) for v in a]), np.concatenate([np.ravel(v) for v in b])
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def gradients(model, images, labels):
    import torch

    for variable in model.trainable_variables:
        variable.value.grad = None
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        torch.as_tensor(labels), model(torch.as_tensor(images), training=True))
    loss.backward()
    return [variable.value.grad.numpy().copy() for variable in model.trainable_variables]


def fitted(model, images, labels, batch):
    """The weights after two SGD steps, trainable and moving statistics apart."""
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.fit(images, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    statistics = [numpy(v) for v in model.non_trainable_weights if v.path.endswith(("moving_mean", "moving_variance"))]
    return loss, [numpy(v) for v in model.trainable_weights], statistics


def compare(build, input_shape, batch):
    """Differences between the accelerated model and Keras' layers, beside the "noise floor": how much
    Keras' own results move when the input moves by 5e-7 (relative), float32's rounding. Early gradients
    of a deep network at initialisation are that sensitive (a pre-activation near 0 changes side)."""
    plain, fast = plain_and_fast(build)
    initial = plain.get_weights()  # training-mode calls below move the statistics: fit() starts from these
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2 * batch,) + input_shape).astype("float32")
    nudged = images * (1 + 5e-7 * rng.standard_normal(images.shape)).astype("float32")
    labels = rng.integers(0, plain.output_shape[-1], 2 * batch)
    first = images[:batch]
    expected = numpy(plain(first, training=False))
    report = {"inference": relative([numpy(fast(first, training=False))], [expected]),
              # predict() runs without gradients: batch norms folded into the convolutions before them
              "predict": relative([fast.predict(first, verbose=0)], [expected]),
              "folded": len(list(torch_fast.foldable_pairs(fast))),
              "folded_in_predict": sum("_kcnn_folded" in vars(layer) for layer in torch_fast.layers_of(fast)),
              "training_mode": relative([numpy(fast(first, training=True))], [numpy(plain(first, training=True))])}
    # Inference and predict() (batch norms folded into the kernels) with varied weights and batch-norm
    # statistics, beside the floor of float32 rounding: Keras' own outputs when the input moves by 5e-7
    varied_plain, varied_fast = plain_and_fast(build, varied=True)
    varied_expected = numpy(varied_plain(first, training=False))
    report["varied_outputs"] = varied_expected.tolist()
    report["inference_varied"] = relative([numpy(varied_fast(first, training=False))], [varied_expected])
    report["predict_varied"] = relative([varied_fast.predict(first, verbose=0)], [varied_expected])
    report["inference_varied_floor"] = report["predict_varied_floor"] = relative(
        [numpy(varied_plain(nudged[:batch], training=False))], [varied_expected])
    reference = gradients(plain, first, labels[:batch])
    report["gradients"] = relative(gradients(fast, first, labels[:batch]), reference)
    report["gradients_floor"] = relative(gradients(plain, nudged[:batch], labels[:batch]), reference)

    nudged_model = keras.models.clone_model(plain)
    for model in (plain, fast, nudged_model):
        model.set_weights(initial)
    results = {key: fitted(model, data, labels, batch)
               for key, model, data in (("plain", plain, images), ("fast", fast, images),
                                        ("nudged", nudged_model, nudged))}
    report["loss"] = [results["plain"][0], results["fast"][0]]
    for index, part in ((1, "trainable"), (2, "statistics")):
        report[part] = relative(results["fast"][index], results["plain"][index])
        report[part + "_floor"] = relative(results["nudged"][index], results["plain"][index])
    report["trainable_moved"] = relative(results["plain"][1], [w for w, v in zip(initial, plain.weights) if v.trainable])
    report["torch_kernel_layers"] = sum(torch_fast.is_accelerated(layer) for layer in torch_fast.layers_of(fast))
    report["keras_call_layers"] = sorted(layer.name for layer in torch_fast.layers_of(fast)
                                         if torch_fast.took_keras_call(layer))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        fast.save(path)
        loaded = keras.saving.load_model(path, compile=False)
        report["loaded_accelerated_layers"] = sum(torch_fast.is_accelerated(layer)
                                                  for layer in torch_fast.layers_of(loaded))
        report["loaded_vs_fast"] = relative([numpy(loaded(first, training=False))],
                                            [numpy(fast(first, training=False))])
    return report


def cut_after_a_folded_convolution():
    """A model cut between a convolution and its batch norm (as fine-tuning cuts backbones): the first
    part's predict() must not fold the batch norm it does not contain."""
    os.environ[torch_fast.ENV_SWITCH] = "1"
    full = torch_fast.accelerate(edge_cases())
    images = np.random.default_rng(3).uniform(0, 1, (2, 9, 10, 6)).astype("float32")
    cut = full.get_layer("grouped_dilated")
    bottom = torch_fast.accelerate(keras.Model(full.inputs, cut.output))
    expected = keras.Model(full.inputs, full.get_layer("bn_no_gamma").output).predict(images, verbose=0)
    return relative([numpy(full.get_layer("bn_no_gamma")(bottom.predict(images, verbose=0), training=False))],
                    [expected])


def one_value_batch_norm():
    """Batch statistics over one value (batch 1, 1x1 maps): torch refuses them, Keras' code runs."""
    layer = layers.BatchNormalization()
    torch_fast.accelerate(keras.Sequential([keras.Input((1, 1, 3)), layer]))
    outputs = numpy(layer(np.ones((1, 1, 1, 3), "float32"), training=True))
    return {"took_keras_call": torch_fast.took_keras_call(layer), "finite": bool(np.all(np.isfinite(outputs)))}


def compare_bfloat16(build, input_shape, batch):
    """Under the mixed_bfloat16 policy: the accelerated model against Keras' layers, beside the floor of
    bfloat16 rounding (Keras' own results when the input moves by 2^-9 relative, half a bfloat16 step)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        plain, fast = plain_and_fast(build, varied=True)
        rng = np.random.default_rng(1)
        images = rng.uniform(0, 1, (batch,) + input_shape).astype("float32")
        nudged = images * (1 + 2.0 ** -9 * rng.standard_normal(images.shape)).astype("float32")
        labels = rng.integers(0, plain.output_shape[-1], batch)
        report = {"predict": relative([fast.predict(images, verbose=0).astype("float32")],
                                      [plain.predict(images, verbose=0).astype("float32")])}
        # training mode last: each call moves the moving statistics (the floor's call moves plain's again)
        for training in (False, True):
            key = "training_mode" if training else "inference"
            expected = numpy(plain(images, training=training)).astype("float32")
            report[key] = relative([numpy(fast(images, training=training)).astype("float32")], [expected])
            report[key + "_floor"] = relative([numpy(plain(nudged, training=training)).astype("float32")], [expected])
        report["predict_floor"] = report["inference_floor"]
        reference = gradients(plain, images, labels)
        report["gradients"] = relative(gradients(fast, images, labels), reference)
        report["gradients_floor"] = relative(gradients(plain, nudged, labels), reference)
        report["output_dtype"] = str(numpy(fast(images, training=False)).dtype)
        report["keras_call_layers"] = sorted(layer.name for layer in torch_fast.layers_of(fast)
                                             if torch_fast.took_keras_call(layer))
        report["torch_kernel_layers"] = sum(torch_fast.is_accelerated(layer) for layer in torch_fast.layers_of(fast))
        return report
    finally:
        keras.mixed_precision.set_global_policy("float32")


def main(out_path):
    keras.utils.set_random_seed(0)
    cases = {
        "edge_cases": (edge_cases, (9, 10, 6), 2),
        "cifar_resnet20": (lambda: kcnn.build("cifar_resnet20", num_classes=10), (32, 32, 3), 8),
        "mobilenet_v2": (lambda: kcnn.build("mobilenet_v2", num_classes=5, input_shape=(64, 64, 3)), (64, 64, 3), 4),
    }
    results = {}
    for name, (build, input_shape, batch) in cases.items():
        keras.utils.set_random_seed(0)
        results[name] = compare(build, input_shape, batch)
        print(name, json.dumps(results[name]), flush=True)
    for name, (build, input_shape, batch) in {
            "airbench_small": (lambda: kcnn.build("airbench_small"), (32, 32, 3), 8),
            "edge_cases": (edge_cases, (9, 10, 6), 2),  # depthwise, grouped, dilated, channels_first
    }.items():
        keras.utils.set_random_seed(0)
        results[name + "_bfloat16"] = compare_bfloat16(build, input_shape, batch)
        print(name, "bfloat16", json.dumps(results[name + "_bfloat16"]), flush=True)
    results["one_value"] = one_value_batch_norm()
    results["cut_after_folded_convolution"] = cut_after_a_folded_convolution()
    # kcnn.build and kcnn's loading give torch kernels without being asked
    results["build_accelerates"] = sum(torch_fast.is_accelerated(layer) for layer in
                                       torch_fast.layers_of(kcnn.build("lenet5")))
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
