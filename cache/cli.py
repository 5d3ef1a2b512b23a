"""The `cache` command: `info` and `verify` a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cache.schema import FAILED, LABEL_NAMES, SPLIT_NAMES, STATUS_NAMES, StoreError
from cache.store import ClipStore, open_store


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="cache", description="Inspect and check a clipcache store.")
    commands = main.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info",
        help="counts, shapes, size and failures",
        description="Counts by split, label and status; clip shape; size on disk; every failed video with its reason.",
    )
    info.add_argument("store", type=Path)
    verify = commands.add_parser(
        "verify",
        help="read every ok clip and flag bad ones",
        description="Read every ok clip; flag clips that cannot be read, have the wrong shape or are one "
        "constant colour. Exit status 1 when any clip is flagged.",
    )
    verify.add_argument("store", type=Path)
    verify.add_argument("--batch", type=int, default=16, help="clips read at a time (default 16)")
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with open_store(args.store) as store:
            return info(store) if args.command == "info" else verify(store, args.batch)
    except StoreError as error:
        print(f"cache: error: {error}", file=sys.stderr)
        return 2


def disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def counts(store: ClipStore) -> pd.DataFrame:
    """Videos by split and label (rows) and status (columns)."""
    frame = pd.DataFrame(
        {
            "split": [SPLIT_NAMES.get(int(s), str(s)) for s in store.split],
            "label": [LABEL_NAMES.get(int(v), str(v)) for v in store.label],
            "status": pd.Categorical([STATUS_NAMES[int(s)] for s in store.status], list(STATUS_NAMES.values())),
        }
    )
    return pd.crosstab([frame["split"], frame["label"]], frame["status"], margins=True, dropna=False)


def info(store: ClipStore) -> int:
    spec = store.spec
    print(f"{store.location} ({store.format}, schema {store.attrs['schema']})")
    print(
        f"  {len(store)} videos; clips {tuple(store.clips.shape)} uint8; {spec.frames} frames at "
        f"{spec.size}x{spec.size} ({spec.resize}); decoder {spec.decoder}; "
        f"{disk_size(store.location) / 2**20:.1f} MiB on disk"
    )
    print(f"  data root {spec.data_root}")
    print(counts(store).to_string())
    failed = np.flatnonzero(store.status == FAILED)
    for row in failed:
        print(f"  failed {store.path[row]}: {store.error[row]}")
    return 0


def verify(store: ClipStore, batch: int) -> int:
    rows = store.rows()
    problems: list[str] = []
    for start in tqdm(range(0, len(rows), batch), unit="batch", desc="verify"):
        chunk = rows[start : start + batch]
        try:
            clips = store.read(chunk)
        except Exception as error:
            problems.extend(f"row {r} ({store.path[r]}): unreadable: {error}" for r in chunk)
            continue
        for row, clip in zip(chunk, clips, strict=True):
            if clip.shape != store.spec.clip_shape():
                problems.append(f"row {row} ({store.path[row]}): shape {clip.shape}")
            elif clip.min() == clip.max():
                problems.append(f"row {row} ({store.path[row]}): constant value {clip.flat[0]}")
    for problem in problems:
        print(problem)
    print(f"{store.location}: {len(rows)} ok clips read, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
