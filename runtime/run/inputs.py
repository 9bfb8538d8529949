"""The images of a run (docs/runs.md, "Inputs"): files, folders searched recursively, glob patterns,
a file list, or a CSV/JSONL manifest with a per-image target.

An input is an ``Item``: the image file and, from a manifest, the text of its own target (a class
id or label) or None for the run's target. Paths in a list or a manifest are relative to the file
that names them.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from onnxcam.runtime.image import IMAGE_SUFFIXES, ImageError, is_image_name, shown

GLOB_CHARACTERS = frozenset("*?[")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Item:
    """One image of a run: its file, its own target's text (a manifest's ``target`` column), and its
    ``(width, height)`` once a check has read its header."""

    path: Path
    target: str | None = None
    size: tuple[int, int] | None = None


def collect(inputs: Sequence[str | Path] = (), files_from: Path | None = None,
            manifest: Path | None = None) -> list[Item]:
    """Every image the run names, once each (the first naming wins), in the order named: folders
    and globs sorted. Raises an ``ImageError`` for a name that matches nothing, or a bad list."""
    items: list[Item] = []
    for entry in inputs:
        items += [Item(p) for p in expand(entry)]
    if files_from is not None:
        items += [Item(p) for p in read_list(files_from)]
    if manifest is not None:
        items += read_manifest(manifest)
    if not items:
        named = ", ".join(shown(i) for i in [*inputs, *filter(None, (files_from, manifest))])
        raise ImageError(f"no image files found in {named or 'nothing'}; name images "
                         f"({', '.join(IMAGE_SUFFIXES)}), folders, globs, --files-from or --manifest")
    first: dict[Path, Item] = {}
    for item in items:
        first.setdefault(item.path, item)
    return list(first.values())


def expand(entry: str | Path) -> list[Path]:
    """One command-line input: a file, a folder (its images, recursively, hidden names skipped) or
    a glob pattern (``**`` crosses folders)."""
    path = Path(entry)
    if path.is_dir():
        return folder_images(path)
    if path.exists():
        return [path]
    if GLOB_CHARACTERS & set(str(entry)):
        matches = sorted(Path(p) for p in glob.glob(str(entry), recursive=True))
        found = [p for p in matches if p.is_file() and is_image_name(p)]
        found += [q for p in matches if p.is_dir() for q in folder_images(p)]
        if not found:
            raise ImageError(f"{shown(entry)}: no image files match this pattern; check the pattern")
        return found
    raise ImageError(f"{shown(path)}: no such file or folder; check the path")


def folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` and its subfolders, sorted; hidden files and folders (``.name``:
    onnxcam's own unfinished outputs among others) are skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative[:-1]):
            continue
        if is_image_name(path) and path.is_file():
            found.append(path)
    return found


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ImageError(f"{shown(path)}: cannot read this {what} ({reason}); check the path") from None


def read_list(path: Path) -> list[Path]:
    """A file list: one image path a line (relative to the list's folder); blank lines and lines
    starting with ``#`` are skipped."""
    lines = [line.strip() for line in _text(path, "file list").splitlines()]
    return [path.parent / line for line in lines if line and not line.startswith("#")]


def read_manifest(path: Path) -> list[Item]:
    """A CSV (header row) or JSONL (one object a line) manifest: a ``path`` column, relative to the
    manifest's folder, and an optional ``target`` column (empty or null: the run's target)."""
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ImageError(f"{shown(path)}: a manifest is a .csv or .jsonl file; rename it or convert it")
    text = _text(path, "manifest")
    if path.suffix.lower() == ".csv":
        records = list(csv.DictReader(text.splitlines()))
        if records and "path" not in records[0]:
            raise ImageError(f"{shown(path)}: no 'path' column in its header; add one (and optionally 'target')")
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "path" not in record:
                raise ImageError(f"{shown(path)}: line {number} is not a JSON object with a 'path'; fix that line")
            records.append(record)
    items = []
    for number, record in enumerate(records, start=1):
        name = str(record.get("path") or "").strip()
        if not name:
            raise ImageError(f"{shown(path)}: row {number} has an empty path; fill it in or remove the row")
        target = record.get("target")
        target = None if target is None or str(target).strip() == "" else str(target).strip()
        items.append(Item(path.parent / name, target))
    return items


def output_stems(paths: list[Path]) -> list[str]:
    """A distinct output name per image (case-insensitively): the file stem; where stems collide,
    the file name (``x.png``, ``x.jpg``); where those collide in different folders, the folders
    that tell them apart (``a_x.png``, ``b_x.png``); as a last resort a counter (``x.png-2``)."""
    def clashes(names: list[str]) -> list[list[int]]:
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(names):
            groups.setdefault(name.casefold(), []).append(index)
        return [group for group in groups.values() if len(group) > 1]

    names = [p.stem for p in paths]
    for group in clashes(names):
        for i in group:
            names[i] = paths[i].name
    folders = [p.resolve().parent.parts[1:] for p in paths]
    for group in clashes(names):
        for depth in range(1, 1 + max(len(folders[i]) for i in group)):
            prefixes = [folders[i][-depth:] for i in group]
            if len(set(prefixes)) == len(group):
                for i, prefix in zip(group, prefixes):
                    names[i] = "_".join((*prefix, names[i]))
                break
    for group in clashes(names):
        for count, i in enumerate(group[1:], start=2):
            names[i] = f"{names[i]}-{count}"
    return names
