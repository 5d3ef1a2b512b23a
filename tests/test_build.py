"""`ingest build-cache` end to end, as a user runs it, on real videos with broken files among them."""

import os
import shutil
import time
import warnings

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import zarr
from conftest import SIZE, build_args, read_number, run_cli

from cache import open_store
from cache.schema import FAILED, OK, PENDING
from ingest.discover import VIDEO_SUFFIXES
from ingest.frames import sample_indices
from ingest.pool import DecodePool, worker_cpus

ARRAYS = ("label", "split", "frame_index", "path", "group", "status", "error", "decoder", "face_box", "face_detected")


@pytest.fixture(scope="module")
def stores(celebdf_root, tmp_path_factory):
    """The same folder built four ways: zarr with one and two workers, HDF5, and with decord."""
    out = tmp_path_factory.mktemp("stores")
    builds = {
        "zarr": ("--workers", "1", "--decoder", "pyav", "--clips-per-shard", "3"),
        "zarr-2-workers": ("--workers", "2", "--decoder", "pyav", "--clips-per-shard", "3"),
        "h5": ("--workers", "1", "--decoder", "pyav", "--clips-per-shard", "3"),
        "decord.zarr": ("--workers", "1", "--decoder", "decord", "--clips-per-shard", "3"),
    }
    paths = {}
    for name, extra in builds.items():
        path = out / (name if name.endswith((".zarr", ".h5")) else f"{name}.{'h5' if name == 'h5' else 'zarr'}")
        result = run_cli(*build_args(celebdf_root, path, *extra))
        assert "failed" in result.stdout and "videos/s" in result.stdout
        paths[name] = path
    return paths


def video_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def test_every_video_file_is_a_row_and_each_good_one_holds_exactly_its_frames(celebdf_root, stores):
    with open_store(stores["zarr"]) as store:
        assert store.path.tolist() == video_files(celebdf_root)
        assert store.clips.shape == (len(store), 16, SIZE, SIZE, 3)
        table = store.table()
        for row in np.flatnonzero(store.status == OK):
            n = table["frames"][row]
            assert store.frame_index[row].tolist() == sample_indices(n, 16).tolist()
            clip = store.read([row])[0]
            assert [read_number(frame) for frame in clip] == store.frame_index[row].tolist(), store.path[row]
        assert (store.status != PENDING).all()


