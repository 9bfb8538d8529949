"""The run folder (docs/runs.md): its lock, ``run.json``, the results table, resume and ``--force``.

Every output file is written to a hidden temporary in the folder and renamed into place, so it is
whole or absent; a batch's rows are appended to ``results.jsonl`` only after its files are in
place, in one write, flushed and ``fsync``ed. A run killed at any point therefore leaves whole
files and whole rows (a torn last line at most), and ``open_run`` on the same folder finds which
images are complete and lets the run do only the rest.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from onnxcam.runtime.files import STAGING_PREFIX, OutputError, make_folder, remove_folders, usual_permissions
from onnxcam.runtime.contract import shown

TABLE = "results.jsonl"
SETTINGS = "run.json"
LOCK = ".onnxcam.lock"
REPORT = "report.html"
FORMAT = 1
PARTIAL = ".partial"  # in the name of a file being written: ``.<name>.partial<random><suffix>``


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def write_failed(path: Path, error: OSError) -> OutputError:
    """The one line for a write that failed midway: what is kept, and how to finish."""
    return OutputError(f"{shown(path)}: writing failed ({_reason(error)}); the images finished before it are kept; "
                       "check the free disk space and the folder's permissions, then run the same command again "
                       "to finish")


@dataclass
class RunFolder:
    """An open run folder, locked by this process. ``done``: (image, name) of the images whose rows
    are all in the table already (skip them); ``rows``: those rows, as read."""

    path: Path
    created: list[Path]
    lock: IO
    table: IO
    done: set[tuple[str, str]] = field(default_factory=set)
    rows: list[dict] = field(default_factory=list)
    fresh: bool = False  # whether this run made the folder's run.json (no earlier run here)
    appended: bool = False  # whether this run has appended rows
    pending: set[str] = field(default_factory=set)  # files in place whose rows are not yet in the table
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def write(self, name: str, write: Callable[[Path], None]) -> str:
        """``put_file`` into this folder, the file then pending until its row is appended. Returns ``name``."""
        put_file(self.path, name, write)
        with self._guard:
            self.pending.add(name)
        return name

    def append(self, rows: list[dict]) -> None:
        """Rows to the results table: one write, flushed and fsynced (after their files are in place)."""
        if not rows:
            return
        try:
            self.table.write("".join(json.dumps(row) + "\n" for row in rows))
            self.table.flush()
            os.fsync(self.table.fileno())
        except OSError as error:
            raise write_failed(self.path / TABLE, error) from None
        self.appended = True
        with self._guard:
            self.pending -= {row.get(column) for row in rows for column in ("overlay", "map")}

    def close(self, failed: bool = False) -> None:
        """Release the lock. A run that failed (not one killed: resume deals with that) removes the files of
        images it had not finished, so the folder holds whole images only; one that finished none in a folder
        of its own leaves nothing."""
        self.table.close()
        if failed:
            for name in self.pending:
                (self.path / name).unlink(missing_ok=True)
        quiet_failure = failed and not self.appended and self.fresh
        if quiet_failure:
            for name in (TABLE, SETTINGS):
                (self.path / name).unlink(missing_ok=True)
        (self.path / LOCK).unlink(missing_ok=True)
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()
        if quiet_failure:
            remove_folders(self.created)


def put_file(folder: Path, name: str, write: Callable[[Path], None]) -> None:
    """``write(temporary)``, then the temporary renamed to ``folder/name``: whole or absent. The temporary,
    ``.<name>.partial<process>-<thread><suffix>``, is unique to the calling thread of this process (a
    folder's lock keeps other runs out; a Ray actor is a process of its own) and is made by ``write`` as
    any new file is, with the usual permissions; ``open_run`` removes those a killed run left."""
    final = folder / name
    temporary = folder / f".{final.name}{PARTIAL}{os.getpid()}-{threading.get_ident()}{final.suffix}"
    try:
        write(temporary)
        os.replace(temporary, final)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_failed(final, error) from None
        raise


def open_run(folder: Path, settings: dict, rows_per_image: int, force: bool = False) -> RunFolder:
    """Lock ``folder`` (created if missing) for this run and read what an earlier run left.

    settings: the run's ``run.json`` (the settings that decide its outputs); a folder holding a run
    with other settings is refused unless ``force``, which removes that run's table, settings,
    report and output files first. rows_per_image: rows a complete image has (methods × targets);
    rows of incomplete images (a run killed mid-write) are dropped from the table, so those images
    are done again and have their rows once.
    """
    created = make_folder(folder)
    try:
        lock = _lock(folder)
    except BaseException:
        remove_folders(created)
        raise
    try:
        _remove_leftovers(folder)
        if force:
            _start_over(folder)
        _check_settings(folder, settings)
        rows, done = _complete_rows(folder, rows_per_image)
        fresh = not (folder / SETTINGS).exists()
        if fresh:
            _replace_text(folder / SETTINGS, json.dumps({"format": FORMAT, **settings}, indent=1) + "\n")
        table = open(folder / TABLE, "a", encoding="utf-8")
    except BaseException:
        (folder / LOCK).unlink(missing_ok=True)
        lock.close()
        remove_folders(created)
        raise
    return RunFolder(folder, created, lock, table, done, rows, fresh)


def _lock(folder: Path) -> IO:
    """An exclusive flock on ``folder/.onnxcam.lock`` (holding this process's id), or an OutputError
    naming the run that holds it. The kernel drops a dead process's lock: none is ever stale."""
    path = folder / LOCK
    for _ in range(10):
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as error:
            raise OutputError(f"{shown(folder)}: cannot write in this folder ({_reason(error)}); "
                              "choose a folder you can write to") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise OutputError(f"{shown(folder)}: another onnxcam run (process {holder}) is writing into this "
                              "folder; wait for it to finish, or choose another --out") from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file the previous holder unlinked as it released it
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            return handle
        handle.close()
    raise OutputError(f"{shown(folder)}: could not lock this folder; try again")


def _remove_leftovers(folder: Path) -> None:
    """Temporaries of a run that was killed while writing (``.<name>.partial…``), and staging folders."""
    for path in folder.iterdir():
        if path.name.startswith(".") and PARTIAL in path.name and path.is_file():
            path.unlink(missing_ok=True)
        elif path.name.startswith(STAGING_PREFIX) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def read_rows(path: Path) -> list[dict]:
    """The rows of a results table; a torn last line (a crash mid-write: no newline) is left out."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")[:-1]  # the part after the last newline is torn, or empty
    rows = []
    for line in lines:
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _complete_rows(folder: Path, rows_per_image: int) -> tuple[list[dict], set[tuple[str, str]]]:
    """The table's rows of complete images, rewritten without the others if there are any."""
    path = folder / TABLE
    rows = read_rows(path)
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row.get("image"), row.get("name"))
        counts[key] = counts.get(key, 0) + 1
    done = {key for key, count in counts.items() if count == rows_per_image}
    kept = [row for row in rows if (row.get("image"), row.get("name")) in done]
    if path.exists() and (len(kept) != len(rows) or not path.read_bytes().endswith(b"\n") and path.stat().st_size):
        _replace_text(path, "".join(json.dumps(row) + "\n" for row in kept))
    return kept, done


def _replace_text(path: Path, text: str) -> None:
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL}", dir=path.parent)
    except OSError as error:
        raise OutputError(f"{shown(path.parent)}: cannot write in this folder ({_reason(error)}); "
                          "choose a folder you can write to") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        usual_permissions(Path(temporary))
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise write_failed(path, error) from None


def _check_settings(folder: Path, settings: dict) -> None:
    path = folder / SETTINGS
    if not path.exists():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict):
        raise OutputError(f"{shown(path)}: not a readable run.json; run with --force to start this folder over, "
                          "or choose another --out")
    earlier.pop("format", None)
    changed = sorted(key for key in {*settings, *earlier} if settings.get(key) != earlier.get(key))
    if changed:
        what = ", ".join(f"{key}: {earlier.get(key)!r} → {settings.get(key)!r}" for key in changed[:3])
        raise OutputError(f"{shown(folder)}: holds a run with other settings ({what}); run with --force to start "
                          "it over, or choose another --out")


def _start_over(folder: Path) -> None:
    """``--force``: remove an earlier run's outputs (the files its rows name), table, settings and report."""
    for row in read_rows(folder / TABLE):
        for column in ("overlay", "map"):
            name = row.get(column)
            if isinstance(name, str) and name and "/" not in name and not name.startswith("."):
                (folder / name).unlink(missing_ok=True)
    for name in (TABLE, SETTINGS, REPORT):
        (folder / name).unlink(missing_ok=True)
