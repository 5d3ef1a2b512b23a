"""Data set layouts: which one a root is, and its videos' labels, splits and groups from its own files.

One module per layout, each with NAME, HELP, OPTIONS (the `LayoutOptions` fields it reads), `matches(root)` and
`read(tree, options) -> Found`, which finds the root's videos through `tree` (`Tree.videos`): every layout's walks
enter a folder once, and the folder links that loop are reported with what it found. Adding a data set means adding
its module to `MODULES` (and a test).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ingest.discover import UsageError, read_manifest
from ingest.layouts import celebdf, dfd, dfdc, dfdcp, ffpp, seed, uadfv
from ingest.layouts.common import (
    ALL_FFPP_METHODS,
    COMPRESSIONS,
    FFPP_METHODS,
    Found,
    LayoutOptions,
    Tree,
)

__all__ = [
    "ALL_FFPP_METHODS",
    "COMPRESSIONS",
    "FFPP_METHODS",
    "LAYOUTS",
    "MANIFEST",
    "Chosen",
    "Found",
    "Layout",
    "LayoutOptions",
    "choose",
    "detect",
    "find_videos",
]

MANIFEST = "manifest"


@dataclass(frozen=True)
class Layout:
    name: str
    help: str
    options: tuple[str, ...]
    matches: Callable[[Path], bool]
    read: Callable[[Tree, LayoutOptions], Found]


# In the order `detect` tries them: FF++ before DFD (one download holds both), Celeb-DF before the seed's.
MODULES = (ffpp, dfd, dfdc, dfdcp, celebdf, uadfv, seed)
LAYOUTS = {m.NAME: Layout(m.NAME, m.HELP, m.OPTIONS, m.matches, m.read) for m in MODULES}


def detect(root: Path) -> str:
    """The name of the first layout whose folders `root` holds."""
    for layout in LAYOUTS.values():
        if layout.matches(root):
            return layout.name
    raise UsageError(
        f"--data-root {root}: no known data set layout ({', '.join(LAYOUTS)}) found: give --dataset NAME, or a "
        "--manifest CSV with columns path,label[,split][,group]"
    )


@dataclass(frozen=True)
class Chosen:
    """The layout chosen for a root, with its options, before anything is read."""

    root: Path
    name: str
    options: dict  # the options this layout reads, as JSON values; {"manifest": PATH} for a manifest
    how: str  # "found by its folders", "--dataset", "--manifest"
    read_all: Callable[[], Found]

    def line(self) -> str:
        shown = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in self.options.items())
        return f"layout {self.name} ({self.how}{'; ' + shown if shown else ''})"

    def read(self) -> Found:
        found = self.read_all()
        if found.table.empty:
            raise UsageError(f"no video files of the {self.name} layout found under {self.root}")
        return found

    def attrs(self, found: Found) -> dict:
        """The store's `dataset` attribute."""
        return {"name": self.name, "options": self.options, "split_source": found.split_source}


def choose(
    root: Path, dataset: str | None = None, options: LayoutOptions | None = None, manifest: Path | None = None
) -> Chosen:
    """The layout of `root`: `dataset` where given, else the one its folders show; a manifest is none."""
    if not root.is_dir():
        raise UsageError(f"--data-root {root}: no such folder")
    options = options or LayoutOptions()
    if manifest is not None:
        if dataset is not None:
            raise UsageError("--manifest gives every video's label and split: leave out --dataset")
        return Chosen(root, MANIFEST, {"manifest": str(manifest)}, "--manifest", lambda: _manifest(root, manifest))
    if dataset is not None and dataset not in LAYOUTS:
        raise UsageError(f"--dataset must be one of {', '.join(LAYOUTS)}, not {dataset!r}")
    layout = LAYOUTS[dataset or detect(root)]
    how = "--dataset" if dataset else "found by its folders"
    shown = options.shown(layout.options)
    if "splits" in shown and options.splits is None:
        shown["splits"] = str(root / "splits")
    if "test_list" in shown and options.test_list is None:
        shown["test_list"] = str(celebdf.default_test_list(root) or "none")
    return Chosen(root, layout.name, shown, how, lambda: _read(layout, root, options))


def _read(layout: Layout, root: Path, options: LayoutOptions) -> Found:
    """What `layout` finds in `root`, with the folder links its walks did not follow round."""
    tree = Tree(root)
    found = layout.read(tree, options)
    found.loops = sorted(set(tree.loops))
    return found


def _manifest(root: Path, manifest: Path) -> Found:
    table = read_manifest(root, manifest)
    table["kind"], table["error"] = "", ""
    return Found(table.sort_values("path", ignore_index=True), MANIFEST)


def find_videos(data_root: Path, manifest: Path | None = None, test_list: Path | None = None) -> pd.DataFrame:
    """One row per video file of `data_root`'s layout (or `manifest`): path, label, split (-1 when not given), group;
    listed videos that are missing are left out."""
    table = choose(data_root, options=LayoutOptions(test_list=test_list), manifest=manifest).read().table
    return table.loc[table["error"] == "", ["path", "label", "split", "group"]].reset_index(drop=True)
