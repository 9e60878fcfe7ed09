"""A run folder's files are kcnn's only where its manifest says so (kcnn.runs.rundir): overwrite, resume and
export touch no file the user put in or beside a run, never go through a symbolic link, and a config.json
copied out of a run makes no folder a run. Each case snapshots every file and link (bytes; a link's target
string) inside and outside the run before the call and compares after.

Two runs are trained once per module (a finished one and one killed after its first epoch) and copied per
case with their links kept (`shutil.copytree(symlinks=True)`)."""

import json
import os
import shutil

import keras
import pytest

import kcnn.deploy.export
from kcnn.errors import KcnnError
from kcnn.deploy.export import ExportError
from kcnn.runs.rundir import LOCK_NAME, MANIFEST, NotARunError, RunDir, load_run
from kcnn.training.train import TrainConfig, train

QUICK = dict(dataset="digits", arch="lenet5", image_size=32, limit=128, batch_size=64, verbose=0)


class Killed(keras.callbacks.Callback):
    """Ends the process's training after epoch 0's files are written, as a kill would (backup/ stays)."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    finished = root / "finished"
    train(TrainConfig(**QUICK, epochs=1, output_dir=str(finished)))
    kcnn.deploy.export.export(str(finished), "keras", verbose=False)  # export/model.keras: no TensorFlow process
    killed = root / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**QUICK, epochs=2, output_dir=str(killed)), callbacks=[Killed()])
    assert (killed / "backup" / "training_metadata.json").exists() and not (killed / "metrics.json").exists()
    return {"finished": finished, "killed": killed}


def copy_of(trained, name, tmp_path):
    """The trained run `name` copied to tmp_path/run (as `cp -r`: the copy is bound by its manifest)."""
    run = tmp_path / "run"
    shutil.copytree(trained[name], run, symlinks=True)
    return run


def written_here(run):
    """Bind the copy `run` to its folder, as if it had been written there."""
    record = json.loads((run / "config.json").read_text())
    record["kcnn"]["folder"] = os.path.realpath(run)
    (run / "config.json").write_text(json.dumps(record))


def config(run, **changes):
    return TrainConfig(**{**QUICK, "epochs": 1, "output_dir": str(run), **changes})


def snapshot(root):
    """{path: ("file", bytes) or ("link", target string)} of everything below `root`, no link followed."""
    state = {}
    for folder, folders, names in os.walk(root):
        for name in names + folders:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    state[path] = ("file", f.read())
    return state


def kcnn_paths(run):
    """The paths kcnn wrote in `run` (its manifest, its marker files and their temporaries)."""
    paths = {os.path.join(run, name) for name in RunDir(run).listed()}
    return paths | {os.path.join(run, name) for name in ("config.json", MANIFEST, LOCK_NAME)}


def before_call(tmp_path, run):
    """The snapshot, and the paths that were kcnn's (its manifest) before the call."""
    return snapshot(tmp_path), kcnn_paths(run)


def assert_users_files_kept(before, after):
    """Every file and link that was not kcnn's is as it was, byte for byte (links: the same target)."""
    before, owned = before
    mine = {path: value for path, value in before.items() if path not in owned}
    assert mine, "the case put no file of the user's"
    changed = sorted(path for path, value in mine.items() if after.get(path) != value)
    assert not changed, f"changed or removed: {changed}"


def outside(tmp_path, name="outside"):
    """A folder of the user's beside the run, with files named as kcnn's temporaries and backups."""
    folder = tmp_path / name
    (folder / ".1.abcd1234").mkdir(parents=True)
    (folder / ".1.abcd1234" / "saved_model.pb").write_bytes(b"the user's")
    for file in ("model.tmp.keras", "epoch_0.weights.h5", "training_metadata.json", "1.tmp.pb", "model.keras"):
        (folder / file).write_bytes(f"the user's {file}".encode())
    return folder


