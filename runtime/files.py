"""Output files, whole or not at all (README "Errors"). ``explain``'s run folder, which keeps what a run
finished, builds on these: ``runtime/run/folder.py``.

A command's files are written into a hidden staging folder (``.onnxcam-<random>``) beside
their destination and moved into place only when the whole run has succeeded; on an error
or an interrupt the staging folder, and any folder the run created, are removed. Names are
unique per run (``os.replace`` of a unique temporary), so concurrent runs into one folder
never meet on a shared temporary name, and hidden names are never read back as input images.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from onnxcam.runtime.contract import shown

STAGING_PREFIX = ".onnxcam-"


class OutputError(ValueError):
    """An output path that cannot be written (what was wrong; what to do)."""


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def write_failed(path: Path, error: OSError) -> OutputError:
    """The one line for a write that failed midway (a full disk, a folder that went away)."""
    return OutputError(f"{shown(path)}: writing failed ({_reason(error)}); nothing of this run was kept; "
                       "check the free disk space and the folder's permissions")


def _umask() -> int:
    """The process's umask, read once at import (setting it to read it back is not safe once threads write
    files: a file created in between would get mode 0666)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def usual_permissions(path: Path) -> None:
    """Give ``path`` (a ``mkstemp`` temporary: mode 0600) the mode a plain ``open`` gives a new file, 0666
    less the umask, before it is renamed into place: outputs are readable as the user's other files are."""
    os.chmod(path, 0o666 & ~UMASK)


def make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns the folders created (outermost first), or an
    ``OutputError`` if a parent is a file or not writable."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()][::-1]
    for path in [folder, *folder.parents]:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{shown(folder)}: {shown(path)} is a file, not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        remove_folders(missing)
        raise OutputError(f"{shown(folder)}: cannot create this folder ({_reason(error)}); "
                          "choose a folder you can write to") from None
    return missing


def remove_folders(created: list[Path]) -> None:
    """Remove the folders a run created, innermost first, where they are still empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


@dataclass
class Staged:
    """One run's output files: ``path(name)`` gives where to write each, ``commit`` moves them all
    into ``folder``, ``discard`` removes them. Use as ``with staged(folder) as out: …``."""

    folder: Path
    staging: Path
    created: list[Path]
    names: dict[str, str] = field(default_factory=dict)  # case-folded → as given

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (refuses a name this run already used: it would
        overwrite an earlier output, also on case-insensitive file systems)."""
        key = name.casefold()
        if key in self.names:
            raise OutputError(f"two outputs of this run are both named {shown(name)!r}; rename one of the inputs")
        self.names[key] = name
        return self.staging / name

    def write(self, name: str, write: Callable[[Path], None]) -> None:
        """``write(path)`` for the output file ``name`` (``path`` is in the staging folder); a failure is one
        ``OutputError`` naming the file where it was meant to go."""
        target = self.path(name)
        try:
            write(target)
        except OSError as error:
            raise write_failed(self.folder / name, error) from None

    def commit(self) -> list[Path]:
        """Move every staged file into ``folder``; returns their final paths."""
        final = []
        for name in self.names.values():
            source = self.staging / name
            if source.exists():
                os.replace(source, self.folder / name)
                final.append(self.folder / name)
        shutil.rmtree(self.staging, ignore_errors=True)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        remove_folders(self.created)

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def staged(folder: Path) -> Staged:
    """A staging folder inside ``folder`` (created, with its parents, if missing), or an
    ``OutputError`` before any work if ``folder`` cannot be written."""
    created = make_folder(folder)
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    except OSError as error:
        remove_folders(created)
        raise OutputError(f"{shown(folder)}: cannot write in this folder ({_reason(error)}); "
                          "choose a folder you can write to") from None
    return Staged(folder, staging, created)


def check_writable(path: Path) -> None:
    """An ``OutputError`` now, before any work, if the file ``path`` could not be written later."""
    if path.is_dir():
        raise OutputError(f"{shown(path)}: is a folder; name a file to write")
    created = make_folder(path.parent)
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as error:
        raise OutputError(f"{shown(path)}: cannot write in {shown(path.parent)} ({_reason(error)}); "
                          "choose a folder you can write to") from None
    else:
        os.close(handle)
        os.unlink(probe)
    finally:
        remove_folders(created)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` then rename it to ``path``: the file is there whole, or not at all."""
    created = make_folder(path.parent)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix,
                                             dir=path.parent)
    except OSError as error:
        remove_folders(created)
        raise OutputError(f"{shown(path)}: cannot write in {shown(path.parent)} ({_reason(error)}); "
                          "choose a folder you can write to") from None
    os.close(handle)
    try:
        write(Path(temporary))
        usual_permissions(Path(temporary))
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        remove_folders(created)
        if isinstance(error, OSError):
            raise write_failed(path, error) from None
        raise