def test_a_folder_link_back_to_the_root_is_walked_once_and_a_linked_video_is_a_row(celebdf_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(celebdf_root, root)
    (root / "Celeb-real/loop").mkdir()
    (root / "Celeb-real/loop/back").symlink_to("../..")
    (root / "Celeb-real/loop/id5_0000.mp4").symlink_to(root / "Celeb-real/id1_0000.mp4")
    out = tmp_path / "looped.zarr"
    built = run_cli(*build_args(root, out, "--workers", "1", "--frames", "4"))
    assert built.stdout.splitlines()[2].startswith(
        "1 folder leads back to one already walked (a link that loops) and was"
    )
    assert "e.g. Celeb-real/loop/back -> ../.." in built.stdout.splitlines()[2]
    with open_store(out) as store:
        assert store.path.tolist() == video_files(root) and "Celeb-real/loop/id5_0000.mp4" in store.path
        ok = store.rows()
        assert len(ok) == len(store) - 4  # the broken files
        for row, clip in zip(ok, store.read(ok), strict=True):
            assert [read_number(frame) for frame in clip] == store.frame_index[row].tolist(), store.path[row]


def test_broken_files_are_failed_rows_with_a_reason(stores):
    with open_store(stores["zarr"]) as store:
        failed = {store.path[r]: store.error[r] for r in np.flatnonzero(store.status == FAILED)}
        assert set(failed) == {f"Celeb-synthesis/id9_000{i}.{'avi' if i == 3 else 'mp4'}" for i in range(4)}
        assert all(reason.strip() and "\n" not in reason for reason in failed.values())
        assert not store.read(np.flatnonzero(store.status == FAILED)).any()


def test_labels_and_splits_follow_the_test_list_and_sources(stores):
    with open_store(stores["zarr"]) as store:
        by_path = dict(zip(store.path, zip(store.label.tolist(), store.split.tolist(), strict=True), strict=True))
        assert by_path["Celeb-real/id3_0000.mp4"] == (0, 2)
        assert by_path["Celeb-synthesis/id3_id0_0000.mp4"] == (1, 2)
        train = set(store.group[store.split == 0])
        val = set(store.group[store.split == 1])
        assert train and val and not train & val


def test_two_workers_lose_nothing(stores):
    assert_same_store(stores["zarr"], stores["zarr-2-workers"])


@pytest.mark.parametrize(("workers", "cpus"), [(2, 2), (3, 8), (1, 4), (5, 2), (16, 16)])
def test_workers_keep_to_cpus_of_their_own_until_there_are_more_workers_than_cpus(workers, cpus):
    available = set(range(10, 10 + cpus))
    shares = [worker_cpus(index, workers, available) for index in range(workers)]
    assert all(shares) and set().union(*shares) == available
    if workers <= cpus:
        assert sum(map(len, shares)) == cpus
    else:
        assert all(len(share) == 1 for share in shares)
        assert max(shares.count(share) for share in shares) == -(-workers // cpus)


def test_the_pool_forks_its_workers_onto_cpus_of_their_own():
    cpus = os.sched_getaffinity(0)
    workers = min(len(cpus), 2)
    with DecodePool("pyav", workers, (4, 32, 32, 3)):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shares = [set(child.cpu_affinity()) for child in psutil.Process().children()]
            if len(shares) == workers and sum(map(len, shares)) == len(cpus) and set().union(*shares) == cpus:
                return
            time.sleep(0.01)
    raise AssertionError(f"the workers kept to {shares}, not shares of {cpus}")


def test_hdf5_store_holds_the_same_as_zarr(stores):
    assert_same_store(stores["zarr"], stores["h5"])


def test_decoders_give_the_same_clips_within_a_few_grey_levels(stores):
    with open_store(stores["zarr"]) as pyav, open_store(stores["decord.zarr"]) as decord:
        both = np.flatnonzero((pyav.status == OK) & (decord.status == OK))
        assert len(both) >= len(pyav.rows()) - 1
        assert (pyav.frame_index[both] == decord.frame_index[both]).all()
        difference = np.abs(pyav.read(both).astype(int) - decord.read(both).astype(int))
        assert difference.mean() < 2 and np.percentile(difference, 99) <= 8


def assert_same_store(a, b):
    with open_store(a) as first, open_store(b) as second:
        for name in ARRAYS:
            assert (getattr(first, name) == getattr(second, name)).all(), name
        assert (first.read(range(len(first))) == second.read(range(len(second)))).all()


def test_users_read_the_store_with_zarr_and_h5py_alone(stores):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(stores["zarr"], mode="r")
        paths = group["path"][:]
        assert group.attrs["schema"] == "clipcache/1" and group.attrs["frames"] == 16
        probe = pd.DataFrame(group.attrs["probe"])
    assert list(probe.columns) == ["path", "frames", "fps", "width", "height", "codec"]
    assert probe["path"].tolist() == [str(p) for p in paths]
    assert (probe.loc[probe["frames"] > 0, "codec"] != "").all()
    assert group.attrs["summary"]["ok"] + group.attrs["summary"]["failed"] == len(paths)
    with h5py.File(stores["h5"], "r") as f:
        assert f["clips"].dtype == np.uint8 and f["clips"].shape[1:] == (16, SIZE, SIZE, 3)
        assert f["path"].asstr()[:].tolist() == [str(p) for p in paths]
        assert (f["clips"][0] == group["clips"][0]).all()
        assert pd.read_json(__import__("io").StringIO(f.attrs["probe"]))["frames"].tolist() == probe["frames"].tolist()


def test_strict_exits_3_when_a_video_failed(celebdf_root, tmp_path):
    result = run_cli(*build_args(celebdf_root, tmp_path / "s.zarr", "--workers", "1", "--strict"), check=False)
    assert result.returncode == 3
    assert (tmp_path / "s.zarr").exists()


def one_line_error(result):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ingest: error:"), result.stderr
    return lines[0]


def test_bad_arguments_exit_2_with_one_line_and_nothing_written(celebdf_root, tmp_path):
    out = tmp_path / "out.zarr"
    assert "no such folder" in one_line_error(run_cli(*build_args(tmp_path / "nope", out), check=False))
    (tmp_path / "empty" / "Celeb-real").mkdir(parents=True)
    assert "no video" in one_line_error(run_cli(*build_args(tmp_path / "empty", out), check=False))
    fakes_only = tmp_path / "fakes"
    (fakes_only / "Celeb-synthesis").mkdir(parents=True)
    for name in ("id0_id1_0000.mp4", "id1_id0_0000.mp4"):
        (fakes_only / "Celeb-synthesis" / name).write_bytes((celebdf_root / "Celeb-real/id0_0000.mp4").read_bytes())
    assert "one class" in one_line_error(run_cli(*build_args(fakes_only, out), check=False))
    assert "ends in" in one_line_error(run_cli(*build_args(celebdf_root, tmp_path / "out.npy"), check=False))
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_decoders_without_a_gpu_exit_2_and_auto_says_it_chose_a_cpu_decoder(celebdf_root, tmp_path):
    for decoder in ("nvdec", "dali"):
        result = run_cli(*build_args(celebdf_root, tmp_path / "g.zarr", "--decoder", decoder), check=False)
        assert "NVIDIA GPU" in one_line_error(result)
    assert not (tmp_path / "g.zarr").exists()
    result = run_cli(*build_args(celebdf_root, tmp_path / "auto.zarr", "--workers", "1"))
    layout, decoder = result.stdout.splitlines()[:2]  # the data set's layout comes first, then the decoder
    assert layout.startswith("layout celebdf (found by its folders") and decoder.startswith(
        "decoder auto: pyav (no NVIDIA GPU"
    )
    with open_store(tmp_path / "auto.zarr") as store:
        assert store.spec.decoder == "pyav" and (store.status != PENDING).all()


def test_an_existing_store_needs_resume(stores, celebdf_root):
    before = sorted(p.stat().st_mtime_ns for p in stores["zarr"].rglob("*"))
    assert "--resume" in one_line_error(run_cli(*build_args(celebdf_root, stores["zarr"]), check=False))
    assert sorted(p.stat().st_mtime_ns for p in stores["zarr"].rglob("*")) == before


def test_eight_videos_from_eight_sources_build_with_both_classes_in_train_and_val(celebdf_root, tmp_path):
    root = tmp_path / "small"
    video = (celebdf_root / "Celeb-real/id0_0000.mp4").read_bytes()
    names = [f"Celeb-real/id{i}_0000.mp4" for i in range(4)] + [
        f"Celeb-synthesis/id{i + 4}_id{i}_0000.mp4" for i in range(4)
    ]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(video)
    run_cli(*build_args(root, tmp_path / "s.zarr", "--workers", "1"))
    with open_store(tmp_path / "s.zarr") as store:
        for split in ("train", "val"):
            assert set(store.label[store.rows(split)].tolist()) == {0, 1}
    (root / "Celeb-real" / "id1_0000.mp4").rename(root / "Celeb-real" / "id0_0001.mp4")
    for name in ("id2_0000", "id3_0000"):
        (root / "Celeb-real" / f"{name}.mp4").unlink()
    line = one_line_error(run_cli(*build_args(root, tmp_path / "t.zarr"), check=False))
    assert "real videos from 1 source" in line and not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_retry_failed_decodes_failed_rows_again_and_keeps_the_rest(celebdf_root, tmp_path, suffix):
    root = tmp_path / "root"
    shutil.copytree(celebdf_root, root)
    store = tmp_path / f"s.{suffix}"
    args = build_args(root, store, "--workers", "1", "--clips-per-shard", "3")
    run_cli(*args)
    with open_store(store) as before:
        ok_before, clips_before = before.rows(), before.read(before.rows())
        assert (before.status == FAILED).sum() == 4
    shutil.copy(root / "Celeb-real/id0_0000.mp4", root / "Celeb-synthesis/id9_0001.mp4")  # the text file replaced
    assert "--retry-failed" in one_line_error(run_cli(*args, "--retry-failed", check=False))
    result = run_cli(*args, "--resume", "--retry-failed")
    assert "4 videos decoded" in result.stdout and "1 of 4 failed videos decoded again are now ok" in result.stdout
    with open_store(store) as after:
        replaced = after.path.tolist().index("Celeb-synthesis/id9_0001.mp4")
        assert after.status[replaced] == OK and (after.status == FAILED).sum() == 3
        assert (after.read(ok_before) == clips_before).all(), "rows that were ok are kept as they were"
        assert [read_number(frame) for frame in after.read([replaced])[0]] == after.frame_index[replaced].tolist()
