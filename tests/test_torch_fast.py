"""kcnn.backends.torch_fast: on the torch backend, convolutions and batch norms on torch's own kernels
compute what Keras' layers compute, train the same, and save as plain Keras models.

Gradients and trained weights are compared beside a noise floor the worker measures: how far Keras'
own results move when the input moves by 5e-7 (float32 rounding). A deep network's early gradients at
initialisation move by up to a few percent that way, so a fixed tolerance would either fail on
rounding or let real mistakes (a wrong momentum, the unbiased variance) through."""

import json

import pytest

from helpers import assert_varies, worker, _tail, run_python

CASES = ("edge_cases", "cifar_resnet20", "mobilenet_v2")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_fast")
    out, log = folder / "report.json", str(folder / "worker.log")
    process = run_python([worker("torch_fast_worker"), str(out)], "torch", log)
    assert process.wait(timeout=600) == 0, _tail(log)
    return json.loads(out.read_text())


def within_floor(report, key):
    return report[key] <= max(4 * report[key + "_floor"], 1e-6)


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_keras_layers_to_float32_rounding(report, case):
    assert report[case]["inference"] <= 1e-6
    assert report[case]["predict"] <= 1e-5  # with the batch norms folded into the kernels
    # Batch statistics: Keras computes the variance as E[x^2] - E[x]^2, torch in a more accurate pass.
    assert report[case]["training_mode"] <= 1e-4
    # Varied weights and batch-norm statistics (the folding of real statistics): within float32's rounding
    assert_varies(report[case]["varied_outputs"], what=case)
    for key in ("inference_varied", "predict_varied"):
        assert within_floor(report[case], key), \
            f"{case}: {key} differs by {report[case][key]:.2e}, floor {report[case][key + '_floor']:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_gradients_and_fit_match_keras_layers(report, case):
    result = report[case]
    for key in ("gradients", "trainable", "statistics"):  # statistics: moving means and variances after fit()
        assert within_floor(result, key), f"{case}: {key} differ by {result[key]:.2e}, floor {result[key + '_floor']:.2e}"
    assert result["trainable_moved"] > 1e-3  # fit() did train
    if case != "mobilenet_v2":  # MobileNetV2's two steps move with the rounding by 2% (its floor above)
        plain_loss, fast_loss = result["loss"]
        assert fast_loss == pytest.approx(plain_loss, rel=1e-4)


@pytest.mark.parametrize("case", ["airbench_small_bfloat16", "edge_cases_bfloat16"])
def test_mixed_bfloat16_runs_on_torch_kernels_within_bfloat16_rounding(report, case):
    """Issue 24: the mixed_bfloat16 policy on the torch kernels (convolutions in bfloat16, batch norms
    computed in float32 as Keras does), every layer of the model on them, results within the rounding."""
    result = report[case]
    left_to_keras = ["depth_multiplier_2"] if case.startswith("edge_cases") else []  # as in float32
    assert result["keras_call_layers"] == left_to_keras and result["torch_kernel_layers"] > 0
    assert result["output_dtype"] == "bfloat16"  # computed in bfloat16, as Keras' layers under the policy
    for key in ("inference", "training_mode", "predict", "gradients"):
        assert within_floor(result, key), f"{case}: {key} differ by {result[key]:.2e}, floor {result[key + '_floor']:.2e}"


def test_only_the_cases_left_to_keras_take_its_code(report):
    assert report["edge_cases"]["keras_call_layers"] == ["depth_multiplier_2"]
    assert report["edge_cases"]["torch_kernel_layers"] == 12  # 6 convolutions, 3 batch norms, 3 poolings
    assert report["cifar_resnet20"]["keras_call_layers"] == []
    assert report["mobilenet_v2"]["keras_call_layers"] == []
    assert report["mobilenet_v2"]["torch_kernel_layers"] >= 100  # 52 convolutions, 52 batch norms
    assert report["mobilenet_v2"]["folded"] == 52  # every batch norm follows a convolution
    assert report["mobilenet_v2"]["folded_in_predict"] == 52  # ...and predict() used the folded kernels
    # grouped_dilated -> bn_no_gamma and channels_first -> bn_channels_first; odd_padding has a ReLU between
    assert report["edge_cases"]["folded"] == 2
    assert report["one_value"] == {"took_keras_call": True, "finite": True}


@pytest.mark.parametrize("case", CASES)
def test_saved_model_is_plain_keras(report, case):
    assert report[case]["loaded_accelerated_layers"] == 0
    assert report[case]["loaded_vs_fast"] <= 1e-6


def test_a_model_cut_after_a_convolution_does_not_fold_the_batch_norm_it_lacks(report):
    assert report["cut_after_folded_convolution"] <= 1e-5


def test_kcnn_build_gives_torch_kernels_without_being_asked(report):
    assert report["build_accelerates"] == 4  # lenet5: two convolutions, two poolings
