"""Celeb-DF v1 and v2.

    Celeb-real/idA_NNNN.mp4, YouTube-real/NNNNN.mp4   real
    Celeb-synthesis/idA_idB_NNNN.mp4                  fake (target A's video with B's face)
    List_of_testing_videos.txt                        `<1 real | 0 fake> <path>` lines: the test split

Folder names in any case. Group: the identity (`idA`); YouTube videos are each their own.
"""

from __future__ import annotations

from pathlib import Path

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import NO_SPLIT, TEST_LIST, read_test_list, source_group
from ingest.layouts.common import Found, LayoutOptions, Tree, missing, row, rows_table, subfolders

NAME = "celebdf"
HELP = "Celeb-DF v1/v2: Celeb-real/, YouTube-real/, Celeb-synthesis/, List_of_testing_videos.txt"
OPTIONS = ("test_list",)
FOLDERS = {"celeb-real": REAL, "youtube-real": REAL, "celeb-synthesis": FAKE}


def matches(root: Path) -> bool:
    folders = subfolders(root).values()
    return "celeb-synthesis" in folders or "youtube-real" in folders or default_test_list(root) is not None


def default_test_list(root: Path) -> Path | None:
    matches = [p for p in root.iterdir() if p.name.lower() == TEST_LIST.lower()]
    return matches[0] if matches else None


def folder_rows(tree: Tree, labels: dict[str, int], split_of: dict[int, int] | None = None) -> list[tuple]:
    """Every video under the root's folders named in `labels` (lower case), labelled by its folder; split
    by label through `split_of` (none given: to be split)."""
    rows = []
    for folder, lower in sorted(subfolders(tree.root).items()):
        if lower in labels:
            label = labels[lower]
            split = (split_of or {}).get(label, NO_SPLIT)
            rows += [row(p, label, source_group(p), split) for p in tree.videos(folder)]
    return rows


def with_test_list(root: Path, rows: list[tuple], test_list: Path | None) -> tuple[list[tuple], bool]:
    """`rows` with the test list's videos in test, labelled as it says (its 1 is real); a listed video that is not
    there is a failed row. False where there is no list."""
    test_list = test_list or default_test_list(root)
    if test_list is None:
        return rows, False
    entries = read_test_list(test_list)
    test = SPLIT_CODES["test"]
    marked = []
    for path, label, split, group, kind, error in rows:
        if path in entries:
            label, split = entries.pop(path), test
        marked.append(row(path, label, group, split, kind, error))
    marked += [row(p, label, source_group(p), test, error=missing(test_list.name)) for p, label in entries.items()]
    return marked, True


def read(tree: Tree, options: LayoutOptions) -> Found:
    root = tree.root
    rows, listed = with_test_list(root, folder_rows(tree, FOLDERS), options.test_list)
    found = Found(rows_table(rows), "list" if listed else "grouped")
    if not listed:
        found.notes.append(f"no {TEST_LIST} in {root}: the videos are split train/val by identity, none is test")
    return found
