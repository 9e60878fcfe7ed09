"""kcnn.inspect.summary: per-layer parameters and MACs, totals, memory."""

import pytest

import kcnn


def test_lenet5_table_matches_hand_count():
    result = kcnn.summary("lenet5", print_fn=None)
    macs = {row.name: row.macs for row in result.rows}
    assert macs["conv1"] == 28 * 28 * 6 * 5 * 5 * 1
    assert macs["conv2"] == 10 * 10 * 16 * 5 * 5 * 6
    assert (macs["fc1"], macs["fc2"], macs["predictions"]) == (400 * 120, 120 * 84, 84 * 10)
    assert result.total_macs == 416_520
    assert result.total_params == result.trainable_params == 61_706
    assert result.non_trainable_params == 0
    assert result.params_bytes == 61_706 * 4
    # forward activations: every layer's output, float32
    outputs = {row.name: row.output_shape for row in result.rows}
    assert outputs["conv1"] == "(None, 28, 28, 6)"
    text = str(result)
    for label in ("Layer (type)", "Output Shape", "Param #", "MACs", "Total params: 61,706",
                  "Total MACs: 416,520", "Params size (MB)", "Forward activations per image (MB)"):
        assert label in text


def test_mlp_counts_without_allocating():
    result = kcnn.summary("mlp", print_fn=None)
    assert result.total_params == 1_515_392_110
    assert round(result.params_bytes / 1024**3, 3) == 5.645  # GiB of float32, as the notes say


@pytest.mark.parametrize(
    "name, reference_gmacs, tolerance",
    [
        # torchvision's published "GFLOPS" (multiply-accumulates) at 224x224
        ("resnet18", 1.814, 0.01), ("mobilenet_v2", 0.301, 0.01), ("vgg16", 15.470, 0.01),
        ("densenet121", 2.834, 0.01), ("squeezenet1_0", 0.819, 0.01), ("squeezenet1_1", 0.349, 0.01),
        ("googlenet", 1.498, 0.01),
        # the papers, to their two significant digits: He et al. 2015 Table 1
        # (the Keras layout strides the 1x1 conv as the paper did, unlike
        # torchvision's 4.09), Howard et al. 2017 Table 8 (569 million)
        ("resnet50", 3.8, 0.02), ("resnet152", 11.3, 0.02), ("mobilenet", 0.569, 0.01),
    ],
)
def test_macs_match_published_counts(name, reference_gmacs, tolerance):
    result = kcnn.summary(name, print_fn=None)
    assert result.total_macs / 1e9 == pytest.approx(reference_gmacs, rel=tolerance)


def test_non_trainable_batch_norm_statistics_are_reported():
    result = kcnn.summary("resnet18", print_fn=None)
    assert result.trainable_params == 11_689_512
    assert result.non_trainable_params == 9_600  # moving mean and variance of 4,800 BN channels


def test_attention_macs_are_counted():
    result = kcnn.summary("convvit_cifar", print_fn=None)
    attention = [row for row in result.rows if row.type == "MultiHeadAttention"]
    tokens, width = 64, 192
    # four projections plus the two attention products
    assert attention[0].macs == 4 * tokens * width * width + 2 * tokens * tokens * width


def test_summary_of_a_built_model_and_printing(capsys):
    model = kcnn.build("cifar_resnet20")
    result = kcnn.summary(model)
    assert "Total params: 271,098" in capsys.readouterr().out
    assert repr(result).startswith("ModelSummary(cifar_resnet20: 271,098 params")
