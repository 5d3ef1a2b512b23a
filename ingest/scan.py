"""`ingest scan`: what a build would store, found without decoding: the layout, the counts, every problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from cache.schema import LABEL_NAMES, SPLIT_NAMES
from ingest.discover import NO_SPLIT
from ingest.layouts import Chosen, Found, LayoutOptions, choose

UNSPLIT = "to split"  # the split column of videos the build splits (train/val, or train/val/test)


def scan(
    root: Path, dataset: str | None = None, options: LayoutOptions | None = None, manifest: Path | None = None
) -> tuple[Chosen, Found]:
    """The layout of `root` and what it holds, as a build would find it."""
    chosen = choose(root, dataset, options, manifest)
    return chosen, chosen.read()


def report(chosen: Chosen, found: Found, log: Callable[[str], None] = print) -> None:
    """The layout line, the split source, the counts by split and label (and by method or part), what was left
    out, and every problem: each listed video that is missing, each video on no list, each folder link that loops."""
    log(chosen.line())
    present = found.table[found.table["error"] == ""]
    unsplit = present["split"] == NO_SPLIT
    how = f"{found.test_fraction:.0%} to test by group, then " if found.test_fraction else ""
    later = (
        f"; the {int(unsplit.sum())} '{UNSPLIT}' are split {how}train/val by group when built" if unsplit.any() else ""
    )
    log(f"split source {found.split_source}{later}")
    labels = present["label"].map(LABEL_NAMES)
    splits = present["split"].map(lambda s: SPLIT_NAMES.get(s, UNSPLIT))
    log(f"{len(present)} videos by split and label:")
    log(pd.crosstab(splits.rename("split"), labels.rename("label"), margins=True).to_string())
    if (present["kind"] != "").any():
        log("by method or part:")
        log(pd.crosstab(present["kind"].rename("kind"), labels.rename("label"), margins=True).to_string())
    for line in found.remarks():
        log(line)
    for _, row in found.missing.iterrows():
        log(f"  missing {row['path']}: {row['error']}")
    for path in found.unlisted:
        log(f"  on no list {path}")
    for folder in found.loops:
        log(f"  not walked again {folder}")


def write_csv(found: Found, out: Path) -> int:
    """The table `--manifest` reads: path,label,split,group, split a name or empty; missing videos left out."""
    present = found.table[found.table["error"] == ""]
    table = pd.DataFrame(
        {
            "path": present["path"],
            "label": present["label"],
            "split": present["split"].map(lambda s: SPLIT_NAMES.get(s, "")),
            "group": present["group"],
        }
    )
    table.to_csv(out, index=False)
    return len(table)
