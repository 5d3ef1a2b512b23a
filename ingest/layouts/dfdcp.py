"""The DFDC preview set.

    dataset.json                                  {"method_A/643049/643049_A/1955797.mp4":
                                                    {"label": "fake", "set": "train", ...}, ...}
    method_A/<src>/<src>_A/<id>.mp4, method_B/...  fakes
    original_videos/<src>/<id>.mp4                 reals

`set` test is test; val is taken from train by group, the source's folder id <src>.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import NO_SPLIT, UsageError
from ingest.layouts.common import Found, LayoutOptions, Tree, load_json, missing, row, rows_table

NAME = "dfdcp"
HELP = "DFDC preview: method_A/, method_B/, original_videos/ and dataset.json"
OPTIONS: tuple[str, ...] = ()
FOLDERS = ("method_A", "method_B", "original_videos")
DATASET = "dataset.json"
LABEL_OF = {"real": REAL, "fake": FAKE}
SET_OF = {"train": NO_SPLIT, "test": SPLIT_CODES["test"]}


def matches(root: Path) -> bool:
    return (root / DATASET).is_file() and any((root / f).is_dir() for f in FOLDERS)


def source(path: str) -> str:
    """The source's folder id: `method_A/643049/643049_A/x.mp4` and `original_videos/643049/y.mp4` -> 643049."""
    parts = PurePosixPath(path).parts
    return parts[1] if len(parts) > 2 else path


def read(tree: Tree, options: LayoutOptions) -> Found:
    root = tree.root
    listed = load_json(root / DATASET)
    on_disk = {p for folder in FOLDERS for p in tree.videos(folder)}
    rows = []
    for path, entry in listed.items():
        label = LABEL_OF.get(str(entry.get("label", "")).lower()) if isinstance(entry, dict) else None
        split = SET_OF.get(str(entry.get("set", "")).lower()) if isinstance(entry, dict) else None
        if label is None or split is None:
            raise UsageError(f"{root / DATASET}: {path}: needs label real/fake and set train/test, not {entry!r}")
        path = PurePosixPath(path).as_posix()
        error = "" if path in on_disk else missing(DATASET)
        on_disk.discard(path)
        rows.append(row(path, label, source(path), split, PurePosixPath(path).parts[0], error))
    return Found(rows_table(rows), "metadata", unlisted=sorted(on_disk))