def test_overwrite_keeps_a_users_file_in_export(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    (run / "export" / "notes.txt").write_text("mine")
    (run / "export" / "old").mkdir()
    (run / "export" / "old" / "model.keras").write_bytes(b"my earlier model")
    before = before_call(tmp_path, run)
    kcnn.deploy.export.export(str(run), "keras", overwrite=True, verbose=False)  # the run's own export, replaced
    assert_users_files_kept(before, snapshot(tmp_path))
    before = before_call(tmp_path, run)
    train(config(run, overwrite=True))
    after = snapshot(tmp_path)
    assert_users_files_kept(before, after)
    assert not (run / "export" / "model.keras").exists()  # kcnn's own export went
    assert sorted(os.listdir(run / "export")) == ["notes.txt", "old"]


def test_export_refuses_a_users_file_inside_the_version_it_replaces(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    (run / "export" / "1").mkdir()
    (run / "export" / "1" / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"holds files kcnn did not write \(export/1/mine.txt\)"):
        kcnn.deploy.export.export(str(run), "saved_model", overwrite=True, verbose=False)
    assert snapshot(tmp_path) == before


def test_overwrite_keeps_a_users_file_in_logs(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    (run / "logs" / "mine.txt").write_text("mine")
    (run / "logs" / "train" / "events.out.tfevents.mine").write_bytes(b"my own event file, unlisted")
    before = before_call(tmp_path, run)
    train(config(run, overwrite=True))
    assert_users_files_kept(before, snapshot(tmp_path))


def test_overwrite_and_resume_leave_a_link_at_the_top_and_its_target_alone(trained, tmp_path):
    target = outside(tmp_path)
    run = copy_of(trained, "finished", tmp_path)
    os.symlink(target, run / "data")  # the user's link, to the user's folder
    os.symlink(target / "model.keras", run / "my.keras")
    (run / "curves.png").unlink()  # a file kcnn listed, replaced by the user's link: removed as a link
    os.symlink(target / "model.keras", run / "curves.png")
    written_here(run)  # (a copy is bound by its manifest, which the link no longer matches)
    before = before_call(tmp_path, run)
    train(config(run, overwrite=True))
    assert_users_files_kept(before, snapshot(tmp_path))


@pytest.mark.parametrize("name", ["export", "backup", "logs", "explain"])
def test_a_link_where_kcnn_writes_is_refused_and_nothing_changes(trained, tmp_path, name):
    target = outside(tmp_path)
    run = copy_of(trained, "killed", tmp_path)
    if (run / name).exists():
        shutil.rmtree(run / name)
    os.symlink(target, run / name)
    before = snapshot(tmp_path)
    for changes in (dict(resume=True, epochs=2), dict(overwrite=True)):
        with pytest.raises(NotARunError, match=rf"{name} is a symbolic link.*replace it with a folder"):
            train(config(run, **changes))
        assert snapshot(tmp_path) == before


def test_export_into_a_run_whose_export_is_a_link_is_refused(trained, tmp_path):
    target = outside(tmp_path, "my_models")
    run = copy_of(trained, "finished", tmp_path)
    shutil.rmtree(run / "export")
    os.symlink(target, run / "export")
    (target / "kcnn_export.json").write_text('{"kcnn": {"exports": {"model.keras": {}}}}')  # even kcnn's before
    before = snapshot(tmp_path)
    for format in ("keras", "saved_model"):
        with pytest.raises(ExportError, match=r"export is a symbolic link.*remove the link"):
            kcnn.deploy.export.export(str(run), format, overwrite=True, verbose=False)
    assert snapshot(tmp_path) == before


def test_export_into_a_runs_export_holding_users_files_is_refused(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    shutil.rmtree(run / "export")
    (run / "export").mkdir()
    (run / "export" / "model.keras").write_bytes(b"the user's own model")
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"holds files kcnn did not write \(model.keras\)"):
        kcnn.deploy.export.export(str(run), "keras", overwrite=True, verbose=False)
    assert snapshot(tmp_path) == before


def test_a_config_json_copied_into_a_users_folder_is_not_a_run(trained, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(trained["finished"] / "config.json", folder / "config.json")
    (folder / "model.keras").write_bytes(b"the user's model")
    (folder / "history.csv").write_text("epoch,loss\n0,1\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for changes in (dict(overwrite=True), dict(resume=True), {}):
        with pytest.raises(NotARunError) as caught:
            train(config(folder, **changes))
        message = str(caught.value)
        assert "\n" not in message and "mine holds a config.json kcnn wrote for the run in" in message
        assert str(trained["finished"]) in message and "remove that config.json" in message
        assert snapshot(tmp_path) == before
    assert not RunDir(folder).is_run()
    (folder / "export").mkdir()  # its export/ is no run's: refused as any folder of the user's
    (folder / "export" / "model.keras").write_bytes(b"the user's")
    shutil.copy(trained["finished"] / "model.keras", folder / "model.keras")
    before = snapshot(tmp_path)
    with pytest.raises(ExportError, match=r"holds files kcnn did not write \(model.keras\)"):
        kcnn.deploy.export.export(str(folder), "keras", overwrite=True, verbose=False)
    assert snapshot(tmp_path) == before


def test_resume_after_a_kill_with_a_link_present(trained, tmp_path):
    target = outside(tmp_path)
    run = copy_of(trained, "killed", tmp_path)
    os.symlink(target, run / "data")
    os.symlink(target / "model.tmp.keras", run / "notes.tmp.keras")  # named as a temporary: not kcnn's
    (run / "backup" / "mine.tmp.txt").write_text("mine")
    (run / "best.tmp.keras").write_bytes(b"half a file a killed process left")  # kcnn's temporary
    before = before_call(tmp_path, run)
    before[1].add(str(run / "best.tmp.keras"))  # the temporary of a listed file is kcnn's
    result = train(config(run, resume=True, epochs=2))
    assert result.metrics["epochs_run"] == 2
    assert_users_files_kept(before, snapshot(tmp_path))
    assert not (run / "best.tmp.keras").exists()
    assert RunDir(run).is_finished() and (run / "backup").is_dir()  # backup/ stays for the user's file only
    assert os.listdir(run / "backup") == ["mine.tmp.txt"]


def test_overwrite_keeps_a_users_file_in_backup(trained, tmp_path):
    run = copy_of(trained, "killed", tmp_path)
    (run / "backup" / "mine.weights.h5").write_bytes(b"my own weights")
    before = before_call(tmp_path, run)
    train(config(run, overwrite=True))
    assert_users_files_kept(before, snapshot(tmp_path))
    assert os.listdir(run / "backup") == ["mine.weights.h5"]


def test_a_run_moved_whole_is_still_a_run(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    moved = tmp_path / "moved"
    os.rename(run, moved)
    assert RunDir(moved).is_run()
    finished = load_run(str(moved))
    model, loaded, class_names = finished.model, finished.config, finished.class_names
    assert loaded.arch == "lenet5" and len(class_names) == 10
    (moved / "notes.txt").write_text("mine")
    before = before_call(tmp_path, moved)
    train(config(moved, overwrite=True))
    assert_users_files_kept(before, snapshot(tmp_path))
    assert json.loads((moved / "config.json").read_text())["kcnn"]["folder"] == os.path.realpath(moved)


def test_a_run_with_a_changed_file_copied_elsewhere_is_not_a_run(trained, tmp_path):
    run = copy_of(trained, "finished", tmp_path)
    (run / "metrics.json").write_text("{}")  # no longer the file the manifest lists
    assert not RunDir(run).is_run()
    with pytest.raises(KcnnError, match="holds a config.json kcnn wrote for the run in"):
        train(config(run, overwrite=True))
