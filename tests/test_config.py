"""The configs, the recipes declared beside the models, and the command line generated from both.

- Every registered architecture trains with the recipe its own model file declares for a dataset, or the
  dataset's plain one: never another family's (a test over the registry, as timm's tests parametrize over it).
- `kcnn train` / `kcnn finetune` take every config field as a flag, show its default, and `--config FILE`
  (YAML, or a run's own config.json) sets every default: a run repeated from its config.json has the same weights.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

import kcnn
from kcnn.cli import _parser, main
from kcnn.config import FinetuneConfig, TrainConfig, read_config_file
from kcnn.errors import InvalidArgumentError
from kcnn.recipes import DATASETS, PLAIN, recipe_for, recipe_names

ARCHS = [info.name for info in kcnn.list_models()]


@pytest.mark.parametrize("dataset", DATASETS)
def test_no_architecture_gets_another_familys_recipe(dataset):
    """The recipe of each architecture on `dataset`, as TrainConfig resolves it: its own family's or plain."""
    for name in ARCHS:
        info = kcnn.get_model_info(name)
        own = (info.recipes or {}).get(dataset)
        recipe = recipe_for(info, dataset)
        assert recipe is (own or PLAIN[dataset]), f"{name} on {dataset} gets {recipe.name}"
        if dataset != "folder":  # a folder must exist to resolve
            config = TrainConfig(dataset=dataset, arch=name).resolved()
            assert config.recipe == recipe.name
            assert {k: getattr(config, k) for k in recipe.settings()} == recipe.settings()


def test_lenet5_on_cifar10_gets_the_plain_recipe_and_airbench_its_own():
    lenet = TrainConfig(dataset="cifar10", arch="lenet5").resolved()
    assert (lenet.recipe, lenet.optimizer, lenet.lookahead, lenet.dirac_init, lenet.whiten_bias_epochs,
            lenet.norm_bias_lr) == ("plain", "adamw", False, False, 0, 1.0)
    airbench = TrainConfig(dataset="cifar10").resolved()  # the dataset's default architecture
    assert (airbench.arch, airbench.recipe, airbench.lookahead, airbench.learning_rate) == \
        ("airbench", "airbench94", True, 1.5)
    assert "airbench94" in recipe_names("cifar10") and recipe_names("mnist") == ("plain",)


def test_a_recipe_by_name_and_single_values_over_it():
    chosen = TrainConfig(dataset="cifar10", arch="cifar_resnet20", recipe="airbench94", epochs=3).resolved()
    assert (chosen.recipe, chosen.optimizer, chosen.momentum, chosen.epochs) == ("airbench94", "sgd", 0.85, 3)
    plain = TrainConfig(dataset="cifar10", arch="airbench", recipe="plain").resolved()
    assert (plain.optimizer, plain.lookahead) == ("adamw", False)
    with pytest.raises(InvalidArgumentError, match=r"Unknown recipe 'fast' for cifar10; the recipes for cifar10 "
                                                   r"are plain, airbench94"):
        TrainConfig(dataset="cifar10", recipe="fast").resolved()


def test_kcnn_info_prints_the_recipe_per_dataset(capsys):
    assert main(["info", "airbench"]) == 0
    out = capsys.readouterr().out
    assert "cifar10            airbench94: sgd lr 1.5 (triangle), batch 1024" in out
    assert "mnist              plain: adamw" in out


def _help(command):
    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    return subparsers.choices[command].format_help()


@pytest.mark.parametrize("command, kind", [("train", TrainConfig), ("finetune", FinetuneConfig)])
def test_every_config_field_is_a_flag_with_its_default_in_help(command, kind):
    text = " ".join(_help(command).split())
    for field in dataclasses.fields(kind):
        if field.metadata.get("cli") is not False:
            flag = (field.metadata.get("flags") or ("--" + field.name.replace("_", "-"),))[0]
            assert flag in text, flag
    if kind is TrainConfig:
        assert "--epochs EPOCHS passes over the training images (default: the recipe's)" in text
        assert "(default: 0.2)" in text and "--lr" in text
    else:
        assert "--head-epochs HEAD_EPOCHS phase 1: the new head on the frozen backbone (default: 15)" in text
        assert "--flip, --no-flip" in text and "--unfreeze UNFREEZE" in text


