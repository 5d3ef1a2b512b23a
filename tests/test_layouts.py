"""Each data set layout read from trees of real videos in the data set's own folders and files."""

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    DFDC_MISSING,
    DFDC_UNLISTED,
    FFPP_MISSING,
    FFPP_PAIRS,
    FFPP_UNLISTED,
    build_args,
    one_line,
    run_cli,
)

from cache import open_store
from cache.schema import FAILED, FAKE, OK, REAL, SPLIT_CODES, UNKNOWN
from ingest.cli import main
from ingest.discover import NO_SPLIT
from ingest.layouts import LAYOUTS, LayoutOptions, choose, detect
from ingest.splits import assign_splits

TRAIN, VAL, TEST = SPLIT_CODES["train"], SPLIT_CODES["val"], SPLIT_CODES["test"]
FOUR = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")


def scan(*args: str, code: int = 0) -> tuple[str, str]:
    """`ingest scan ARGS` in this process (a process of its own would import torch): stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["scan", *args]) == code
    return out.getvalue(), err.getvalue()


def read(root: Path, dataset: str | None = None, **options):
    return choose(root, dataset, LayoutOptions(**options)).read()


def by_path(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("path")


def assert_no_group_in_two_splits(table: pd.DataFrame) -> None:
    splits = table.groupby("group")["split"].nunique()
    assert (splits == 1).all(), splits[splits > 1]


@pytest.mark.parametrize(
    "fixture, name",
    [
        ("ffpp_root", "ffpp"),
        ("dfd_root", "dfd"),
        ("dfdc_root", "dfdc"),
        ("dfdcp_root", "dfdcp"),
        ("celebdf_small_root", "celebdf"),
        ("uadfv_root", "uadfv"),
        ("seed_root", "seed"),
    ],
)
def test_each_layout_is_found_from_its_folders(fixture, name, request):
    root = request.getfixturevalue(fixture)
    assert detect(root) == name
    first = scan("--data-root", str(root))[0].splitlines()[0]
    assert first.startswith(f"layout {name} (found by its folders")


def test_every_layout_is_registered_with_help():
    assert set(LAYOUTS) == {"ffpp", "dfd", "dfdc", "dfdcp", "celebdf", "uadfv", "seed"}
    text = run_cli("ingest", "build-cache", "--help").stdout
    assert all(f"  {name} " in text for name in LAYOUTS)


def test_ffpp_pairs_land_in_their_json_split_with_both_fakes(ffpp_root):
    found = read(ffpp_root)
    table = by_path(found.table)
    assert found.split_source == "official"
    for name, pairs in FFPP_PAIRS.items():
        for a, b in pairs:
            group = f"{a}_{b}"
            assert table.loc[f"original_sequences/youtube/c23/videos/{a}.mp4", ["split", "group"]].tolist() == [
                SPLIT_CODES[name],
                group,
            ]
            for method in FOUR:
                for fake in (f"{a}_{b}", f"{b}_{a}"):
                    path = f"manipulated_sequences/{method}/c23/videos/{fake}.mp4"
                    assert table.loc[path, ["label", "split", "group", "kind"]].tolist() == [
                        FAKE,
                        SPLIT_CODES[name],
                        group,
                        method,
                    ]
    assert_no_group_in_two_splits(found.table)
    assert (found.table[found.table["kind"] == "youtube"]["label"] == REAL).all()
    assert table.loc[FFPP_MISSING, "error"] == "listed in test.json but missing"
    assert found.unlisted == [FFPP_UNLISTED]


def test_ffpp_leaves_out_other_compressions_and_methods_and_scan_counts_them(ffpp_root):
    table = read(ffpp_root).table
    assert table["path"].str.contains("/c23/videos/").all()
    assert not table["path"].str.contains("FaceShifter|actors|DeepFakeDetection").any()
    out = scan("--data-root", str(ffpp_root))[0]
    assert "3 c40 (not --compression c23)" in out and "8 FaceShifter (not in --methods)" in out
    assert f"missing {FFPP_MISSING}: listed in test.json but missing" in out
    assert f"on no list {FFPP_UNLISTED}" in out
    c40 = read(ffpp_root, methods=(*FOUR, "FaceShifter"), compression="c40").table
    assert set(c40["kind"]) == {"youtube"}  # only reals were downloaded at c40: no fake is expected
    assert (c40["error"] == "").sum() == 3 and (c40["error"] != "").sum() == 5  # and 5 listed reals are missing


def test_ffpp_without_split_files_is_split_by_pair_and_says_so(ffpp_root, tmp_path):
    found = read(ffpp_root, splits=tmp_path)
    assert found.split_source == "grouped" and "were not found" in found.notes[0]
    table = assign_splits(found.table, 0.25, seed=0)
    assert_no_group_in_two_splits(table)
    assert by_path(table).loc["manipulated_sequences/Face2Face/c23/videos/003_002.mp4", "group"] == "002_003"
    line = scan("--data-root", str(ffpp_root), "--splits", str(tmp_path))[0]
    assert "official split files (train.json, val.json, test.json) were not found" in line


def test_dfd_in_the_ffpp_download_is_read_with_dataset_dfd(ffpp_root):
    found = read(ffpp_root, "dfd")
    assert set(found.table["label"]) == {REAL, FAKE} and len(found.table) == 12
    assert (found.table["split"] == TEST).all() and found.split_source == "all-test"
    groups = by_path(found.table)["group"]
    assert groups["original_sequences/actors/c23/videos/01__walk.mp4"] == "01"
    assert groups["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walk__AB12CD34.mp4"] == "01_02"


def test_dfd_grouped_split_gives_train_val_test_with_no_group_in_two(dfd_root):
    found = read(dfd_root, grouped_split=True)
    table = assign_splits(found.table, 0.3, seed=1, test_fraction=found.test_fraction)
    assert set(table["split"]) == {TRAIN, VAL, TEST}
    assert_no_group_in_two_splits(table)


def test_dfdc_labels_from_metadata_and_labels_csv_with_a_fake_in_its_originals_split(dfdc_root):
    found = read(dfdc_root)
    table = by_path(found.table)
    assert table.loc["dfdc_train_part_0/r00.mp4", ["label", "group"]].tolist() == [REAL, "r00.mp4"]
    assert table.loc["dfdc_train_part_1/f131.mp4", ["label", "group", "kind"]].tolist() == [
        FAKE,
        "r13.mp4",
        "dfdc_train_part_1",
    ]
    assert table.loc["test/videos/t0.mp4", ["label", "split"]].tolist() == [FAKE, TEST]  # labels.csv: 1 = fake
    assert table.loc["test/videos/t1.mp4", ["label", "split"]].tolist() == [REAL, TEST]
    assert table.loc[DFDC_MISSING, "error"] == "listed in dfdc_train_part_0/metadata.json but missing"
    assert found.unlisted == [DFDC_UNLISTED]
    split = assign_splits(found.table, 0.25, seed=3)
    assert set(split["split"]) == {TRAIN, VAL, TEST}
    assert_no_group_in_two_splits(split)
    splits = by_path(split)["split"]
    for part in range(2):
        for i in range(4):
            original = splits[f"dfdc_train_part_{part}/r{part}{i}.mp4"]
            assert {splits[f"dfdc_train_part_{part}/f{part}{i}{k}.mp4"] for k in range(2)} == {original}


def test_an_unparsable_metadata_file_is_one_line_with_file_and_line(dfdc_root, tmp_path):
    root = tmp_path / "dfdc"
    shutil.copytree(dfdc_root, root)
    metadata = root / "dfdc_train_part_1" / "metadata.json"
    lines = metadata.read_text().splitlines()
    lines[2] = lines[2].replace(":", "", 1)
    metadata.write_text("\n".join(lines))
    result = run_cli("ingest", "scan", "--data-root", str(root), check=False)
    assert result.returncode == 2
    assert (
        one_line(result.stderr, "ingest: error:")
        == f"ingest: error: {metadata}:3: not valid JSON (Expecting ':' delimiter)"
    )


def test_dfdcp_reads_dataset_json_and_takes_val_from_train_by_source(dfdcp_root):
    found = read(dfdcp_root)
    table = by_path(found.table)
    assert table.loc["original_videos/643049/1000.mp4", ["label", "split", "group"]].tolist() == [REAL, TEST, "643049"]
    assert table.loc["method_B/812233/812233_B/2002.mp4", ["label", "split", "group", "kind"]].tolist() == [
        FAKE,
        NO_SPLIT,
        "812233",
        "method_B",
    ]
    split = assign_splits(found.table, 0.25, seed=0)
    assert set(split["split"]) == {TRAIN, VAL, TEST}
    assert_no_group_in_two_splits(split)


def test_celebdf_list_is_test_with_its_inverted_labels_and_a_missing_listed_video(celebdf_small_root):
    found = read(celebdf_small_root)
    table = by_path(found.table)
    assert found.split_source == "list"
    assert table.loc["YouTube-real/00001.mp4", ["label", "split"]].tolist() == [REAL, TEST]  # its 1 is real
    assert table.loc["Celeb-synthesis/id0_id1_0000.mp4", ["label", "split"]].tolist() == [FAKE, TEST]
    assert table.loc["Celeb-real/id5_0009.mp4", "error"] == "listed in List_of_testing_videos.txt but missing"
    assert table.loc["Celeb-synthesis/id2_id3_0000.mp4", ["split", "group"]].tolist() == [NO_SPLIT, "id2"]


def test_uadfv_is_all_test_or_grouped_by_number(uadfv_root):
    found = read(uadfv_root)
    assert (found.table["split"] == TEST).all() and len(found.table) == 12
    assert by_path(found.table).loc["fake/0003_fake.mp4", ["label", "group"]].tolist() == [FAKE, "0003"]
    grouped = read(uadfv_root, grouped_split=True)
    table = assign_splits(grouped.table, 0.3, seed=0, test_fraction=grouped.test_fraction)
    assert set(table["split"]) == {TRAIN, VAL, TEST}
    assert_no_group_in_two_splits(table)


def test_seed_layout_testing_is_test(seed_root):
    table = by_path(read(seed_root).table)
    assert table.loc["Testing/x.mp4", ["label", "split"]].tolist() == [UNKNOWN, TEST]
    assert table.loc["Celeb-Fake/id1_id9_0000.mp4", ["label", "group"]].tolist() == [FAKE, "id1"]


def test_build_says_the_layout_first_and_stores_a_listed_missing_video_as_failed(ffpp_root, tmp_path):
    store = tmp_path / "ffpp.zarr"
    args = build_args(ffpp_root, store, "--workers", "1", "--frames", "2", "--decoder", "pyav")
    lines = run_cli(*args).stdout.splitlines()
    assert lines[0] == (
        "layout ffpp (found by its folders; compression c23, methods Deepfakes,Face2Face,FaceSwap,NeuralTextures, "
        f"splits {ffpp_root / 'splits'})"
    )
    with open_store(store) as opened:
        table = opened.table().set_index("path")
        assert opened.attrs["dataset"] == {
            "name": "ffpp",
            "options": {"compression": "c23", "methods": ",".join(FOUR), "splits": str(ffpp_root / "splits")},
            "split_source": "official",
        }
    assert table.loc[FFPP_MISSING, ["status", "error"]].tolist() == [FAILED, "listed in test.json but missing"]
    assert (table.drop(FFPP_MISSING)["status"] == OK).all()
    expected = by_path(read(ffpp_root).table)
    assert (table["split"] == expected["split"]).all() and (table["group"] == expected["group"]).all()
    info = run_cli("cache", "info", str(store)).stdout
    assert "data set ffpp (compression c23, methods Deepfakes" in info and "split official" in info
    resumed = run_cli(*args, "--resume").stdout
    assert "0 videos decoded" in resumed


def test_scan_csv_is_a_manifest_the_build_accepts(dfdcp_root, tmp_path):
    manifest = tmp_path / "dfdcp.csv"
    out = scan("--data-root", str(dfdcp_root), "--csv", str(manifest))[0]
    assert f"{manifest}: 18 videos" in out
    written = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["path", "label", "split", "group"] and set(written["split"]) == {"test", ""}
    store = tmp_path / "manifest.h5"
    lines = run_cli(*build_args(dfdcp_root, store, "--workers", "1", "--frames", "2", "--manifest", str(manifest)))
    assert lines.stdout.splitlines()[0] == f"layout manifest (--manifest; manifest {manifest})"
    with open_store(store) as opened:
        table = opened.table().set_index("path")
        assert opened.attrs["dataset"]["split_source"] == "manifest"
    expected = by_path(read(dfdcp_root).table)
    assert (table["label"] == expected["label"]).all() and (table["group"] == expected["group"]).all()
    assert (table.loc[expected.index[expected["split"] == TEST], "split"] == TEST).all()


def test_an_unknown_root_and_a_bad_method_are_usage_errors(tmp_path):
    (tmp_path / "videos").mkdir()
    assert "no known data set layout" in one_line(scan("--data-root", str(tmp_path), code=2)[1], "ingest: error:")
    assert "--methods" in scan("--data-root", str(tmp_path), "--methods", "Deepfakes,Nope", code=2)[1]


def test_an_unparsable_dataset_json_names_its_line(tmp_path):
    (tmp_path / "dataset.json").write_text('{\n  "a": 1,\n  oops\n}')
    (tmp_path / "method_A").mkdir()
    assert f"{tmp_path / 'dataset.json'}:3:" in scan("--data-root", str(tmp_path), code=2)[1]


def test_scan_that_cannot_write_its_csv_ends_in_one_line(celebdf_small_root):
    """/dev/full fails every write with ENOSPC, as a full disk does: scan, which has no --out, names its --csv."""
    err = scan("--data-root", str(celebdf_small_root), "--csv", "/dev/full", code=4)[1]
    line = one_line(err, "ingest: error: no space left on the device of /dev/full:")
    assert line.endswith("/dev/full may be part written; run scan again once space is freed")


@pytest.mark.parametrize(
    "fixture, folder",
    [
        ("ffpp_root", "original_sequences/youtube/c23/videos"),
        ("dfd_root", "manipulated_sequences/DeepFakeDetection/c23/videos"),
        ("dfdc_root", "test/videos"),
        ("dfdcp_root", "method_A"),
        ("celebdf_small_root", "Celeb-real"),
        ("uadfv_root", "real"),
        ("seed_root", "Celeb-Fake"),
    ],
)
def test_folder_links_that_loop_are_walked_once_and_scan_names_them(fixture, folder, request, tmp_path):
    """As on shared filesystems: links back to a parent and to the root, and a second way into a folder."""
    root = request.getfixturevalue(fixture)
    looped = tmp_path / "root"
    shutil.copytree(root, looped)
    (looped / folder / "loop").mkdir()
    (looped / folder / "loop" / "back").symlink_to("../..")
    (looped / folder / "loop" / "top").symlink_to(looped)
    (looped / folder / "alias").symlink_to("loop")
    out = scan("--data-root", str(looped))[0]
    found = read(looped)
    assert found.table.equals(read(root).table)
    assert found.loops == [f"{folder}/alias -> loop", f"{folder}/loop/back -> ../..", f"{folder}/loop/top -> {looped}"]
    assert "3 folders lead back to one already walked (a link that loops) and were not walked again" in out
    assert all(f"  not walked again {loop}" in out for loop in found.loops)
