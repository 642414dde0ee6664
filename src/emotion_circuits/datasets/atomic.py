"""File datasets whose saves cannot be cut off, and whose damaged files are named instead of read.

Kedro's file datasets write the target file in place: a run interrupted while saving (Ctrl-C, a
killed job, a full disk) leaves a truncated file as the newest version, which the next run loads
("Ran out of input") and `--only-missing-outputs` counts as present. The classes here:

- **save** to a hidden temporary file beside the target (``.<name>.<pid>-<token>.partial``, same
  folder, so the same file system), flush it to disk, then rename it onto the target. The rename is
  atomic: the target is either absent or complete. The version glob (``<name>/<version>/<name>``)
  never matches a partial file, so an interrupted save leaves the previous version as the newest.
  Partial files of processes that no longer run are deleted on the next save.
- **check** a file before loading it and in ``exists()``: a pickle must parse to its STOP opcode
  (scanned with `pickletools`, nothing is unpickled), JSON must parse, a CSV must end with a line
  break, a PNG with its IEND chunk, a Parquet file with its ``PAR1`` footer. A damaged version is
  not loaded: the error names the file and what to delete; ``exists()`` is false for it, so
  `--only-missing-outputs` rebuilds it. `ModelAvailabilityHooks` adds the command that rebuilds it.

Use them in the catalog in place of the plain types, e.g. ``type:
emotion_circuits.datasets.AtomicCSVDataset`` (`ContractDataset` is atomic already).
"""

from __future__ import annotations

import json
import os
import pickletools
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import DatasetError, VersionNotFoundError, get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import CSVDataset, ParquetDataset
from kedro_datasets.pickle import PickleDataset
from kedro_datasets.text import TextDataset

_PARTIAL = ".partial"
_PNG_END = b"IEND\xaeB`\x82"


class CorruptDatasetError(DatasetError):
    """A stored version is truncated or unreadable; the message names the file and what to do."""


class AtomicSaveMixin:
    """Atomic saves and integrity checks for a kedro-datasets file dataset (put it first in the bases).

    Subclasses set ``_integrity`` to the file format checked (``pickle``, ``json``, ``csv``,
    ``parquet`` or ``figure``).
    """

    _integrity = "any"
    _temporary_save_path: PurePosixPath | None = None
    rebuild_command: str | None = None  # set by ModelAvailabilityHooks for the run's inputs

    # --- save ----------------------------------------------------------------------------------

    def _get_save_path(self) -> PurePosixPath:
        if self._temporary_save_path is not None:
            return self._temporary_save_path
        return super()._get_save_path()

    def save(self, data: Any) -> None:
        target = super()._get_save_path()  # the version's path; Kedro checks it does not exist yet
        self._remove_stale_partials()
        temporary = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{_PARTIAL}"
        self._temporary_save_path = temporary
        try:
            _unwrapped(super().save)(self, data)
            self._commit(temporary, target)
        except BaseException:  # KeyboardInterrupt included: nothing half-written stays behind
            self._discard(temporary)
            raise
        finally:
            self._temporary_save_path = None

    def _local(self) -> bool:
        return getattr(self, "_protocol", "file") in ("file", "local")

    def _commit(self, temporary: PurePosixPath, target: PurePosixPath) -> None:
        source, destination = (get_filepath_str(p, self._protocol) for p in (temporary, target))
        if not self._local():
            self._fs.mv(source, destination, recursive=True)
            return
        _fsync_tree(Path(source))
        if Path(destination).is_dir():  # an unversioned folder of figures saved again: replaced as a whole
            shutil.rmtree(destination)
        os.replace(source, destination)
        _fsync_directory(Path(destination).parent)

    def _discard(self, temporary: PurePosixPath) -> None:
        path = get_filepath_str(temporary, self._protocol)
        try:
            if self._fs.exists(path):
                self._fs.rm(path, recursive=True)
            folder = Path(path).parent
            if self._local() and self._version and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # the version folder this save created
        except OSError:
            pass

    def _remove_stale_partials(self) -> None:
        """Deletes partial files of this dataset whose writing process has ended (local files only)."""
        if not self._local():
            return
        name = Path(str(self._filepath)).name
        root = Path(str(self._filepath))
        candidates = [*root.glob(f"*/.{name}.*{_PARTIAL}"), *root.parent.glob(f".{name}.*{_PARTIAL}")]
        for path in candidates:
            if _writer_alive(path):
                continue
            try:
                _remove(path)
                if path.parent != root.parent and not any(path.parent.iterdir()):
                    path.parent.rmdir()  # the empty version folder of the interrupted save
            except OSError:
                pass

    # --- integrity -----------------------------------------------------------------------------

    def damaged(self) -> str | None:
        """Why the version that would be loaded is damaged, or None (intact, or nothing to load)."""
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except (DatasetError, VersionNotFoundError):
            return None
        if not self._fs.exists(path) or self._fs.isdir(path):
            return None
        try:
            with self._fs.open(path, mode="rb") as handle:
                return _problem(self._integrity, handle, path)
        except OSError as error:
            return f"cannot be read ({error})"

    def load(self) -> Any:
        problem = self.damaged()
        if problem:
            raise CorruptDatasetError(self.corrupt_message(problem))
        return _unwrapped(super().load)(self)

    def corrupt_message(self, problem: str) -> str:
        """Names the damaged file, what is wrong, what to delete and the command that rebuilds it."""
        path = get_filepath_str(self._get_load_path(), self._protocol)
        folder = str(PurePosixPath(path).parent) if self._version else path
        rebuild = (f"rebuild it with: {self.rebuild_command}" if self.rebuild_command
                   else "rebuild it by re-running the pipeline that writes it")
        return (f"{path} is damaged: {problem}. It was not loaded. Delete {folder} (the previous version is "
                f"then loaded again), or {rebuild} (`kedro run --only-missing-outputs` treats a damaged "
                "version as missing).")

    def present(self) -> bool:
        """Whether the version that would be loaded is there, intact or not."""
        try:
            return super()._exists()
        except (DatasetError, VersionNotFoundError):
            return False

    def _exists(self) -> bool:
        return self.present() and self.damaged() is None


