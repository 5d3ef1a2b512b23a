"""What every layout builds on: video files, usage errors, the manifest and Celeb-DF's test list."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cache.exits import BadInput
from cache.schema import FAKE, REAL, SPLIT_CODES, UNKNOWN

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
TEST_LIST = "List_of_testing_videos.txt"
CELEB_ID = re.compile(r"^(id\d+)_", re.IGNORECASE)
NO_SPLIT = -1


class UsageError(BadInput):
    """Bad input from the command line: one line for the user, exit status 2, nothing written."""


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def source_group(relative_path: str) -> str:
    """Celeb-DF names start with the source identity (`id3_0001`, `id3_id7_0001`: `id3`)."""
    stem = Path(relative_path).name
    match = CELEB_ID.match(stem)
    return match.group(1).lower() if match else relative_path


def read_manifest(data_root: Path, manifest: Path) -> pd.DataFrame:
    """A CSV with columns path,label[,split][,group]: every listed file must exist."""
    if not manifest.is_file():
        raise UsageError(f"--manifest {manifest}: no such file")
    table = pd.read_csv(manifest, dtype={"path": str, "split": str, "group": str})
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise UsageError(f"--manifest {manifest}: needs columns path,label[,split][,group]; lacks {sorted(missing)}")
    table["path"] = [_relative(data_root, p) for p in table["path"]]
    bad = ~table["label"].isin([REAL, FAKE, UNKNOWN])
    if bad.any():
        raise UsageError(f"--manifest {manifest}: label must be 0, 1 or -1, not {table['label'][bad].iloc[0]!r}")
    table["label"] = table["label"].astype(int)
    split = table["split"].fillna("") if "split" in table else pd.Series("", index=table.index)
    unknown = ~split.isin(["", *SPLIT_CODES])
    if unknown.any():
        raise UsageError(f"--manifest {manifest}: split must be train, val or test, not {split[unknown].iloc[0]!r}")
    table["split"] = [SPLIT_CODES.get(s, NO_SPLIT) for s in split]
    group = table["group"] if "group" in table else pd.Series(pd.NA, index=table.index)
    table["group"] = [g if isinstance(g, str) and g else p for g, p in zip(group, table["path"], strict=True)]
    absent = [p for p in table["path"] if not (data_root / p).is_file()]
    if absent:
        raise UsageError(f"--manifest {manifest}: {len(absent)} listed files are missing, e.g. {absent[0]}")
    return table[["path", "label", "split", "group"]].drop_duplicates("path")


def _relative(data_root: Path, path: str) -> str:
    candidate = Path(path)
    if candidate.is_absolute():
        try:
            candidate = candidate.relative_to(data_root)
        except ValueError as error:
            raise UsageError(f"manifest path {path} is outside --data-root {data_root}") from error
    return candidate.as_posix()


def read_test_list(test_list: Path) -> dict[str, int]:
    """Celeb-DF's list: `<label> <path>` lines with 1 = real, 0 = fake, the opposite of our labels."""
    if not test_list.is_file():
        raise UsageError(f"--test-list {test_list}: no such file")
    entries = {}
    for number, line in enumerate(test_list.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            raise UsageError(f"{test_list}:{number}: expected '<1 real | 0 fake> <path>', got {line!r}")
        entries[Path(parts[1].strip()).as_posix()] = REAL if parts[0] == "1" else FAKE
    return entries
