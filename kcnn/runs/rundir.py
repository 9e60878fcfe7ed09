"""One owner for run directories: what `kcnn train` and `kcnn finetune` write, and nothing else.

    run = RunDir("saved_models/lenet5_mnist")
    lock = run.prepare(config, "train")          # refuse, resume or overwrite; lock; config.json
    run.write_json("metrics.json", metrics); run.save_model(model)
    with run.track(path): write(path)            # any other writer of a file of the run
    run = load_run("saved_models/lenet5_mnist")      # a Run: .model, .metrics, .history, .class_names, .path

A run directory is recognised by a marker only kcnn writes (the `kcnn` key of its config.json, with a run
id and the kind of run), never by file names. kcnn writes a run only into a new or empty folder, or into a
folder holding one of its runs (to resume it, or to replace it with `overwrite`); a folder holding anything
else is refused before anything is written.

The rules that keep kcnn to its own files:
- The manifest (`MANIFEST`, named by the marker) lists every file the run wrote, relative to the folder:
  a file is entered in it before it is created (`RunDir.track`), so that a killed process never leaves a
  kcnn file unlisted. TensorBoard's event files, which Keras names itself, are entered after each epoch
  (`RunDir.record_found`: only `events.out.tfevents.*`).
- Cleaning (`overwrite`, the temporaries a killed process left, the backup at the end) goes file by file
  through the manifest: never a whole sub-folder (one is removed only when it is empty afterwards), never
  through a symbolic link (a link is removed as a link; a path that passes through one is left alone),
  never a path outside the folder. Files the user put anywhere in the folder stay.
- kcnn writes no file through a symbolic link inside a run (a run's `backup/` that is a link is refused).
- The marker is bound to its folder: it records the folder's real path, and a record is a run of this
  folder only if that path is this folder's, or if every file its manifest lists is here with the size it
  recorded (a whole run moved or copied with `mv`/`cp -r`). A config.json copied alone into another folder
  is not a run: kcnn refuses to write there (`NotARunError`) and deletes nothing. Reading a finished run
  (`load_run`, `run_config`) needs no binding: a run moved or copied whole loads.

What keeps a run directory whole when its process is killed at any moment:
- `RunLock`: one process at a time writes a run directory (an OS file lock, which the kernel releases
  when the holder dies, even by SIGKILL).
- Every file is written under a temporary name and renamed into place (`kcnn.runs.atomic.atomic_path`), so a
  reader sees the old file or the new one, never half of one; `prepare` removes the temporaries a killed
  process left (those of the files the manifest lists). The manifest is written the same way.
- The backup (`backup/`, written by `kcnn.training.callbacks.CrashSafeBackup`) is deleted last, by `finish()`: while it
  exists, `resume` can finish a run killed after training.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fnmatch
import json
import os
import re
import stat
import uuid
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Optional, Sequence

from kcnn.config import KINDS, NOT_SETTINGS
from kcnn.errors import KcnnError
from kcnn.runs.atomic import atomic_open, atomic_path

if TYPE_CHECKING:  # (for readers and type checkers: not imported when the module is)
    import keras

LOCK_NAME = ".kcnn.lock"
MARKER = "kcnn"  # config.json's key that only kcnn writes: {"run_id", "kind", "version", "folder", "manifest"}
# The list of the files a run wrote: {"run_id", "files": {relative path: size, or None while being written,
# or "folder" for a folder written whole under a temporary name (an export) until its files are listed}}.
MANIFEST = ".kcnn-files.json"
# Every name a run writes at the top of its directory (a run without a manifest is cleaned by these names).
RUN_FILES = ("config.json", "model.keras", "best.keras", "history.csv", "metrics.json", "curves.png",
             "confusion.png", "samples.png", "explain.png", "logs", "backup", "export", "explain", LOCK_NAME,
             MANIFEST)
SUB_FOLDERS = ("logs", "backup", "export", "explain")  # the folders kcnn writes into: never links


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

    def acquire(self) -> RunLock:
        from filelock import Timeout

        path = self._lock.lock_file
        # filelock opens the file with O_TRUNC: through a link it would empty the file the link points to
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            raise RunLockedError(f"{path} is not kcnn's lock file (it is a link, a folder or a special file), and "
                                 f"kcnn leaves it alone; remove it, or choose another output directory.")
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"Another kcnn process is writing to {self.run_dir}; wait until it ends (or stop it, then pass "
                f"--resume), or choose another output directory."
            ) from None
        except OSError as error:  # (Timeout is one too: first)
            raise RunLockedError(f"Cannot take the lock file {path} ({error.strerror or error}); make the folder "
                                 f"writable, or choose another output directory.") from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):  # the block releases it; acquire() may have taken it before
        return self if self._lock.is_locked else self.acquire()

    def __exit__(self, *exc):
        self.release()


# errno values that mean "this folder cannot take the file", as opposed to a bug
_WRITE_REFUSED = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def write_errors_explained(run_dir: str, resumable: bool = False, flag: str = "--output-dir",
                           again: str = "run it again with --overwrite") -> Iterator[None]:
    """Turn the operating system's refusals to write into one sentence that
    says what to do; files already in place stay as they were (every write
    goes to a temporary name first). `flag`: the option that chooses the
    folder; `again`: how to try again once there is space."""
    try:
        yield
    except OSError as error:
        if error.errno not in _WRITE_REFUSED:
            raise
        where = error.filename or run_dir
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            fix = "free some disk space, then " + ("pass --resume to continue the run" if resumable else again)
        else:
            fix = f"choose an output directory you can write to ({flag})"
        raise RunWriteError(f"Could not write {where} ({error.strerror}); {fix}.") from None


def remove_stale_temporaries(run_dir: str) -> None:
    """Temporaries a killed process left behind (a finished write renames its own away): those of the
    files the run's manifest lists (`RunDir.remove_stale_temporaries`). Nothing else: a file kcnn did not
    write stays, and no symbolic link is followed."""
    RunDir(run_dir).remove_stale_temporaries()


def is_run_record(record: Any) -> bool:
    """Whether a parsed config.json is one kcnn wrote (its marker; before the marker existed, the kcnn
    version it recorded)."""
    if not isinstance(record, dict):
        return False
    marker, versions = record.get(MARKER), record.get("versions")
    return (isinstance(marker, dict) and "run_id" in marker) or (isinstance(versions, dict) and "kcnn" in versions)


def run_kind(record: dict) -> str:
    marker = record.get(MARKER)
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return marker["kind"]
    return "finetune" if "backbone" in record else "train"


def config_record(config: Any, kind: str, run_id: str | None = None, folder: str | None = None) -> dict:
    """config.json: every setting, the versions, and the marker that says kcnn wrote this run, in which
    folder (`folder`, by default the config's output_dir: its real path) and where its manifest is."""
    import keras

    from kcnn.version import __version__

    record = dataclasses.asdict(config)
    record[MARKER] = {"run_id": run_id or uuid.uuid4().hex, "kind": kind, "version": __version__,
                      "folder": os.path.realpath(folder or config.output_dir), "manifest": MANIFEST}
    record["versions"] = {"kcnn": __version__, "keras": keras.__version__, "backend": keras.backend.backend()}
    return record


class RunDir:
    """A run directory: its paths, lock, checks, and every read and write of its files."""

    def __init__(self, path):
        self.path = os.fspath(path)

    def file(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    @property
    def backup(self) -> str:
        return self.file("backup")

    # ---- what the folder holds ------------------------------------------------

    def marker_record(self) -> dict | None:
        """config.json as kcnn wrote it, wherever it was written (None when it is not kcnn's)."""
        try:
            with open(self.file("config.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if is_run_record(record) else None

    def record(self) -> dict | None:
        """config.json as kcnn wrote it for this folder, or None when the folder holds no kcnn run."""
        record = self.marker_record()
        return record if record is not None and self._bound(record) else None

    def _bound(self, record):
        """Whether `record` is of a run in this folder: written here (its recorded real path), or moved or
        copied here whole with `mv`/`cp -r` (every file its manifest lists is here, of the recorded size).
        A folder path alone would refuse a moved run; a manifest alone, a run that crashed before its
        sizes were recorded. A config.json copied alone is neither: it is not a run, and nothing is
        deleted on its word."""
        marker = record.get(MARKER)
        if not isinstance(marker, dict):
            return False  # written by a kcnn before the marker: nothing says where
        if marker.get("folder") == os.path.realpath(self.path):
            return True
        manifest = self._manifest()
        if manifest is None or manifest.get("run_id") != marker.get("run_id"):
            return False
        sized = {name: size for name, size in manifest["files"].items() if isinstance(size, int)}
        if "config.json" not in sized:
            return False
        for name, size in sized.items():
            path = self._inside(name)
            try:
                status = os.lstat(path) if path else None
            except OSError:
                return False
            if status is None or not stat.S_ISREG(status.st_mode) or status.st_size != size:
                return False
        return True

    def is_run(self) -> bool:
        return self.record() is not None

    def other_files(self) -> list[str]:
        """What the folder holds besides kcnn's lock file (when it holds no run: files kcnn did not write)."""
        try:
            return sorted(name for name in os.listdir(self.path) if name not in (LOCK_NAME, MANIFEST))
        except FileNotFoundError:
            return []

    def is_finished(self) -> bool:
        if not os.path.exists(self.file("metrics.json")):
            return False
        manifest = self._manifest()
        if manifest is None:
            return not os.path.exists(self.backup)
        # the backup's files, not its folder: a file the user keeps in backup/ stays after finish()
        return not any(name.startswith("backup/") and os.path.lexists(self.file(name)) for name in manifest["files"])

    # ---- the manifest: every file the run wrote ------------------------------------

    def _manifest(self):
        """The manifest ({"run_id", "files"}), or None when there is none (or it is not kcnn's)."""
        path = self._inside(MANIFEST)
        if path is None or os.path.islink(path):
            return None
        try:
            with open(path) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
            return None
        return manifest

    def _write_manifest(self, manifest):
        """Atomically (a temporary name, flushed, renamed): a reader sees the old list or the new one."""
        path = self.file(MANIFEST)
        temporary = self.file(MANIFEST.replace(".json", ".tmp.json"))
        with open(temporary, "w") as f:
            json.dump(manifest, f, indent=0, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)

    def _update(self, change):
        """Read the manifest, `change(files)` in place, write it back (started empty when there is none)."""
        manifest = self._manifest() or {"run_id": self._run_id(), "files": {}}
        change(manifest["files"])
        self._write_manifest(manifest)

    def _run_id(self):
        record = self.marker_record()
        marker = record.get(MARKER) if record else None
        return marker.get("run_id") if isinstance(marker, dict) else None

    def listed(self) -> set[str]:
        """The relative paths the manifest lists (an empty set without one)."""
        manifest = self._manifest()
        return set(manifest["files"]) if manifest else set()

    def check_folder(self, folder: str) -> None:
        """Refuse (NotARunError) a folder of the run that is, or lies below, a symbolic link: kcnn would
        write through it."""
        self._relative(os.path.join(folder, "_"))  # checks every folder down to `folder` itself

    def _relative(self, path):
        """`path` relative to the run folder, refused when it leaves the folder or passes through a
        symbolic link inside it (its target would be written)."""
        full = path if os.path.isabs(path) else os.path.join(self.path, path)
        relative = os.path.relpath(os.path.abspath(full), os.path.abspath(self.path)).replace(os.sep, "/")
        if relative == "." or relative.startswith("../") or relative == ".." or os.path.isabs(relative):
            raise NotARunError(f"{path} is not inside the run folder {self.path}; kcnn writes a run's files only "
                               f"inside it.")
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            folder = self.file(*parts[:depth])
            if os.path.islink(folder):
                raise NotARunError(
                    f"{folder} is a symbolic link; kcnn writes a run's files only inside its folder, never through "
                    f"a link: replace the link with a folder of its own, or choose another output directory.")
        return relative

    def _inside(self, relative):
        """The path of a manifest entry, or None where it would leave the folder or pass through a symbolic
        link (neither is ever followed: a link's target is not kcnn's)."""
        parts = relative.split("/")
        if not relative or os.path.isabs(relative) or any(part in ("", ".", "..") for part in parts):
            return None
        for depth in range(1, len(parts)):
            folder = self.file(*parts[:depth])
            if os.path.islink(folder) or not os.path.isdir(folder):
                return None
        path = self.file(*parts)
        root = os.path.realpath(self.path)
        parent = os.path.realpath(os.path.dirname(path))
        return path if parent == root or parent.startswith(root + os.sep) else None

    @contextlib.contextmanager
    def track(self, *paths: str) -> Iterator[None]:
        """Enter the files at `paths` (inside the run) in the manifest before the block writes them; after
        it, their sizes (a file the block did not write leaves the list)."""
        names = [self._relative(path) for path in paths]
        manifest = self._manifest()
        if manifest is None:  # not a run kcnn prepared (a folder `evaluate --tta` writes into): nothing to list
            yield
            return
        if any(name not in manifest["files"] for name in names):
            self._update(lambda files: files.update({name: files.get(name) for name in names}))
        try:
            yield
        finally:
            self._update(lambda files: files.update(self._sizes(names, files)))

    def _sizes(self, names, files):
        sizes = {}
        for name in names:
            path = self._inside(name)
            status = os.lstat(path) if path and os.path.lexists(path) else None
            if status is None:
                files.pop(name, None)
            elif stat.S_ISREG(status.st_mode):
                sizes[name] = status.st_size
        return sizes

    @contextlib.contextmanager
    def track_folder(self, path: str) -> Iterator[None]:
        """A folder the block writes whole (under a temporary name, renamed into place: an export's
        version folder): entered as a folder before, replaced by its files after."""
        name = self._relative(path)
        if self._manifest() is None:
            yield
            return
        self._update(lambda files: files.update({name: "folder"}))
        try:
            yield
        finally:
            def listed(files):  # the folder's files now, in place of the folder and of its earlier files
                for old in [old for old in files if old == name or old.startswith(name + "/")]:
                    del files[old]
                files.update(self._files_below(name))

            self._update(listed)

    def _files_below(self, name):
        """{relative path: size} of the regular files below the folder `name`, links not followed."""
        top = self._inside(name)
        found = {}
        if top is None or os.path.islink(top) or not os.path.isdir(top):
            return found
        for root, folders, files in os.walk(top):  # os.walk follows no link below its top
            for entry in files:
                path = os.path.join(root, entry)
                status = os.lstat(path)
                if stat.S_ISREG(status.st_mode):
                    found[os.path.relpath(path, self.path).replace(os.sep, "/")] = status.st_size
        return found

    def record_found(self, folder: str, pattern: str) -> None:
        """Enter the files below `folder` whose names match `pattern` (TensorBoard's event files, which
        Keras names and writes itself): they cannot be entered before they exist."""
        found = {path: size for path, size in self._files_below(self._relative(folder)).items()
                 if fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)}
        if found and self._manifest() is not None:
            self._update(lambda files: files.update(found))

    def untrack(self, *paths: str) -> None:
        """Remove files the run wrote (`paths`, inside it) and their entries."""
        names = [self._relative(path) for path in paths]
        for name in names:
            self._remove_entry(name, None)
        if self._manifest() is not None:
            self._update(lambda files: [files.pop(name, None) for name in names])

    # ---- before a run: refuse, resume or overwrite ------------------------------

    def check(self, config: Any, kind: str, *, resume: bool = False, overwrite: bool = False) -> None:
        """Refuse what `config` would do to this folder (before the lock is taken, so that a refused run
        writes nothing, and again under it, where no other kcnn process can change it)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotARunError(f"{self.path} is a file, not a folder; choose another output directory (--output-dir).")
        if self.marker_record() is not None:
            self._refuse_links()  # first: a link hides the files that bind the record to this folder
        record = self.record()
        if record is None:
            self._refuse_copied_record(resume, overwrite)
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
        if resume:
            if run_kind(record) != kind:
                raise KcnnError(f"The run in {self.path} is a `kcnn {run_kind(record)}` run, not a `kcnn {kind}` "
                                f"run; resume it with the command that started it, or start a new run.")
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
        if self._manifest() is None:  # written by hand or by an earlier kcnn: kcnn knows its top-level names only
            held = [name for name in SUB_FOLDERS if os.path.isdir(self.file(name)) and os.listdir(self.file(name))]
            if held:
                raise NotARunError(
                    f"The run in {self.path} has no list of the files kcnn wrote ({MANIFEST}), so kcnn cannot tell "
                    f"its files in {', '.join(held)} from yours and leaves them alone; move what you keep out "
                    f"of them and delete the rest, or choose a new output directory (--output-dir).")

    def _refuse_copied_record(self, resume, overwrite):
        """A kcnn config.json that is not of a run here (copied alone, or written by a kcnn that did not
        bind it to its folder): one sentence, and nothing written or deleted."""
        record = self.marker_record()
        if record is None:
            return
        marker = record.get(MARKER)
        where = marker.get("folder") if isinstance(marker, dict) else None
        written = f"for the run in {where}" if where else "by an earlier kcnn, which did not record its folder"
        raise NotARunError(
            f"{self.path} holds a config.json kcnn wrote {written}, without the rest of that run, so it is not a "
            f"kcnn run and kcnn leaves its files alone{' (--overwrite replaces only a kcnn run)' if overwrite else ''}"
            f"; choose a new or empty output directory (--output-dir), or remove that config.json.")

    def _refuse_links(self):
        for name in SUB_FOLDERS:
            if os.path.islink(self.file(name)):
                raise NotARunError(
                    f"{self.file(name)} is a symbolic link; kcnn writes a run's files only inside its folder, never "
                    f"through a link, and leaves the link alone: replace it with a folder of its own, or choose "
                    f"another output directory (--output-dir).")

    def prepare(self, config: Any, kind: str, *, resume: bool = False, overwrite: bool = False) -> RunLock:
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
                self.remove_stale_temporaries()
                run_id = record[MARKER]["run_id"] if record and isinstance(record.get(MARKER), dict) else None
                run_id = run_id or uuid.uuid4().hex
                manifest = self._manifest() if record is not None else None
                if manifest is None or manifest.get("run_id") != run_id:  # a new run: a new list
                    self._write_manifest({"run_id": run_id, "files": {}})
                with self.track("config.json"):
                    with atomic_open(self.file("config.json")) as f:
                        json.dump(config_record(config, kind, run_id, folder=self.path), f, indent=1)
        except BaseException:
            lock.release()
            raise
        return lock

    def remove_run_files(self) -> None:
        """The files the run wrote, and only those (not the lock this process holds): file by file from
        its manifest, then the folders that held them if nothing else is left in them. A run without a
        manifest (check() refused one with files in its sub-folders): its top-level names."""
        manifest = self._manifest()
        if manifest is None:
            names = [name for name in RUN_FILES if name != LOCK_NAME]
        else:
            names = [name for name in manifest["files"] if name not in (LOCK_NAME, MANIFEST)]
        for name in sorted(names, reverse=True):
            self._remove_entry(name, manifest["files"].get(name) if manifest else None)
        if manifest is not None:
            self._write_manifest({"run_id": manifest.get("run_id"), "files": {}})

    def _remove_entry(self, name, value):
        """Remove one entry: a file, or a link as a link (its target never touched); a folder only where
        the manifest says the run wrote it whole, or an empty one. Then its emptied parent folders."""
        path = self._inside(name)
        if path is None or not os.path.lexists(path):
            return
        if os.path.islink(path) or not os.path.isdir(path):
            os.remove(path)
        elif value == "folder":
            _remove_written_folder(path)
        else:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty
        self._remove_empty_parents(name)

    def _remove_empty_parents(self, name):
        parts = name.split("/")[:-1]
        while parts:
            folder = self.file(*parts)
            if os.path.islink(folder) or not os.path.isdir(folder) or os.listdir(folder):
                return
            os.rmdir(folder)
            parts.pop()

    def remove_stale_temporaries(self) -> None:
        """What a killed process left of the files the manifest lists: `NAME.tmp.EXT` beside each, and the
        `.NAME.*` workspace of a folder written whole; no link is followed, and nothing unlisted goes. A
        run without a manifest: the temporaries of its top-level names."""
        manifest = self._manifest()
        names = list(manifest["files"]) if manifest else [name for name in RUN_FILES if name != LOCK_NAME]
        for name in names:
            parent, _, base = name.rpartition("/")
            root, dot, extension = base.partition(".")
            if dot and root:
                temporary = self._inside(f"{parent}/{root}.tmp.{extension}" if parent else f"{root}.tmp.{extension}")
                if temporary and os.path.lexists(temporary) and not os.path.isdir(temporary):
                    os.remove(temporary)
            else:
                folder = self._inside(parent) if parent else self.path
                folder = folder if folder and os.path.isdir(folder) and not os.path.islink(folder) else None
                workspace = re.compile(rf"\.{re.escape(base)}\.[A-Za-z0-9_]{{8}}")
                for entry in os.listdir(folder) if folder else ():
                    path = os.path.join(folder, entry)
                    if workspace.fullmatch(entry) and os.path.isdir(path) and not os.path.islink(path):
                        _remove_written_folder(path)  # a temporary folder kcnn made (tempfile.mkdtemp)

    # ---- reads and writes ---------------------------------------------------------

    def write_json(self, name: str, value: Any) -> None:
        with self.track(self.file(name)), atomic_open(self.file(name)) as f:
            json.dump(value, f, indent=1)

    def read_json(self, name: str) -> Any:
        from kcnn.data.folder import special_file

        kind = special_file(self.file(name))
        if kind is not None:  # open() would block on a named pipe
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", self.file(name))
        with open(self.file(name)) as f:
            return json.load(f)

    def save_model(self, model: keras.Model, name: str = "model.keras") -> None:
        with self.track(self.file(name)), atomic_path(self.file(name)) as temporary:
            model.save(temporary)

    def history_rows(self) -> list[dict]:
        return read_history_rows(self.file("history.csv"))

    def history(self) -> dict[str, list[float]]:
        """{metric: [value per epoch]} from history.csv (GoogLeNet's main output named as for one output)."""
        rows = self.history_rows()
        keys = [key for key in (rows[0] if rows else {}) if key not in ("epoch", "seconds", "phase")]
        history = {key: [float(row[key]) for row in rows] for key in keys}
        return {key.replace("logits_accuracy", "accuracy"): value for key, value in history.items()
                if "aux" not in key and "logits_loss" not in key}

    def backup_metadata(self, phase: str | None = None) -> dict | None:
        return read_backup_metadata(self.file("backup", phase) if phase else self.backup)

    def resumed_epoch(self, phase: str | None = None) -> int:
        """The epoch the backup resumes at (so that the data order starts at that epoch too); 0 without."""
        metadata = self.backup_metadata(phase)
        return int(metadata["epoch"]) if metadata else 0

    def finish(self) -> None:
        """Last: delete the backup, which lets --resume finish a run killed after training (file by file:
        a file the user put in backup/ stays, and backup/ with it)."""
        manifest = self._manifest()
        if manifest is None:
            if os.path.isdir(self.backup) and not os.path.islink(self.backup) and not os.listdir(self.backup):
                os.rmdir(self.backup)
            return
        names = [name for name in manifest["files"] if name.startswith("backup/")]
        for name in sorted(names, reverse=True):
            self._remove_entry(name, manifest["files"][name])
        self._update(lambda files: [files.pop(name, None) for name in names])


def _remove_written_folder(path):
    """A folder kcnn wrote whole (a workspace, an export's version folder): its files and links (as links),
    then its folders, bottom up; nothing below a link is visited."""
    for root, folders, files in os.walk(path, topdown=False):
        for name in files + [name for name in folders if os.path.islink(os.path.join(root, name))]:
            os.remove(os.path.join(root, name))
        for name in folders:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def tracked(run: RunDir | None, *paths: str) -> ContextManager:
    """`run.track(*paths)`, or nothing to list where there is no run (a worker's scratch folder)."""
    return run.track(*paths) if run is not None else contextlib.nullcontext()


def read_backup_metadata(backup_dir: str) -> dict | None:
    """{"epoch": the next epoch to run, "weights": file name, ...}, or None."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as f:
            metadata = json.load(f)
        return metadata if "weights" in metadata else None
    except (OSError, ValueError):
        return None


def read_history_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history_rows(path: str, rows: Sequence[dict]) -> None:
    """history.csv, one format for both workflows: epoch, (phase,) the logged metrics, seconds."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


@dataclasses.dataclass(eq=False)
class Run:
    """A run of `kcnn.train` or `kcnn.finetune`: what they return, and what `kcnn.load_run(path)` gives of a finished
    run folder. Evaluate, predict, explain and export take it; only this object knows where its files are.

    path:        the run folder (`directory` is its older name)
    model:       the trained Keras model (raw 0-255 images in, logits out)
    class_names: the class of each output, in order
    metrics:     metrics.json: accuracy, per_class_accuracy, tta_accuracy, epochs_run, train_seconds, ... (None
                 on a data-parallel worker other than the chief, which writes no metrics)
    history:     {metric: [value per epoch]} from history.csv (loss, accuracy, val_loss, val_accuracy)
    config:      the run's settings, a `kcnn.config.TrainConfig` or `FinetuneConfig`
    folder:      the `RunDir` that reads and writes its files; model_path: its model.keras
    """

    folder: RunDir
    config: object
    class_names: tuple
    model: object
    model_path: str
    metrics: Optional[dict] = None
    history: Optional[dict] = None

    @property
    def path(self) -> str:
        return self.folder.path

    @property
    def directory(self) -> str:
        """The run folder (the older name of `path`)."""
        return self.folder.path

    def __repr__(self):
        accuracy = f", accuracy={self.metrics['accuracy']:.4f}" if self.metrics and "accuracy" in self.metrics else ""
        return f"Run({self.path!r}, {type(self.config).__name__}, {len(self.class_names)} classes{accuracy})"


FinishedRun = Run  # the name evaluate, export and earlier scripts know it by


def load_run(path: str | os.PathLike | Run) -> Run:
    """The `Run` of a finished run directory, or of a model.keras file inside one (a Run is returned as it is).
    Its model is loaded in Keras' safe mode: a file that would run code is refused; a model.keras, config.json
    or metrics.json that is not a regular file (a named pipe) is refused unopened."""
    from kcnn.data.folder import special_file
    from kcnn.runs.modelfile import load_model

    if isinstance(path, Run):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise KcnnError(f"load_run takes the path of a run folder (or of a model.keras in one). "
                        f"Received: path={path!r}")
    path = os.fspath(path)
    run_dir = os.path.dirname(path) if path.endswith(".keras") else path
    model_path = path if path.endswith(".keras") else os.path.join(run_dir, "model.keras")
    kind = special_file(model_path)
    if kind is not None and kind != "a folder":
        raise KcnnError(f"{model_path} is {kind}, not a model file; pass the directory of a finished run.")
    if not os.path.exists(run_dir or "."):
        from kcnn.config import close_folders

        close = close_folders(run_dir)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else "pass the directory of a finished run."
        raise KcnnError(f"There is no run folder {run_dir!r}; {hint}")
    if not os.path.isfile(model_path):
        raise KcnnError(f"{run_dir} holds no model.keras; pass the directory of a finished run.")
    config, class_names = run_config(run_dir)
    model = load_model(model_path, error=KcnnError, accelerate=False)
    folder = RunDir(run_dir)
    return Run(folder, config, class_names, model, model_path, metrics=folder.read_json("metrics.json"),
               history=folder.history())


def run_config(run_dir: str) -> tuple[Any, tuple[str, ...]]:
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
