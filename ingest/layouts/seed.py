"""The seed notebook's folders: Celeb-Real/ real, Celeb-Fake/ fake, Testing/ test (unlabelled), any case."""

from __future__ import annotations

from pathlib import Path

from cache.schema import FAKE, REAL, SPLIT_CODES, UNKNOWN
from ingest.layouts.celebdf import folder_rows, with_test_list
from ingest.layouts.common import Found, LayoutOptions, Tree, rows_table, subfolders

NAME = "seed"
HELP = "the seed notebook's Celeb-Real/, Celeb-Fake/, Testing/"
OPTIONS = ("test_list",)
FOLDERS = {"celeb-real": REAL, "celeb-fake": FAKE, "testing": UNKNOWN}


def matches(root: Path) -> bool:
    return bool(FOLDERS.keys() & set(subfolders(root).values()))


def read(tree: Tree, options: LayoutOptions) -> Found:
    rows = folder_rows(tree, FOLDERS, {UNKNOWN: SPLIT_CODES["test"]})
    rows, _ = with_test_list(tree.root, rows, options.test_list)
    return Found(rows_table(rows), "folder")
