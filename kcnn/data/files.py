"""Finding, downloading and verifying the official dataset files.

Where files are looked for, in order: an explicit `data_dir`, then the
`KCNN_DATA_DIR` environment variable, then the Keras cache
(`~/.keras/datasets`). Each dataset lives in its own sub-folder there
(`mnist/`, `cifar10/cifar-10-batches-bin/`). Missing files are downloaded
from the official source into the Keras cache with `keras.utils.get_file`,
which checks the published hash; every file is verified against its
published checksum the first time a process uses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

from kcnn.errors import KcnnError


class DatasetNotFoundError(KcnnError):
    """The files of a dataset are missing and could not be downloaded."""


class ChecksumError(KcnnError):
    """A dataset file does not match its published checksum."""


class UnsafeArchiveError(KcnnError):
    """A dataset archive with a member that would be written, or link, outside its folder."""


@dataclasses.dataclass(frozen=True)
class OfficialFile:
    name: str  # file name inside the dataset folder
    digest: str  # published checksum (see ../shared/data/SOURCES.md for where each comes from)
    size: Optional[int] = None  # bytes, when published
    algorithm: str = "sha1"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one dataset's files come from."""

    folder: str  # sub-folder of the data root
    files: tuple
    url: str  # one archive or a base URL for the individual files
    archive_md5: Optional[str] = None  # for an archive: its published md5
    archive_root: str = ""  # folder inside the archive that holds `files`
    also_in: tuple = ()  # other folders (relative to each root) that may hold the files


_VERIFIED = set()  # (path, size, mtime) already checked in this process


def data_roots(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Folders searched for dataset files, in order."""
    roots = []
    if data_dir is not None:
        roots.append(os.fspath(data_dir))
    if os.environ.get("KCNN_DATA_DIR"):
        roots.append(os.environ["KCNN_DATA_DIR"])
    roots.append(keras_cache_dir())
    return roots


def keras_cache_dir() -> str:
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(base, "datasets")


def locate(source: Source, data_dir: str | os.PathLike | None = None, download: bool = True,
           names: Sequence[str] | None = None) -> list[str]:
    """Paths of `names` (default: every file of `source`), verified.

    Looks in every root; downloads into the Keras cache when no root holds
    them; raises `DatasetNotFoundError` naming the folders and files when
    that fails too.
    """
    wanted = [f for f in source.files if names is None or f.name in names]
    for root in data_roots(data_dir):
        for folder in (os.path.join(root, name) for name in (source.folder,) + source.also_in):
            if all(os.path.isfile(os.path.join(folder, f.name)) for f in wanted):
                return [verify(os.path.join(folder, f.name), f) for f in wanted]
    if download:
        try:
            folder = _download(source)
        except Exception as error:  # offline, refused, interrupted: one message
            reason = f"{type(error).__name__}: {error}"
        else:
            return [verify(os.path.join(folder, f.name), f) for f in wanted]
    else:
        reason = "downloading is turned off"
    searched = ", ".join(os.path.join(root, source.folder) for root in data_roots(data_dir))
    raise DatasetNotFoundError(
        f"Could not find {', '.join(f.name for f in wanted)} in {searched}, and downloading from "
        f"{source.url} failed ({reason}); put the official files in one of those folders or set "
        f"KCNN_DATA_DIR to a folder that holds {source.folder}/."
    )


def verify(path: str, official: OfficialFile) -> str:
    """Check `path` against its published size and sha1 (once per process)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return path
    if (official.size is not None and stat.st_size != official.size) or \
            digest_of(path, official.algorithm) != official.digest:
        raise ChecksumError(
            f"{path} does not match the published checksum of {official.name} ({official.algorithm} "
            f"{official.digest}); "
            f"the file is corrupt or not the official one: delete it and let kcnn download it again."
        )
    _VERIFIED.add(key)
    return path


def digest_of(path: str | os.PathLike, algorithm: str = "sha1", chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(source):
    """Download into the Keras cache; return the folder holding the files."""
    import keras

    cache = keras_cache_dir()
    target = os.path.join(cache, source.folder)
    # get_file silently moves to /tmp/.keras when its folder does not exist yet
    os.makedirs(target, exist_ok=True)
    if source.archive_md5:
        archive = keras.utils.get_file(
            os.path.basename(source.url), source.url, file_hash=source.archive_md5, hash_algorithm="md5",
            cache_dir=os.path.dirname(cache), cache_subdir=os.path.basename(cache),
        )
        _extract_then_move(archive, os.path.dirname(target) if source.archive_root else target)
        return target
    for f in source.files:
        final = os.path.join(target, f.name)
        if os.path.isfile(final):
            continue
        # keras.utils.get_file checks md5 and sha256 only; the published
        # checksums are sha1, so the file is downloaded under a temporary
        # name, checked here, and only then renamed (a kill mid-download
        # leaves no file under the official name).
        partial = keras.utils.get_file(
            f.name + ".part", source.url + f.name,
            cache_dir=os.path.dirname(cache), cache_subdir=os.path.join(os.path.basename(cache), source.folder),
        )
        try:
            verify(partial, f)
        except ChecksumError:
            os.remove(partial)
            raise
        os.replace(partial, final)
    return target


def _extract_then_move(archive, destination):
    """Extract into a temporary folder beside the files, then rename each
    file into place: a kill mid-extraction leaves no half-written file
    under an official name."""
    import shutil
    import tempfile

    workspace = tempfile.mkdtemp(prefix=".extracting-", dir=destination)
    try:
        _safe_extract(archive, workspace)
        for root, folders, names in os.walk(workspace):
            place = os.path.join(destination, os.path.relpath(root, workspace))
            os.makedirs(place, exist_ok=True)
            for name in names + [f for f in folders if os.path.islink(os.path.join(root, f))]:
                os.replace(os.path.join(root, name), os.path.join(place, name))
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def _safe_extract(archive, destination):
    """Extract a tar archive; refuse it, before anything is written, when a
    member would land or link outside `destination` (absolute or '..' paths,
    links out, device files)."""
    import gzip
    import tarfile
    import zlib

    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                if os.path.isabs(member.name) or member.name.startswith(("/", "\\")):  # tarfile would strip the '/'
                    raise tarfile.AbsolutePathError(member)
                tarfile.data_filter(member, destination)
            tar.extractall(destination, members=members, filter="data")  # the same checks, against what is on disk
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(
            f"{archive} holds {error.tarinfo.name!r}, {_UNSAFE.get(type(error).__name__, 'which is unsafe to extract')}"
            f"; it is not the official archive: delete it and let kcnn download it again."
        ) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:  # truncated, not a tar file
        reason = str(error).splitlines()[0].rstrip(":") if str(error) else "no details"
        raise ChecksumError(
            f"{archive} is not a readable tar archive ({type(error).__name__}: {reason}); it is corrupt or not the "
            f"official one: delete it and let kcnn download it again."
        ) from None


_UNSAFE = {  # tarfile's refusals, in words
    "AbsolutePathError": "an absolute path that would be written outside the dataset folder",
    "OutsideDestinationError": "a path that would be written outside the dataset folder",
    "AbsoluteLinkError": "a link to an absolute path outside the dataset folder",
    "LinkOutsideDestinationError": "a link to a file outside the dataset folder",
    "SpecialFileError": "a device or other special file",
}
