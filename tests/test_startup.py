"""The way in: the quick commands import no Keras and no backend, a build on torch or JAX imports no TensorFlow,
every command keeps the backends' logging off stderr and its progress plain in a pipe, `--version` and `--backend`,
and kcnn.build's signature is the README's. (How fast: bench/startup.py, never a timed assert.)"""

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

import kcnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("keras", "tensorflow", "torch", "jax", "jaxlib", "sklearn", "matplotlib")
SUBCOMMANDS = ("list", "info", "summary", "train", "finetune", "evaluate", "predict", "explain", "export", "serve",
               "doctor")
# What the user did not set: the tests' own settings (conftest.py) are taken away, as on a fresh shell.
USER_UNSET = ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "JAX_PLATFORMS")


def fresh_env(**changes):
    env = {key: value for key, value in os.environ.items() if key not in USER_UNSET}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(changes)
    return env


def modules_after(code, **env):
    """The heavy modules loaded by `code` (Python) in a fresh process."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=fresh_env(**env),
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


QUICK = [["--help"], ["--version"], ["list"], ["list", "--pretrained"], ["info", "resnet50"]]
QUICK += [[name, "--help"] for name in SUBCOMMANDS]


@pytest.mark.parametrize("argv", QUICK, ids=" ".join)
def test_quick_commands_import_no_keras_or_backend(argv):
    code = ("import contextlib, io\nfrom kcnn.cli import main\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        code = main({argv!r})\n    except SystemExit as exit:\n        code = exit.code\n"
            "assert code in (0, None), code")
    assert modules_after(code) == []


def test_import_kcnn_and_list_import_no_backend():
    assert modules_after("import kcnn\nassert len(kcnn.list_models()) >= 48\nkcnn.get_model_info('resnet50')") == []


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_build_on_torch_or_jax_imports_no_tensorflow(backend):
    loaded = modules_after("import kcnn\nkcnn.build('resnet50')", KERAS_BACKEND=backend)
    assert "keras" in loaded and backend in loaded and "tensorflow" not in loaded


def test_version():
    result = subprocess.run([sys.executable, "-m", "kcnn", "--version"], capture_output=True, text=True,
                            env=fresh_env(), cwd=ROOT)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"kcnn {kcnn.__version__}\n", "")
    assert kcnn.__version__ == "0.1.0"


def test_backend_flag_wins_over_the_environment_before_keras_is_imported():
    code = ("import os\nfrom kcnn.cli import main\nassert main(['--backend', 'torch', 'info', 'lenet5']) == 0\n"
            "print(os.environ['KERAS_BACKEND'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=fresh_env(KERAS_BACKEND="jax"), cwd=ROOT)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "torch", result.stderr


def test_backend_flag_refuses_to_change_an_imported_keras(capsys, monkeypatch):
    import keras

    from kcnn.cli import main

    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    other = next(name for name in ("tensorflow", "torch", "jax") if name != keras.backend.backend())
    assert main(["--backend", other, "list", "lenet5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("kcnn: error: Keras is already imported with the") and error.count("\n") == 1
    assert os.environ["KERAS_BACKEND"] == keras.backend.backend()
    assert main(["--backend", keras.backend.backend(), "list", "lenet5"]) == 0  # the same one: nothing changes


def _kcnn(*args, backend=None):
    env = fresh_env(KERAS_BACKEND=backend or os.environ.get("KERAS_BACKEND", "jax"))
    return subprocess.run([sys.executable, "-m", "kcnn", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def _foreign_lines(stderr):
    """Lines of stderr that are not kcnn's own (its errors, and warnings issued from kcnn's files)."""
    own = re.compile(r"^(kcnn: |.*/kcnn/.*\.py:\d+: \w*Warning: |\s{2,})")
    return [line for line in stderr.splitlines() if line.strip() and not own.match(line)]


@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_every_command_keeps_the_backends_off_stderr_and_its_progress_plain(tmp_path, backend):
    from PIL import Image

    run = tmp_path / "run"
    image = tmp_path / "digit.png"
    Image.new("L", (32, 32), 128).save(image)
    results = {"info": _kcnn("info", "lenet5", backend=backend),
               "summary": _kcnn("summary", "lenet5", backend=backend),
               "train": _kcnn("train", "--dataset", "digits", "--arch", "lenet5", "--epochs", "1", "--limit", "128",
                              "--image-size", "32", "--output-dir", str(run), backend=backend)}
    results["predict"] = _kcnn("predict", str(run), str(image), backend=backend)
    for command, result in results.items():
        assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
        assert _foreign_lines(result.stderr) == [], f"kcnn {command} on {backend}: {result.stderr[-2000:]}"
        assert "\x1b" not in result.stdout and "\r" not in result.stdout, f"kcnn {command}: {result.stdout!r}"
    # verbose=2 into a pipe: one line per epoch, written whole
    assert re.search(r"^2/2 - .* - loss: [0-9.]+ .*val_loss: [0-9.]+$", results["train"].stdout, re.M), \
        results["train"].stdout


def test_every_subcommand_on_small_inputs_writes_nothing_foreign_to_stderr(tmp_path):
    """Each of kcnn's subcommands, on torch (the main job's backend, where TensorFlow is imported only for tf.data
    input and SavedModel export), in a fresh process with none of the user's settings: stderr holds kcnn's own lines
    only, line by line."""
    import signal

    from PIL import Image

    photos = tmp_path / "photos"
    for name, colour in (("cat", (200, 120, 40)), ("ship", (30, 60, 200))):
        (photos / name).mkdir(parents=True)
        for index in range(8):
            Image.new("RGB", (40, 36), tuple(c + 5 * index for c in colour)).save(photos / name / f"{index}.png")
    run, tuned, image = tmp_path / "run", tmp_path / "tuned", photos / "cat" / "0.png"
    commands = {
        "list": ["list", "res*"], "info": ["info", "vgg16"], "summary": ["summary", "lenet5"],
        "doctor": ["doctor", "--no-backends"],
        "train": ["train", "--dataset", "digits", "--arch", "lenet5", "--epochs", "1", "--limit", "128",
                  "--image-size", "32", "--output-dir", str(run)],
        "evaluate": ["evaluate", str(run), "--tta", "flip"],
        "predict": ["predict", str(run), str(image)],
        "explain": ["explain", str(run), str(image)],
        "export onnx": ["export", str(run), "--format", "onnx"],
        "export saved_model": ["export", str(run), "--format", "saved_model", "--output", str(tmp_path / "sm")],
        "finetune": ["finetune", "--dataset", str(photos), "--image-size", "32", "--head-epochs", "1",
                     "--finetune-epochs", "1", "--batch-size", "8", "--output-dir", str(tuned)],
    }
    for command, args in commands.items():
        result = _kcnn(*args, backend="torch")
        assert result.returncode == 0, f"kcnn {command}: {result.stderr[-2000:]}"
        assert _foreign_lines(result.stderr) == [], f"kcnn {command}: {result.stderr[-2000:]}"
        assert "\x1b" not in result.stdout and "\r" not in result.stdout, f"kcnn {command}: {result.stdout!r}"
    # serve: the conversion to ONNX and the server process, until it listens, then SIGTERM
    server = subprocess.Popen([sys.executable, "-m", "kcnn", "serve", str(tuned), "--port", "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=fresh_env(KERAS_BACKEND="torch"))
    try:
        for line in server.stdout:
            if re.search(r"kcnn serve: http://127\.0\.0\.1:\d+/", line):
                break
        server.send_signal(signal.SIGINT)
        out, stderr = server.communicate(timeout=60)
    finally:
        server.kill()
    assert _foreign_lines(stderr) == [], f"kcnn serve: {stderr[-2000:]}"


def test_build_signature_is_the_readmes():
    readme = open(os.path.join(ROOT, "README.md")).read()
    documented = re.search(r"`kcnn\.build\((.*?)\)`", readme, re.S).group(1)
    parts, star = [], False
    for parameter in inspect.signature(kcnn.build).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if parameter.kind is parameter.VAR_KEYWORD:
            parts.append(f"**{parameter.name}")
        elif parameter.default is parameter.empty:
            parts.append(parameter.name)
        else:
            parts.append(f"{parameter.name}={parameter.default!r}")
        if parameter.kind is parameter.POSITIONAL_ONLY:
            parts.append("/")
    assert " ".join(documented.split()) == ", ".join(parts)
    hints = inspect.get_annotations(kcnn.build)
    assert set(hints) >= {"model_name", "num_classes", "input_shape", "weights", "return"}