class AtomicPickleDataset(AtomicSaveMixin, PickleDataset):
    """`kedro_datasets.pickle.PickleDataset` with atomic saves and checked loads."""

    _integrity = "pickle"


class AtomicCSVDataset(AtomicSaveMixin, CSVDataset):
    """`kedro_datasets.pandas.CSVDataset` with atomic saves and checked loads."""

    _integrity = "csv"


class AtomicParquetDataset(AtomicSaveMixin, ParquetDataset):
    """`kedro_datasets.pandas.ParquetDataset` with atomic saves and checked loads."""

    _integrity = "parquet"


class AtomicJSONDataset(AtomicSaveMixin, JSONDataset):
    """`kedro_datasets.json.JSONDataset` with atomic saves and checked loads."""

    _integrity = "json"


class AtomicTextDataset(AtomicSaveMixin, TextDataset):
    """`kedro_datasets.text.TextDataset` with atomic saves (any text is accepted on load)."""


class AtomicMatplotlibDataset(AtomicSaveMixin, MatplotlibDataset):
    """`kedro_datasets.matplotlib.MatplotlibDataset` with atomic saves (figures are not loaded)."""

    _integrity = "figure"


def _unwrapped(method):
    """The function Kedro's load/save wrapper decorates (versions and errors are handled by the caller's)."""
    function = getattr(method, "__wrapped__", None)
    return function if function is not None else (lambda _self, *args: method(*args))


def _problem(kind: str, handle, path: str) -> str | None:
    """What is wrong with the file open in ``handle`` (binary), or None when it is intact."""
    if kind == "pickle":
        return _pickle_problem(handle)
    if kind == "json":
        try:
            json.load(handle)
        except (ValueError, UnicodeDecodeError) as error:
            return f"not valid JSON ({error})"
        return None
    data_end = _tail(handle, 12)
    handle.seek(0)
    start = handle.read(4)
    problems = {
        "the file is empty": not data_end,
        "it does not end with a line break (truncated CSV)": kind == "csv" and not data_end.endswith((b"\n", b"\r")),
        "no Parquet header and footer (truncated Parquet file)": kind == "parquet" and not (
            start == b"PAR1" and data_end.endswith(b"PAR1")),
        "no PNG end chunk (truncated image)": kind == "figure" and path.lower().endswith(".png")
        and not data_end.endswith(_PNG_END),
    }
    return next((problem for problem, found in problems.items() if found), None)


def _pickle_problem(handle) -> str | None:
    """Walks the pickle's opcodes to STOP without building any object (nothing is executed)."""
    last = None
    try:
        for opcode, _argument, _position in pickletools.genops(handle):
            last = opcode.name
    except ValueError as error:
        return f"truncated or not a pickle ({error})"
    if last != "STOP":
        return "truncated pickle (no STOP opcode)"
    return None


def _tail(handle, n: int) -> bytes:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - n))
    return handle.read()


def _writer_alive(path: Path) -> bool:
    """Whether the process named in ``.<name>.<pid>-<token>.partial`` still runs on this machine."""
    try:
        pid = int(path.name[: -len(_PARTIAL)].rsplit(".", 1)[-1].split("-")[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync_tree(path: Path) -> None:
    """Flushes a written file (or every file of a written folder) to disk before it is renamed."""
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
