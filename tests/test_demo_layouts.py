"""`make_demo`'s layouts: each writes a small set of videos in a real data set's own folders, names and index
files (Celeb-DF v2, FaceForensics++, DFDC), and the index files agree with the videos on disk."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import run_cli

from ingest.demo import DEMO_LAYOUTS, FFPP_METHODS, DemoSpec, draw_identity, ffpp_split_sizes, make_demo
from ingest.scan import scan

SMALL = {"frames": 4, "width": 64, "height": 48}
FFPP_SPEC = DemoSpec(identities=6, **SMALL)
DFDC_SPEC = DemoSpec(identities=5, reals_per_identity=1, fakes_per_identity=2, **SMALL)
FFPP_REAL = "original_sequences/youtube/c23/videos"


def files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def videos(root: Path) -> set[str]:
    return {name for name in files(root) if name.endswith(".mp4")}


def written(root: Path, spec: DemoSpec, layout: str) -> Path:
    """`root` with the demo set written; `make_demo` returns exactly the videos it writes."""
    assert {path.relative_to(root).as_posix() for path in make_demo(root, spec, layout)} == videos(root)
    return root


@pytest.fixture(scope="module")
def ffpp_root(tmp_path_factory) -> Path:
    return written(tmp_path_factory.mktemp("ffpp"), FFPP_SPEC, "ffpp")


@pytest.fixture(scope="module")
def dfdc_root(tmp_path_factory) -> Path:
    return written(tmp_path_factory.mktemp("dfdc"), DFDC_SPEC, "dfdc")


@pytest.fixture(scope="module")
def celebdf_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("celebdf-demo")
    make_demo(root, DemoSpec(identities=3, reals_per_identity=1, fakes_per_identity=2, youtube=2, **SMALL))
    return root


@pytest.mark.parametrize("layout", ["ffpp_root", "dfdc_root", "celebdf_demo"])
def test_every_video_decodes_to_its_frames(layout, request):
    root = request.getfixturevalue(layout)
    for name in videos(root):
        with av.open(str(root / name)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(frames) == SMALL["frames"], name
        assert frames[0].shape == (SMALL["height"], SMALL["width"], 3), name


def test_celebdf_keeps_its_names_and_test_list(celebdf_demo):
    assert files(celebdf_demo) == {
        "Celeb-real/id0_0000.mp4",
        "Celeb-real/id1_0000.mp4",
        "Celeb-real/id2_0000.mp4",
        "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id0_id2_0001.mp4",
        "Celeb-synthesis/id1_id2_0000.mp4",
        "Celeb-synthesis/id1_id0_0001.mp4",
        "Celeb-synthesis/id2_id0_0000.mp4",
        "Celeb-synthesis/id2_id1_0001.mp4",
        "YouTube-real/00000.mp4",
        "YouTube-real/00001.mp4",
        "List_of_testing_videos.txt",
    }
    assert (celebdf_demo / "List_of_testing_videos.txt").read_text().splitlines() == [
        "1 Celeb-real/id0_0000.mp4",
        "0 Celeb-synthesis/id0_id1_0000.mp4",
        "0 Celeb-synthesis/id0_id2_0001.mp4",
        "1 YouTube-real/00000.mp4",
    ]


def ffpp_splits(root: Path) -> dict[str, list[list[str]]]:
    return {split: json.loads((root / "splits" / f"{split}.json").read_text()) for split in ("train", "val", "test")}


def test_ffpp_writes_originals_fakes_of_each_method_and_the_split_files(ffpp_root):
    methods = {f"manipulated_sequences/{method}/c23/videos" for method in FFPP_METHODS}
    assert {name.rsplit("/", 1)[0] for name in files(ffpp_root)} == {FFPP_REAL, "splits", *methods}
    assert {name for name in files(ffpp_root) if name.startswith("splits/")} == {
        "splits/train.json",
        "splits/val.json",
        "splits/test.json",
    }
    ids = [f"{i:03d}" for i in range(FFPP_SPEC.identities)]
    assert {name for name in files(ffpp_root) if name.startswith(FFPP_REAL)} == {f"{FFPP_REAL}/{i}.mp4" for i in ids}
    for folder in methods:
        fakes = [name.rsplit("/", 1)[1] for name in files(ffpp_root) if name.startswith(folder)]
        assert len(fakes) == FFPP_SPEC.identities and all(re.fullmatch(r"\d{3}_\d{3}\.mp4", n) for n in fakes)


def test_ffpp_split_files_pair_every_original_once_and_name_both_fakes_of_each_pair(ffpp_root):
    splits = ffpp_splits(ffpp_root)
    assert (ffpp_root / "splits/train.json").read_text().startswith('[\n  [\n    "')  # as the official files
    assert {split: len(pairs) for split, pairs in splits.items()} == {"train": 1, "val": 1, "test": 1}
    paired = [i for pairs in splits.values() for pair in pairs for i in pair]
    assert all(isinstance(i, str) for i in paired) and len(paired) == len(set(paired))
    assert {f"{FFPP_REAL}/{i}.mp4" for i in paired} == {n for n in videos(ffpp_root) if n.startswith(FFPP_REAL)}
    listed = {
        f"manipulated_sequences/{method}/c23/videos/{target}_{source}.mp4"
        for method in FFPP_METHODS
        for pairs in splits.values()
        for a, b in pairs
        for target, source in ((a, b), (b, a))
    }
    assert listed == {name for name in videos(ffpp_root) if name.startswith("manipulated_sequences/")}


def test_ffpp_splits_pairs_in_the_official_proportions():
    assert ffpp_split_sizes(500) == {"train": 360, "val": 70, "test": 70}
    assert ffpp_split_sizes(3) == {"train": 1, "val": 1, "test": 1}


@pytest.mark.parametrize(
    ("layout", "spec"),
    [
        ("ffpp", DemoSpec(identities=7)),  # an odd one out of the pairs
        ("ffpp", DemoSpec(identities=4)),  # two pairs for three splits
        ("dfdc", DemoSpec(identities=2)),  # one identity for two training parts
        ("dfdc", DemoSpec(identities=4, reals_per_identity=0)),  # fakes without originals
    ],
)
def test_a_layout_refuses_a_spec_it_cannot_lay_out_before_writing(layout, spec, tmp_path):
    with pytest.raises(ValueError, match=layout):
        make_demo(tmp_path / "demo", spec, layout)
    assert not (tmp_path / "demo").exists()


def dfdc_metadata(root: Path) -> dict[str, dict[str, dict]]:
    return {path.parent.name: json.loads(path.read_text()) for path in root.glob("*/metadata.json")}


def test_dfdc_writes_training_parts_with_metadata_and_a_test_folder_with_labels(dfdc_root):
    assert {name.split("/")[0] for name in files(dfdc_root)} == {"dfdc_train_part_0", "dfdc_train_part_1", "test"}
    others = {"dfdc_train_part_0/metadata.json", "dfdc_train_part_1/metadata.json", "test/labels.csv"}
    names = [name.split("/")[1] for name in files(dfdc_root) - others]
    assert len(names) == len(set(names)) == 15 and all(re.fullmatch(r"[a-z]{10}\.mp4", n) for n in names)
    assert others <= files(dfdc_root)


def test_dfdc_metadata_lists_each_parts_videos_and_every_fakes_real_original(dfdc_root):
    metadata = dfdc_metadata(dfdc_root)
    for part, rows in metadata.items():
        assert set(rows) == {name.split("/")[1] for name in videos(dfdc_root) if name.startswith(f"{part}/")}
        for row in rows.values():
            assert row["split"] == "train"
            if row["label"] == "REAL":
                assert set(row) == {"label", "split"}
            else:
                assert row["label"] == "FAKE" and rows[row["original"]]["label"] == "REAL"
        labels = [row["label"] for row in rows.values()]
        assert labels.count("FAKE") == 2 * labels.count("REAL") > 0  # fakes_per_identity 2, reals 1


def test_dfdc_labels_list_the_test_videos_with_1_for_fake(dfdc_root):
    with (dfdc_root / "test/labels.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert {f"test/{row['filename']}" for row in rows} == {n for n in videos(dfdc_root) if n.startswith("test/")}
    assert sorted(row["label"] for row in rows) == ["0", "1", "1"]  # one test identity: one real, two fakes


def test_the_default_demos_are_no_larger_than_celebdfs():
    """`make demo` writes them on 2 cores: FaceForensics++ and DFDC with fewer videos than Celeb-DF's 100."""
    counts = {}
    for name, layout in DEMO_LAYOUTS.items():
        rng = np.random.default_rng(0)
        people = [draw_identity(rng) for _ in range(layout.identities)]
        counts[name] = len(layout.plan(DemoSpec(identities=layout.identities), people, rng).videos)
    assert counts == {"celebdf": 100, "ffpp": 60, "dfdc": 60}
    assert ffpp_split_sizes(DEMO_LAYOUTS["ffpp"].identities // 2) == {"train": 4, "val": 1, "test": 1}


@pytest.mark.parametrize(
    ("layout", "count", "first"),
    [("ffpp", 30, f"{FFPP_REAL}/000.mp4"), (None, 22, "Celeb-real/id0_0000.mp4")],
)
def test_make_demo_writes_the_layout_it_is_asked_for_and_celebdf_by_default(layout, count, first, tmp_path):
    size = ["--frames", "2", "--width", "64", "--height", "48", "--identities", "6" if layout == "ffpp" else "3"]
    chosen = ["--layout", layout] if layout else []
    result = run_cli("ingest", "make-demo", "--out", str(tmp_path / "demo"), *chosen, *size)
    assert f": {count} videos in {layout or 'celebdf'}'s layout" in result.stdout
    assert len(videos(tmp_path / "demo")) == count and (tmp_path / "demo" / first).is_file()


def test_make_demo_refuses_identities_a_layout_cannot_use_and_writes_nothing(tmp_path):
    args = ["--out", str(tmp_path / "demo"), "--layout", "ffpp", "--identities", "7"]
    result = run_cli("ingest", "make-demo", *args, check=False)
    assert result.returncode == 2
    assert (
        result.stderr
        == "ingest: error: --layout ffpp: ffpp pairs its originals, one pair at least per split: 7 identities\n"
    )
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    ("layout", "name", "source"),
    [("ffpp_root", "ffpp", "official"), ("dfdc_root", "dfdc", "folder"), ("celebdf_demo", "celebdf", "list")],
)
def test_build_cache_reads_each_demo_as_its_data_set_with_nothing_missing_or_unlisted(layout, name, source, request):
    root = request.getfixturevalue(layout)
    chosen, found = scan(root)
    assert chosen.name == name and found.split_source == source
    assert found.missing.empty and not found.unlisted and not found.left_out
    table = found.table.set_index("path")
    assert set(table.index) == videos(root)
    fake = table.index.str.contains("manipulated_sequences|Celeb-synthesis") if name != "dfdc" else None
    if fake is not None:
        assert (table["label"] == fake.astype(int)).all()
    assert set(table.loc[table["split"] == 2, "label"]) == {0, 1}, "the test split holds both classes"
