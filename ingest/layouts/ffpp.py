"""FaceForensics++ as its download script writes it.

    original_sequences/youtube/<c>/videos/NNN.mp4                  real (NNN: 000-999)
    manipulated_sequences/<method>/<c>/videos/TTT_SSS.mp4          fake: target TTT's video, source SSS's face
    splits/train.json, val.json, test.json (or --splits DIR)       the official split: JSON lists of ["a", "b"]

<c> is raw, c23 or c40. A pair ["a", "b"] puts reals a and b and fakes a_b and b_a in that file's split; the pair
is the group. Without the split files the ids a fake joins make the groups and the build splits train/val.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import UsageError
from ingest.layouts.common import (
    ALL_FFPP_METHODS,
    COMPRESSIONS,
    Found,
    LayoutOptions,
    Tree,
    load_json,
    missing,
    row,
    rows_table,
    subfolders,
)

NAME = "ffpp"
HELP = "FaceForensics++: original_sequences/youtube and manipulated_sequences/<method>, <c>/videos; splits/*.json"
OPTIONS = ("compression", "methods", "splits")
REAL_FOLDER = "original_sequences/youtube"
FAKE_FOLDER = "manipulated_sequences"
SPLIT_FILES = ("train", "val", "test")


def matches(root: Path) -> bool:
    return (root / REAL_FOLDER).is_dir() or any((root / FAKE_FOLDER / m).is_dir() for m in ALL_FFPP_METHODS)


def compressed(tree: Tree, base: str, compression: str, left_out: Counter) -> list[str]:
    """The videos of `base/<compression>/videos`, counting those of the other compressions in `left_out`."""
    for other in COMPRESSIONS:
        if other != compression:
            count = len(tree.videos(f"{base}/{other}/videos"))
            if count:
                left_out[f"{other} (not --compression {compression})"] += count
    return tree.videos(f"{base}/{compression}/videos")


def read(tree: Tree, options: LayoutOptions) -> Found:
    root = tree.root
    left_out: Counter = Counter()
    reals = compressed(tree, REAL_FOLDER, options.compression, left_out)
    fakes: dict[str, list[str]] = {}
    for name in sorted(subfolders(root / FAKE_FOLDER)):
        if name in options.methods:
            fakes[name] = compressed(tree, f"{FAKE_FOLDER}/{name}", options.compression, left_out)
        elif name in ALL_FFPP_METHODS:
            count = sum(len(tree.videos(f"{FAKE_FOLDER}/{name}/{c}/videos")) for c in COMPRESSIONS)
            left_out[f"{name} (not in --methods)"] += count
    folder = options.splits or root / "splits"
    files = {name: folder / f"{name}.json" for name in SPLIT_FILES}
    present = [name for name, path in files.items() if path.is_file()]
    if not present:
        found = _grouped(reals, fakes)
        found.notes.append(
            f"the official split files ({', '.join(f'{n}.json' for n in SPLIT_FILES)}) were not found in {folder}: "
            "the videos are split train/val by pair instead"
        )
    elif len(present) < len(SPLIT_FILES):
        lacking = sorted(set(SPLIT_FILES) - set(present))
        raise UsageError(f"{folder} holds {', '.join(present)}.json but not {', '.join(lacking)}.json")
    else:
        found = _official(root, options.compression, files, reals, fakes)
    found.left_out.update(left_out)
    return found


def _stem(path: str) -> str:
    return PurePosixPath(path).stem


def _official(
    root: Path, compression: str, files: dict[str, Path], reals: list[str], fakes: dict[str, list[str]]
) -> Found:
    """Every video in the split its id pair is listed in; a listed video that is not there is a failed row."""
    places: dict[str, tuple[int, str, str]] = {}  # real id or fake name -> split, group, the file listing it
    for name, path in files.items():
        pairs = load_json(path)
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise UsageError(f'{path}: expected a JSON list of ["a", "b"] id pairs')
        for a, b in pairs:
            a, b = str(a), str(b)
            group = f"{a}_{b}"
            for key in (a, b, f"{a}_{b}", f"{b}_{a}"):
                places[key] = (SPLIT_CODES[name], group, path.name)
    rows, unlisted = [], []
    folders = [(REAL_FOLDER, "youtube", REAL, reals)]
    folders += [(f"{FAKE_FOLDER}/{m}", m, FAKE, videos) for m, videos in fakes.items()]
    for base, kind, label, videos in folders:
        seen = set()
        for path in videos:
            place = places.get(_stem(path))
            if place is None:
                unlisted.append(path)
                continue
            seen.add(_stem(path))
            rows.append(row(path, label, place[1], place[0], kind))
        if not (root / base / compression / "videos").is_dir():
            continue  # a method not downloaded at this compression: its videos are not expected
        for key, (split, group, listed_in) in places.items():
            if ("_" in key) == (label == FAKE) and key not in seen:
                path = f"{base}/{compression}/videos/{key}.mp4"
                rows.append(row(path, label, group, split, kind, missing(listed_in)))
    return Found(rows_table(rows), "official", unlisted=sorted(unlisted))


def _grouped(reals: list[str], fakes: dict[str, list[str]]) -> Found:
    """No split files: the ids each fake joins (target and source) are one group, found by union-find."""
    parent: dict[str, str] = {}

    def top(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for videos in fakes.values():
        for path in videos:
            ids = _stem(path).split("_")
            for other in ids[1:]:
                parent[top(other)] = top(ids[0])
    for path in reals:
        top(_stem(path))
    members: dict[str, set[str]] = {}
    for key in list(parent):
        members.setdefault(top(key), set()).add(key)
    group = {key: "_".join(sorted(members[top(key)])) for key in parent}
    rows = [row(p, REAL, group[_stem(p)], kind="youtube") for p in reals]
    for method, videos in fakes.items():
        rows += [row(p, FAKE, group[_stem(p).split("_")[0]], kind=method) for p in videos]
    return Found(rows_table(rows), "grouped")
