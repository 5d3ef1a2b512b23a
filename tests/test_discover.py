from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cache.schema import FAKE, REAL, SPLIT_CODES, UNKNOWN
from ingest.discover import NO_SPLIT, UsageError, source_group
from ingest.layouts import find_videos
from ingest.splits import assign_splits

TEST, TRAIN, VAL = SPLIT_CODES["test"], SPLIT_CODES["train"], SPLIT_CODES["val"]


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_seed_layout_is_found_case_insensitively(tmp_path):
    touch(tmp_path, "celeb-real/a.MP4", "CELEB-FAKE/b.avi", "Testing/c.mkv", "Celeb-Fake/readme.txt", "other/d.mp4")
    table = find_videos(tmp_path).set_index("path")
    assert table.loc["celeb-real/a.MP4", "label"] == REAL
    assert table.loc["CELEB-FAKE/b.avi", "label"] == FAKE
    assert table.loc["Testing/c.mkv", ["label", "split"]].tolist() == [UNKNOWN, TEST]
    assert len(table) == 3


def test_celebdf_test_list_labels_are_inverted(tmp_path):
    touch(tmp_path, "Celeb-real/id0_0000.mp4", "YouTube-real/00001.mp4", "Celeb-synthesis/id0_id1_0000.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
    )
    table = find_videos(tmp_path).set_index("path")
    assert table.loc["YouTube-real/00001.mp4", ["label", "split"]].tolist() == [REAL, TEST]
    assert table.loc["Celeb-synthesis/id0_id1_0000.mp4", ["label", "split"]].tolist() == [FAKE, TEST]
    assert table.loc["Celeb-real/id0_0000.mp4", "split"] == NO_SPLIT


def test_an_empty_test_list_marks_nothing(tmp_path):
    touch(tmp_path, "Celeb-real/id0_0000.mp4", "Celeb-synthesis/id0_id1_0000.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text("\n")
    assert (find_videos(tmp_path)["split"] == NO_SPLIT).all()


def test_source_group_is_the_first_identity():
    assert source_group("Celeb-synthesis/id3_id7_0001.mp4") == "id3"
    assert source_group("Celeb-real/id3_0001.mp4") == "id3"
    assert source_group("YouTube-real/00001.mp4") == "YouTube-real/00001.mp4"


def test_manifest_gives_labels_splits_and_groups(tmp_path):
    touch(tmp_path, "x/a.mp4", "x/b.mp4", "y/c.webm")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split,group\nx/a.mp4,0,,g1\nx/b.mp4,1,test,\ny/c.webm,1,val,g2\n")
    table = find_videos(tmp_path, manifest=manifest).set_index("path")
    assert table["label"].tolist() == [0, 1, 1]
    assert table["split"].tolist() == [NO_SPLIT, TEST, VAL]
    assert table["group"].tolist() == ["g1", "x/b.mp4", "g2"]


@pytest.mark.parametrize(
    "content, message",
    [("path\nx/a.mp4\n", "lacks"), ("path,label\nx/a.mp4,7\n", "label"), ("path,label\nx/zz.mp4,1\n", "missing")],
)
def test_bad_manifests_are_refused(tmp_path, content, message):
    touch(tmp_path, "x/a.mp4")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(UsageError, match=message):
        find_videos(tmp_path, manifest=tmp_path / "m.csv")


def test_missing_folder_and_no_videos_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        find_videos(tmp_path / "nope")
    touch(tmp_path, "Celeb-real/a.txt")
    with pytest.raises(UsageError, match="no video files"):
        find_videos(tmp_path)


def celebdf_table(identities: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(identities):
        rows.append((f"Celeb-real/id{i}_0000.mp4", REAL))
        rows += [(f"Celeb-synthesis/id{i}_id{j}_000{k}.mp4", FAKE) for k, j in enumerate(rng.integers(0, 12, 4))]
    table = pd.DataFrame(rows, columns=["path", "label"])
    table["split"] = NO_SPLIT
    table["group"] = table["path"].map(source_group)
    return table


def test_split_is_grouped_stratified_and_deterministic():
    table = celebdf_table()
    first = assign_splits(table, 0.2, seed=42)
    assert first["split"].tolist() == assign_splits(table, 0.2, seed=42)["split"].tolist()
    assert first["split"].tolist() != assign_splits(table, 0.2, seed=7)["split"].tolist()
    train, val = first[first["split"] == TRAIN], first[first["split"] == VAL]
    assert not set(train["group"]) & set(val["group"])
    assert set(train["label"]) == set(val["label"]) == {REAL, FAKE}
    assert 0.1 < len(val) / len(first) < 0.35


def test_one_class_only_is_a_usage_error():
    table = celebdf_table()
    with pytest.raises(UsageError, match="one class"):
        assign_splits(table[table["label"] == FAKE], 0.2, seed=42)


def test_both_splits_need_both_classes():
    table = celebdf_table(identities=12)
    one_real = table[(table["label"] == FAKE) | (table["path"] == "Celeb-real/id0_0000.mp4")]
    with pytest.raises(UsageError, match="both classes"):
        assign_splits(one_real, 0.2, seed=42)


def small_table(reals: list[str], fakes: list[str]) -> pd.DataFrame:
    """Videos named by their source: one real per entry of `reals`, one fake per entry of `fakes`."""
    rows = [(f"Celeb-real/{s}_{i:04d}.mp4", REAL) for i, s in enumerate(reals)]
    rows += [(f"Celeb-synthesis/{s}_id99_{i:04d}.mp4", FAKE) for i, s in enumerate(fakes)]
    table = pd.DataFrame(rows, columns=["path", "label"])
    table["split"] = NO_SPLIT
    table["group"] = table["path"].map(source_group)
    return table


@pytest.mark.parametrize(
    "reals, fakes",
    [
        (["id0", "id1", "id2", "id3"], ["id4", "id5", "id6", "id7"]),  # fewer videos per class than folds
        (["id0", "id1"], ["id0", "id1"]),  # two sources, each holding both classes: no fold of 5 works
        (["id0", "id1"], ["id2", "id3"]),
        (["id0", "id1", "id2"], ["id0", "id3", "id3", "id4"]),
    ],
)
def test_small_sets_with_two_sources_per_class_split_into_both_classes(reals, fakes):
    for seed in range(5):
        table = assign_splits(small_table(reals, fakes), 0.2, seed=seed)
        train, val = table[table["split"] == TRAIN], table[table["split"] == VAL]
        assert set(train["label"]) == set(val["label"]) == {REAL, FAKE}
        assert not set(train["group"]) & set(val["group"])


def test_a_class_from_one_source_is_a_usage_error_that_names_the_counts():
    with pytest.raises(UsageError, match="real videos from 1 source, fake videos from 3 sources"):
        assign_splits(small_table(["id0", "id0"], ["id4", "id5", "id6"]), 0.2, seed=42)


def test_a_test_fraction_splits_off_whole_sources_as_test():
    table = assign_splits(celebdf_table(identities=20), 0.25, seed=1, test_fraction=0.2)
    assert set(table["split"]) == {TRAIN, VAL, TEST}
    assert (table.groupby("group")["split"].nunique() == 1).all()
    for split in (TRAIN, VAL, TEST):
        assert set(table.loc[table["split"] == split, "label"]) == {REAL, FAKE}


def test_an_all_test_table_stays_all_test():
    table = celebdf_table()
    table["split"] = TEST
    assert (assign_splits(table, 0.2, seed=0)["split"] == TEST).all()
