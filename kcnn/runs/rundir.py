"""One owner for run directories: what `kcnn train` and `kcnn finetune` write, and nothing else.

    run = RunDir("saved_models/lenet5_mnist")
    lock = run.prepare(config, "train")          # refuse, resume or overwrite; lock; config.json
    run.write_json("metrics.json", metrics); run.save_model(model)
    model, config, class_names = load_run("saved_models/lenet5_mnist")

A run directory is recognised by a marker only kcnn writes (the `kcnn` key of its config.json, with a run
id and the kind of run), never by file names. kcnn writes a run only into a new or empty folder, or into a
folder holding one of its runs (to resume it, or to replace it with `overwrite`); a folder holding anything
else is refused before anything is written. `overwrite` removes only the files a run writes (`RUN_FILES`):
whatever else a user keeps in the folder stays.

What keeps a run directory whole when its process is killed at any moment:
- `RunLock`: one process at a time writes a run directory (an OS file lock, which the kernel releases
  when the holder dies, even by SIGKILL).
- Every file is written under a temporary name and renamed into place (`kcnn.runs.atomic.atomic_path`), so a
  reader sees the old file or the new one, never half of one; `prepare` removes the temporaries a killed
  process left.
- The backup (`backup/`, written by `kcnn.training.callbacks.CrashSafeBackup`) is deleted last, by `finish()`: while it
  exists, `resume` can finish a run killed after training.
"""

import contextlib
import csv
import dataclasses
import errno
import json
import os
import shutil
import uuid

from kcnn.config import KINDS, NOT_SETTINGS
from kcnn.errors import KcnnError
from kcnn.runs.atomic import atomic_open, atomic_path

LOCK_NAME = ".kcnn.lock"
MARKER = "kcnn"  # config.json's key that only kcnn writes: {"run_id", "kind", "version"}
# Every name a run writes at the top of its directory; overwrite removes these (and temporaries) only.
RUN_FILES = ("config.json", "model.keras", "best.keras", "history.csv", "metrics.json", "curves.png",
             "confusion.png", "samples.png", "explain.png", "logs", "backup", "export", "explain", LOCK_NAME)


class RunLockedError(KcnnError):
    """Another process is writing to the same run directory."""


class RunWriteError(KcnnError):
    """The operating system refused a write (a read-only folder, a full disk)."""


class NotARunError(KcnnError):
    """An output folder holds files kcnn did not write; kcnn leaves them alone."""


class RunLock:
    """Held while a process writes `run_dir`; refused to a second one."""

    def __init__(self, run_dir):
        from filelock import FileLock

        self.run_dir = run_dir
        self._lock = FileLock(os.path.join(run_dir, LOCK_NAME), timeout=0)

    def acquire(self):
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"Another kcnn process is writing to {self.run_dir}; wait until it ends (or stop it, then pass "
                f"--resume), or choose another output directory."
            ) from None
        return self

    def release(self):
        self._lock.release()

    def __enter__(self):  # the block releases it; acquire() may have taken it before
        return self if self._lock.is_locked else self.acquire()

    def __exit__(self, *exc):
        self.release()


