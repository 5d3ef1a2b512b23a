"""The `cache` command: `info`, `verify` and `show` a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from cache.bucket import Bucket, is_remote, store_location
from cache.exits import Ending, ends, part_way
from cache.features import feature_entries
from cache.schema import FAILED, LABEL_NAMES, OK, SPLIT_NAMES, STATUS_NAMES, StoreError
from cache.shard_cache import ShardCacheConfig, add_cache_options, cache_config
from cache.shards import PARTIAL
from cache.show import clip_strips
from cache.store import ClipStore, open_store


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="cache", description="Inspect and check a clipcache store.")
    commands = main.add_subparsers(dest="command", required=True)
    info = commands.add_parser(
        "info",
        help="counts, shapes, size and failures",
        description="Counts by split, label and status; clip shape; size on disk; every failed video with its reason.",
    )
    info.add_argument("store", type=store_location)
    verify = commands.add_parser(
        "verify",
        help="read every ok clip and flag bad ones",
        description="Read every ok clip; flag clips that cannot be read, have the wrong shape or are one "
        "constant colour. Exit status 1 when any clip is flagged.",
    )
    verify.add_argument("store", type=store_location)
    add_cache_options(verify)
    verify.add_argument("--batch", type=int, default=16, help="clips read at a time (default 16)")
    show = commands.add_parser(
        "show",
        help="draw a clip's frames into a PNG",
        description="Draw evenly spaced frames of one row of each STORE into a PNG, a strip per store: stores "
        "built from the same videos with other settings (--resize squash, face) show the same video one above the "
        "other. Exit status 2 when the row is not an ok clip of the same video in every store.",
    )
    show.add_argument("stores", type=store_location, nargs="+", metavar="store")
    add_cache_options(show)
    show.add_argument("--row", type=int, default=0, help="the store row to draw (default 0)")
    show.add_argument("--frames", type=int, default=8, help="frames drawn of the clip (default 8)")
    show.add_argument("--out", type=Path, required=True, help="the PNG to write")
    return main


@ends("cache")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.kept = "nothing was changed; run the same command again"
    cache = None if args.command == "info" else cache_config(args)
    if cache is not None:
        ending.where = cache.folder  # a bucket's shards are copied there
    if args.command == "show":
        ending.where, ending.kept = args.out, f"{args.out} may be part written; run the same command again"
        return show(args, cache)
    with open_store(args.store, cache) as store:
        return info(store) if args.command == "info" else verify(store, args.batch)


def show(args: argparse.Namespace, cache: ShardCacheConfig) -> int:
    if args.frames < 1:
        raise StoreError("--frames must be at least 1")
    stores = [open_store(path, cache) for path in args.stores]
    try:
        clip_strips(stores, args.row, args.frames).savefig(args.out, dpi=100)
    finally:
        for store in stores:
            store.close()
    print(args.out)
    return 0


def disk_size(path: Path | str) -> int:
    """The store's bytes, less the temporary files a killed writer left (the next `--resume` removes them)."""
    if is_remote(path):
        return Bucket(path).size()
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix != PARTIAL)


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
        f"{disk_size(store.location) / 2**20:.1f} MiB {'in the bucket' if is_remote(store.location) else 'on disk'}"
    )
    print(f"  data root {spec.data_root}")
    if "dataset" in store.attrs:  # stores built before it lack it
        print(dataset_line(store.attrs["dataset"]))
    print(counts(store).to_string())
    made = pd.Series(store.decoder[store.status == OK]).value_counts()
    print("  ok clips by decoder: " + ", ".join(f"{name} {n}" for name, n in made.items()))
    if spec.resize == "face":
        print(_faces_line(store))
    for name, entry in feature_entries(store).items():
        print(f"  features/{name}: {entry.backbone} ({entry.source}), {entry.frame_size}px, dim {entry.dim}")
    failed = np.flatnonzero(store.status == FAILED)
    for row in failed:
        print(f"  failed {store.path[row]}: {store.error[row]}")
    return 0


def dataset_line(dataset: dict) -> str:
    options = ", ".join(f"{name.replace('_', '-')} {value}" for name, value in dataset.get("options", {}).items())
    return f"  data set {dataset.get('name')}{f' ({options})' if options else ''}; split {dataset.get('split_source')}"


def _faces_line(store: ClipStore) -> str:
    """How well the face crops held: clips without a face (stored squashed) and frames with a detection."""
    spec, ok = store.spec, store.status == OK
    detected = store.face_detected[ok]
    frames = detected[detected > 0].sum()
    return (
        f"  faces: {len(store.without_face())} of {int(ok.sum())} ok clips had no face (stored squashed); "
        f"the face was found in {frames} of {int((detected > 0).sum()) * spec.frames} frames of the others "
        f"(margin {spec.face_margin}, --no-face {spec.no_face})"
    )


def verify(store: ClipStore, batch: int) -> int:
    rows = store.rows()
    problems: list[str] = []
    for start in tqdm(range(0, len(rows), batch), unit="batch", desc="verify"):
        chunk = rows[start : start + batch]
        try:
            clips = store.read(chunk)
        except Exception as error:
            if part_way(error) is not None:  # a full disk or a lost bucket, not a bad clip
                raise
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
