"""Atomic writes: every file and folder kcnn writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
from typing import Any, IO, Iterator


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike) -> Iterator[str]:
    """The one way kcnn writes a file or a folder: yield a temporary path beside `destination`, and when the
    block ends without an error, flush it to disk and rename it into place (a folder: the old one is moved
    aside first, and put back if the rename fails). On an error the temporary goes and `destination` stays
    as it was. Readers never see half of anything.

    Temporaries are named so that `kcnn.runs.rundir.remove_stale_temporaries` finds what a killed process left:
    a file `NAME.tmp.EXT` (`model.tmp.keras`, `epoch_1.tmp.weights.h5`), a folder inside a `.NAME.*` workspace."""
    import os
    import shutil
    import tempfile

    parent = os.path.dirname(destination) or "."
    name = os.path.basename(destination)
    root, dot, extension = name.partition(".")  # the whole extension: epoch_1.tmp.weights.h5
    workspace = None
    if dot and root:  # a file
        temporary = os.path.join(parent, f"{root}.tmp.{extension}")
    else:  # a folder (a SavedModel): built in a workspace of its own
        workspace = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
        temporary = os.path.join(workspace, name)
    try:
        yield temporary
        if not os.path.lexists(temporary):
            return  # the block chose to write nothing (a checkpoint that was not better)
        if os.path.isdir(temporary):
            old = os.path.join(workspace or parent, f".{name}.old")
            if os.path.isdir(destination):  # a folder cannot be replaced in one rename: move it aside first
                os.replace(destination, old)
            try:
                os.replace(temporary, destination)
            except OSError:
                if os.path.exists(old):
                    os.replace(old, destination)  # put the previous one back
                raise
        else:
            with open(temporary, "rb") as f:  # the flush makes the rename safe against a power cut too
                os.fsync(f.fileno())
            os.replace(temporary, destination)  # atomic on POSIX and Windows
    finally:
        if workspace:
            shutil.rmtree(workspace, ignore_errors=True)
        elif os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` through `atomic_path`: the file appears whole when the block ends, or not at all."""
    with atomic_path(path) as temporary, open(temporary, mode, **kwargs) as f:
        yield f
