"""The Deepfake Detection Challenge's full set.

    dfdc_train_part_N/metadata.json   {"x.mp4": {"label": "FAKE", "split": "train", "original": "y.mp4"}, ...}
    dfdc_train_part_N/x.mp4           beside it (REAL rows have no "original")
    <test folder>/labels.csv          filename,label (1 fake, 0 real); the videos in that folder or below it

The parts may also sit one folder down (`train/dfdc_train_part_N`, as DeepfakeBench keeps them). The test folder
is any folder (the root's, or one below it) that is not a training part and holds a labels.csv. A fake goes with
its original, so the build's train/val split of the parts never parts them.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import UsageError
from ingest.layouts.common import Found, LayoutOptions, Tree, file_name, load_json, missing, row, rows_table

NAME = "dfdc"
HELP = "DFDC: dfdc_train_part_N/ with metadata.json beside the videos; a test folder with labels.csv"
OPTIONS: tuple[str, ...] = ()
PART = re.compile(r"^dfdc_train_part_(\d+)$")
METADATA = "metadata.json"
LABELS = "labels.csv"
LABEL_OF = {"REAL": REAL, "FAKE": FAKE}


def _folders(root: Path) -> list[str]:
    """The root's folders, and the training parts one folder further down, relative to the root."""
    found = []
    for entry in os.scandir(root):
        if entry.is_dir():
            found.append(entry.name)
            if not PART.match(entry.name):  # a part holds thousands of videos and no part
                found += [f"{entry.name}/{e.name}" for e in os.scandir(entry.path) if e.is_dir() and PART.match(e.name)]
    return found


def _parts(folders: list[str]) -> list[str]:
    number = lambda folder: int(PART.match(file_name(folder)).group(1))  # noqa: E731
    return sorted((f for f in folders if PART.match(file_name(f))), key=number)


def matches(root: Path) -> bool:
    return bool(_parts(_folders(root)))


def read(tree: Tree, options: LayoutOptions) -> Found:
    root = tree.root
    folders = _folders(root)
    rows: list[tuple] = []
    unlisted: list[str] = []
    parts = _parts(folders)
    for part in parts:
        _read_part(tree, part, rows, unlisted)
    for folder in folders:
        if (
            folder not in parts
            and not any(folder.startswith(f"{p}/") for p in parts)
            and ((root / folder / LABELS).is_file())
        ):
            _read_test(tree, folder, rows, unlisted)
    return Found(rows_table(rows), "folder", unlisted=sorted(unlisted))


def _read_part(tree: Tree, part: str, rows: list[tuple], unlisted: list[str]) -> None:
    metadata_path = tree.root / part / METADATA
    if not metadata_path.is_file():
        raise UsageError(f"{tree.root / part}: no {METADATA} beside its videos")
    metadata = load_json(metadata_path)
    kind = file_name(part)
    on_disk = {file_name(p): p for p in tree.videos(part, recursive=False)}
    for name, entry in metadata.items():
        label = LABEL_OF.get(str(entry.get("label", "")).upper()) if isinstance(entry, dict) else None
        if label is None:
            raise UsageError(f"{metadata_path}: {name}: label must be REAL or FAKE, not {entry!r}")
        group = entry.get("original") or name if label == FAKE else name
        path = on_disk.pop(name, None)
        if path is None:
            rows.append(row(f"{part}/{name}", label, group, kind=kind, error=missing(f"{part}/{METADATA}")))
        else:
            rows.append(row(path, label, group, kind=kind))
    unlisted += on_disk.values()


def _read_test(tree: Tree, folder: str, rows: list[tuple], unlisted: list[str]) -> None:
    labels_path = tree.root / folder / LABELS
    on_disk = {file_name(p): p for p in tree.videos(folder)}
    kind = folder
    with labels_path.open(newline="") as file:
        reader = csv.DictReader(file)
        if not {"filename", "label"} <= set(reader.fieldnames or ()):
            raise UsageError(f"{labels_path}: needs the columns filename,label; has {reader.fieldnames}")
        for number, entry in enumerate(reader, start=2):
            name, label = entry["filename"].strip(), entry["label"].strip()
            if label not in ("0", "1"):
                raise UsageError(f"{labels_path}:{number}: label must be 1 (fake) or 0 (real), not {label!r}")
            label = FAKE if label == "1" else REAL
            path = on_disk.pop(name, None)
            test = SPLIT_CODES["test"]
            if path is None:
                rows.append(row(f"{folder}/{name}", label, name, test, kind, missing(f"{folder}/{LABELS}")))
            else:
                rows.append(row(path, label, name, test, kind))
    unlisted += on_disk.values()