# errno values that mean "this folder cannot take the file", as opposed to a bug
_WRITE_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def write_errors_explained(run_dir, resumable=False):
    """Turn the operating system's refusals to write into one sentence that
    says what to do; files already in place stay as they were (every write
    goes to a temporary name first)."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_REFUSED:
            raise
        where = error.filename or run_dir
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free some disk space" + (", then pass --resume to continue the run" if resumable else
                                            ", then run it again with --overwrite")
        else:
            fix = "choose an output directory you can write to (--output-dir)"
        raise RunWriteError(f"Could not write {where} ({error.strerror}); {fix}.") from None


def remove_stale_temporaries(run_dir):
    """Temporaries a killed process left behind (a finished write renames its own away): the `NAME.tmp.EXT`
    of a run file, and inside backup/ and export/ every `*.tmp.*` file and `.NAME.*` workspace (an export's
    folder in the making). Nothing else: a file kcnn did not write stays."""
    for name in os.listdir(run_dir):
        if ".tmp." in name and name.replace(".tmp", "", 1) in RUN_FILES and os.path.isfile(os.path.join(run_dir, name)):
            os.remove(os.path.join(run_dir, name))
    for folder in ("backup", "export"):
        for root, folders, names in os.walk(os.path.join(run_dir, folder)):
            for name in [name for name in folders if name.startswith(".") and name.count(".") >= 2]:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                folders.remove(name)
            for name in names:
                if ".tmp." in name:
                    os.remove(os.path.join(root, name))


def is_run_record(record):
    """Whether a parsed config.json is one kcnn wrote (its marker; before the marker existed, the kcnn
    version it recorded)."""
    if not isinstance(record, dict):
        return False
    marker, versions = record.get(MARKER), record.get("versions")
    return (isinstance(marker, dict) and "run_id" in marker) or (isinstance(versions, dict) and "kcnn" in versions)


def run_kind(record):
    marker = record.get(MARKER)
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return marker["kind"]
    return "finetune" if "backbone" in record else "train"


def config_record(config, kind, run_id=None):
    """config.json: every setting, the versions, and the marker that says kcnn wrote this run."""
    import keras

    import kcnn

    record = dataclasses.asdict(config)
    record[MARKER] = {"run_id": run_id or uuid.uuid4().hex, "kind": kind, "version": kcnn.__version__}
    record["versions"] = {"kcnn": kcnn.__version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    return record


class RunDir:
    """A run directory: its paths, lock, checks, and every read and write of its files."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, *names):
        return os.path.join(self.path, *names)

    @property
    def backup(self):
        return self.file("backup")

    # ---- what the folder holds ------------------------------------------------

    def record(self):
        """config.json as kcnn wrote it, or None when the folder holds no kcnn run."""
        try:
            with open(self.file("config.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if is_run_record(record) else None

    def is_run(self):
        return self.record() is not None

    def other_files(self):
        """What the folder holds besides kcnn's lock file (when it holds no run: files kcnn did not write)."""
        try:
            return sorted(name for name in os.listdir(self.path) if name != LOCK_NAME)
        except FileNotFoundError:
            return []

    def is_finished(self):
        return os.path.exists(self.file("metrics.json")) and not os.path.exists(self.backup)

    # ---- before a run: refuse, resume or overwrite ------------------------------

    def check(self, config, kind, *, resume=False, overwrite=False):
        """Refuse what `config` would do to this folder (before the lock is taken, so that a refused run
        writes nothing, and again under it, where no other kcnn process can change it)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotARunError(f"{self.path} is a file, not a folder; choose another output directory (--output-dir).")
        record = self.record()
        if record is None:
            others = self.other_files()
            if others:
                shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
                raise NotARunError(
                    f"{self.path} holds files kcnn did not write ({shown}), which kcnn leaves alone"
                    f"{' (--overwrite replaces only a kcnn run)' if overwrite else ''}; choose a new or empty "
                    f"output directory (--output-dir).")
            if resume:
                raise KcnnError(f"There is no run to resume in {self.path}; start it without --resume.")
            return
        if not (resume or overwrite):
            raise KcnnError(
                f"{self.path} already holds a run; pass resume=True (--resume) to continue it, overwrite=True "
                f"(--overwrite) to replace it, or another output directory."
            )
        if not resume:
            return
        if run_kind(record) != kind:
            raise KcnnError(f"The run in {self.path} is a `kcnn {run_kind(record)}` run, not a `kcnn {kind}` run; "
                            f"resume it with the command that started it, or start a new run.")
        different = {k: v for k, v in dataclasses.asdict(config).items()
                     if k not in NOT_SETTINGS and record.get(k) != v}
        if different:
            raise KcnnError(
                f"The run in {self.path} was started with other settings ({', '.join(sorted(different))}); "
                f"resume it with the same ones, or start a new run."
            )
        if self.is_finished():
            raise KcnnError(f"The run in {self.path} has finished; there is nothing to resume (kcnn evaluate "
                            f"{self.path} re-evaluates it).")

    def prepare(self, config, kind, *, resume=False, overwrite=False):
        """Check the folder, take its lock, clear what `overwrite` replaces and write config.json; returns
        the held `RunLock`."""
        self.check(config, kind, resume=resume, overwrite=overwrite)  # before anything is written...
        with write_errors_explained(self.path):
            os.makedirs(self.path, exist_ok=True)
            lock = RunLock(self.path).acquire()
        try:
            self.check(config, kind, resume=resume, overwrite=overwrite)  # ...and under the lock
            with write_errors_explained(self.path):
                record = self.record()
                if record is not None and overwrite:
                    self.remove_run_files()
                    record = None
                remove_stale_temporaries(self.path)
                run_id = record[MARKER]["run_id"] if record and isinstance(record.get(MARKER), dict) else None
                self.write_json("config.json", config_record(config, kind, run_id))
        except BaseException:
            lock.release()
            raise
        return lock

    def remove_run_files(self):
        """The files a run writes, and only those (not the lock this process holds)."""
        for name in RUN_FILES:
            path = self.file(name)
            if name == LOCK_NAME or not os.path.lexists(path):
                continue
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)

    # ---- reads and writes ---------------------------------------------------------

    def write_json(self, name, value):
        with atomic_open(self.file(name)) as f:
            json.dump(value, f, indent=1)

    def read_json(self, name):
        with open(self.file(name)) as f:
            return json.load(f)

    def save_model(self, model, name="model.keras"):
        with atomic_path(self.file(name)) as temporary:
            model.save(temporary)

    def history_rows(self):
        return read_history_rows(self.file("history.csv"))

    def history(self):
        """{metric: [value per epoch]} from history.csv (GoogLeNet's main output named as for one output)."""
        rows = self.history_rows()
        keys = [key for key in (rows[0] if rows else {}) if key not in ("epoch", "seconds", "phase")]
        history = {key: [float(row[key]) for row in rows] for key in keys}
        return {key.replace("logits_accuracy", "accuracy"): value for key, value in history.items()
                if "aux" not in key and "logits_loss" not in key}

    def backup_metadata(self, phase=None):
        return read_backup_metadata(self.file("backup", phase) if phase else self.backup)

    def resumed_epoch(self, phase=None):
        """The epoch the backup resumes at (so that the data order starts at that epoch too); 0 without."""
        metadata = self.backup_metadata(phase)
        return int(metadata["epoch"]) if metadata else 0

    def finish(self):
        """Last: delete the backup, which lets --resume finish a run killed after training."""
        shutil.rmtree(self.backup, ignore_errors=True)


def read_backup_metadata(backup_dir):
    """{"epoch": the next epoch to run, "weights": file name, ...}, or None."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as f:
            metadata = json.load(f)
        return metadata if "weights" in metadata else None
    except (OSError, ValueError):
        return None


def read_history_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history_rows(path, rows):
    """history.csv, one format for both workflows: epoch, (phase,) the logged metrics, seconds."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def load_run(path):
    """(model, config, class names) of a finished run directory (of `kcnn
    train`: a TrainConfig; of `kcnn finetune`: a FinetuneConfig), or of a
    model.keras file inside one."""
    from kcnn.runs.modelfile import load_model

    run_dir = os.path.dirname(path) if str(path).endswith(".keras") else path
    model_path = path if str(path).endswith(".keras") else os.path.join(run_dir, "model.keras")
    if not os.path.isfile(model_path):
        raise KcnnError(f"{run_dir} holds no model.keras; pass the directory of a finished run.")
    config, class_names = run_config(run_dir)
    return load_model(model_path, error=KcnnError, accelerate=False), config, class_names


def run_config(run_dir):
    """(config, class names) of a finished run directory, its model left unread: a TrainConfig or a
    FinetuneConfig, as config.json names its kind."""
    run = RunDir(run_dir)
    try:
        record = run.read_json("config.json")  # only read: a run without the marker loads too
        class_names = run.read_json("metrics.json")["class_names"]
        kind = KINDS[run_kind(record)]
        config = kind(**{k: v for k, v in record.items() if k in kind.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KcnnError(
            f"{run_dir} is not a complete kcnn run (config.json or metrics.json is missing or unreadable: "
            f"{error}); pass the directory a finished `kcnn train` wrote."
        ) from None
    return config, tuple(class_names)
