"""What the layouts share: their options, what reading a root gives, and a fast walk for video files."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from ingest.discover import NO_SPLIT, VIDEO_SUFFIXES, UsageError

COMPRESSIONS = ("raw", "c23", "c40")
FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
ALL_FFPP_METHODS = (*FFPP_METHODS, "FaceShifter")
COLUMNS = ["path", "label", "split", "group", "kind", "error"]
GROUPED_TEST_FRACTION = 0.2  # `--grouped-split`'s share of test videos


@dataclass(frozen=True)
class LayoutOptions:
    """Choices among a data set's files: each layout reads those it knows (`Layout.options` names them)."""

    compression: str = "c23"  # FF++, DFD: raw, c23 or c40
    methods: tuple[str, ...] = FFPP_METHODS  # FF++: the manipulation methods kept
    splits: Path | None = None  # FF++: folder of train.json, val.json, test.json (default ROOT/splits)
    grouped_split: bool = False  # DFD, UADFV: a grouped train/val/test split instead of all test
    test_list: Path | None = None  # Celeb-DF (and the seed layout): the test list (default the root's own)

    def shown(self, names: tuple[str, ...]) -> dict:
        """The options `names` as JSON values: how the first line and the store's `dataset` attribute give them."""
        values = {}
        for name in names:
            value = getattr(self, name)
            values[name] = (
                ",".join(value) if isinstance(value, tuple) else str(value) if isinstance(value, Path) else value
            )
        return values


@dataclass
class Found:
    """A root read by its layout.

    `table` has one row per video: path (relative, `/`), label, split (-1 where the build splits it), group (no
    group may be in two splits), kind (the method or part, "" where the layout has none) and error ("", or why a
    listed video is a failed row without decoding: it is missing).
    """

    table: pd.DataFrame
    split_source: str  # official, grouped, list, folder, metadata, all-test, manifest
    notes: list[str] = field(default_factory=list)  # lines worth saying (official split files not found, ...)
    left_out: Counter = field(default_factory=Counter)  # videos not stored by choice: what -> how many
    unlisted: list[str] = field(default_factory=list)  # videos on no list of the data set's own files: not stored
    test_fraction: float = 0.0  # the share of the split-free videos to split off as test, by group
    loops: list[str] = field(default_factory=list)  # folders not walked again (`Tree.loops`): a link that loops

    @property
    def missing(self) -> pd.DataFrame:
        return self.table[self.table["error"] != ""]

    def remarks(self) -> list[str]:
        """The notes, and one line for each kind of video left out or missing, with an example."""
        lines = list(self.notes)
        if self.left_out:
            what = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items()))
            lines.append(f"left out, as chosen: {what}")
        if self.unlisted:
            lines.append(
                f"{len(self.unlisted)} videos are on no list of the data set's files and are not stored, "
                f"e.g. {self.unlisted[0]}"
            )
        if self.loops:
            one = len(self.loops) == 1
            lines.append(
                f"{len(self.loops)} folder{'' if one else 's'} lead{'s' if one else ''} back to one already walked (a "
                f"link that loops) and {'was' if one else 'were'} not walked again, e.g. {self.loops[0]}"
            )
        absent = self.missing
        if len(absent):
            first = absent.iloc[0]
            lines.append(
                f"{len(absent)} listed videos are missing and become failed rows, e.g. {first['path']} "
                f"({first['error']})"
            )
        return lines


def rows_table(rows: list[tuple]) -> pd.DataFrame:
    """`rows` of (path, label, split, group, kind, error) as a table sorted by path."""
    table = pd.DataFrame(rows, columns=COLUMNS)
    table = table.astype({"label": "int64", "split": "int64"})
    return table.sort_values("path", ignore_index=True)


def row(path: str, label: int, group: str, split: int = NO_SPLIT, kind: str = "", error: str = "") -> tuple:
    return (path, label, split, group, kind, error)


def is_video_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in VIDEO_SUFFIXES


def file_name(path: str) -> str:
    """The last part of a `/` path (PurePosixPath(path).name, without building a path object per video)."""
    return path.rpartition("/")[2]


@dataclass
class Tree:
    """A data root, walked for video files. A walk enters each real folder once, known by (st_dev, st_ino): a
    folder link back to a parent (`loop/back -> ../..`, common on shared filesystems) was otherwise walked round
    until the path was too long. `loops` keeps each folder a walk did not enter again, as `FOLDER -> TARGET`.
    Links to video files are taken as any file (the bench builds folders of linked videos)."""

    root: Path
    loops: list[str] = field(default_factory=list)

    def videos(self, folder: str, recursive: bool = True) -> list[str]:
        """The video files under `root / folder` (below it too, where `recursive`), as paths relative to `root`.

        `os.scandir` gives each entry's type from the directory listing itself: no stat per file, which on a tree
        of a hundred thousand videos is the difference between a second and a minute; only folders are stat'ed.
        """
        walked = self._parents(folder)
        found: list[str] = []
        pending = [folder]
        while pending:
            relative = pending.pop()
            try:
                entries = list(os.scandir(self.root / relative))
            except (FileNotFoundError, NotADirectoryError):
                continue
            prefix = f"{relative}/" if relative else ""
            folders = []
            for entry in entries:
                if entry.is_dir():
                    folders.append(entry)
                elif is_video_name(entry.name) and entry.is_file():
                    found.append(prefix + entry.name)
            if recursive:
                pending += reversed(self._first_visits(folders, walked, prefix))  # the first is walked first
        return found

    def _parents(self, folder: str) -> set[tuple[int, int]]:
        """The keys of the root and of each folder down to `folder`: a link to any of them loops."""
        keys, path = set(), self.root
        for part in ("", *PurePosixPath(folder).parts):
            path = path / part
            try:
                keys.add(_key(path.stat()))
            except OSError:
                break
        return keys

    def _first_visits(self, folders: list[os.DirEntry], walked: set[tuple[int, int]], prefix: str) -> list[str]:
        """The `folders` not walked yet, now marked walked, by name, real folders before links, so that a folder
        reached both ways is walked where it really is; the others are kept in `loops`."""
        first = []
        for entry in sorted(folders, key=lambda entry: (entry.is_symlink(), entry.name)):
            key = _key(entry.stat())
            if key in walked:
                self.loops.append(f"{prefix}{entry.name}" + (f" -> {os.readlink(entry)}" if entry.is_symlink() else ""))
            else:
                walked.add(key)
                first.append(prefix + entry.name)
        return first


def _key(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def subfolders(folder: Path) -> dict[str, str]:
    """The folders in `folder`, name -> lower-cased name (none where `folder` is not one)."""
    try:
        return {entry.name: entry.name.lower() for entry in os.scandir(folder) if entry.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def load_json(path: Path):
    """A data set's JSON file; one that does not parse is a usage error naming the file and the line."""
    try:
        with path.open() as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error


def missing(listed_in: str) -> str:
    """The error of a listed video that is not there."""
    return f"listed in {listed_in} but missing"