def _args(argv):
    return _parser().parse_args(argv)


def test_config_file_sets_defaults_and_flags_override_it(tmp_path):
    from kcnn.cli.arguments import config_from_args

    (tmp_path / "lab.yaml").write_text("arch: lenet5\ndataset: cifar10\nepochs: 4\nlearning_rate: 0.01\n")
    config = config_from_args(TrainConfig, _args(["train", "--config", str(tmp_path / "lab.yaml"), "--epochs", "2"]))
    assert (config.arch, config.dataset, config.epochs, config.learning_rate) == ("lenet5", "cifar10", 2, 0.01)
    config = config_from_args(FinetuneConfig, _args(["finetune", "--unfreeze", "all", "--no-flip"]))
    assert (config.unfreeze, config.flip, config.head_epochs) == ("all", False, 15)


@pytest.mark.parametrize("text, message", [
    ("epochs: 3\nepoch: 4\n", r"settings TrainConfig does not know \(epoch\)"),
    ("[1, 2]\n", r"holds no settings"),
    ("epochs: [\n", r"not valid YAML or JSON"),
])
def test_a_bad_config_file_is_one_sentence(tmp_path, capsys, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message):
        read_config_file(str(path), TrainConfig)
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert not (tmp_path / "run").exists()


def test_a_finetune_config_json_is_refused_by_train(tmp_path):
    record = dict(dataclasses.asdict(FinetuneConfig()), kcnn={"run_id": "x", "kind": "finetune"})
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(InvalidArgumentError, match="config of a `kcnn finetune` run; pass it to `kcnn finetune"):
        read_config_file(str(tmp_path / "config.json"), TrainConfig)


def _weights(run_dir):
    from kcnn.runs.rundir import load_run

    model = load_run(str(run_dir)).model
    return model.get_weights()


@pytest.mark.parametrize("command, flags", [
    ("train", ["--dataset", "digits", "--arch", "lenet5", "--image-size", "32", "--epochs", "1", "--limit", "128",
               "--batch-size", "64", "--seed", "3", "--learning-rate", "0.004"]),
    ("finetune", ["--image-size", "32", "--head-epochs", "1", "--finetune-epochs", "1", "--unfreeze", "1",
                  "--batch-size", "32", "--limit", "96", "--no-export", "--tta", "none", "--seed", "2"]),
])
def test_a_run_is_repeated_from_its_config_json(tmp_path, command, flags):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main([command, *flags, "--output-dir", str(first)]) == 0
    assert main([command, "--config", str(first / "config.json"), "--output-dir", str(again)]) == 0
    recorded = {k: v for k, v in json.loads((first / "config.json").read_text()).items()
                if k not in ("kcnn", "output_dir")}
    repeated = {k: v for k, v in json.loads((again / "config.json").read_text()).items()
                if k not in ("kcnn", "output_dir")}
    assert repeated == recorded
    for a, b in zip(_weights(first), _weights(again), strict=True):
        np.testing.assert_array_equal(a, b)
    if command == "train":  # evaluate and export take the run object load_run gives
        from kcnn.deploy.export import export
        from kcnn.runs.rundir import load_run
        from kcnn.training.evaluate import evaluate_run

        finished = load_run(str(first))
        assert evaluate_run(finished)["accuracy"] == finished.metrics["accuracy"]
        written = export(finished, "keras", output=str(tmp_path / "exported"), verbose=False)
        assert os.path.isfile(written) and finished.class_names == tuple("0123456789")
