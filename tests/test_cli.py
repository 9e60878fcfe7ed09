"""The `kcnn` command line: output, and exit code 2 without a traceback on bad input."""

import os
import subprocess
import sys

import pytest


def run_cli(*args):
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
    return subprocess.run([sys.executable, "-m", "kcnn", *args], capture_output=True, text=True, env=env)


def test_list_with_wildcard():
    result = run_cli("list", "vgg1?")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "input", "parameters"]
    assert [line.split()[0] for line in lines[1:]] == ["vgg11", "vgg13", "vgg16", "vgg19"]
    assert "138,357,544" in result.stdout


def test_info_and_summary():
    info = run_cli("info", "lenet5")
    assert info.returncode == 0 and "61,706" in info.stdout
    summary = run_cli("summary", "lenet5", "--input-shape", "28,28,1")
    assert summary.returncode == 0, summary.stderr
    assert "Total params: 61,706" in summary.stdout and "Total MACs:" in summary.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("info", "resnt50"), "Unknown model 'resnt50'. Did you mean: resnet50"),
        (("summary", "lenet5", "--input-shape", "28,28"), "input_shape must be three positive whole numbers"),
        (("summary", "alexnet", "--input-shape", "32,32,3"), "alexnet needs inputs of at least 67x67"),
        (("summary", "lenet5", "--input-shape", "a,b,c"), "expected H,W,C"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_list_pretrained_shows_only_models_with_weights():
    result = run_cli("list", "--pretrained")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert "efficientnet_lite0" in names and "resnet50" in names and "lenet5" not in names
