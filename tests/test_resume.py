"""A build killed with SIGKILL resumes to exactly what an uninterrupted build writes; ranks share one store."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import zarr
from conftest import build_args, build_both_formats, encode_numbered, launch_two, one_line, run_cli, run_process
from test_build import assert_same_store, one_line_error

from cache import open_store
from cache.cli import disk_size
from cache.schema import OK, PENDING
from cache.shards import partial_files, partial_name
from ingest.clips import RowJob
from ingest.pool import DecodePool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    """Enough videos, large enough, for a kill to land in the middle of a build."""
    root = tmp_path_factory.mktemp("many")
    for i in range(14):
        encode_numbered(root / "Celeb-real" / f"id{i}_0000.mp4", 100, 320, 176)
        for j in range(2):
            encode_numbered(root / "Celeb-synthesis" / f"id{i}_id{(i + j + 1) % 14}_000{j}.mp4", 100, 320, 176)
    return root


@pytest.fixture(scope="module")
def reference(many_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return build_both_formats(many_videos, out, "whole", "--workers", "1", "--clips-per-shard", "2")


def chunk_files(store) -> dict[str, bytes]:
    """Every file of a Zarr store but the group's own metadata (its attributes hold the run's summary): a temporary
    file a kill left beside a shard counts, as `--resume` removes them."""
    files = {p.relative_to(store).as_posix(): p for p in store.rglob("*") if p.is_file()}
    return {name: p.read_bytes() for name, p in files.items() if name != "zarr.json"}


def assert_same_files(store, reference) -> None:
    ours, theirs = chunk_files(store), chunk_files(reference)
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if ours[name] != theirs[name]] == []


def status_of(path):
    if path.suffix == ".zarr":
        return zarr.open_group(path, mode="r")["status"][:]
    with h5py.File(path, "r", locking=False) as f:
        return f["status"][:]


def kill_mid_build(args, store, stop: int = signal.SIGKILL) -> str:
    """Start a build in its own process group and send `stop` to all of it (as a terminal's Ctrl-C reaches
    every process of its group) once some, not most, rows are done; the build's stderr."""
    errors = store.with_name(f"{store.name}.stderr")
    with errors.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", *args], start_new_session=True, stdout=subprocess.DEVNULL, stderr=sink
        )
        deadline = time.monotonic() + 120
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if store.exists():
                    status = status_of(store)
                    if (status == OK).any() and (status == PENDING).mean() > 0.3:
                        os.killpg(process.pid, stop)
                        break
                time.sleep(0.005)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    expected = -signal.SIGKILL if stop == signal.SIGKILL else 128 + stop
    assert process.returncode == expected, f"the build ended before it could be stopped:\n{errors.read_text()}"
    return errors.read_text()


@pytest.mark.parametrize(
    "suffix, stop, workers",
    [
        ("zarr", signal.SIGKILL, 1),
        ("h5", signal.SIGKILL, 1),
        ("zarr", signal.SIGINT, 1),
        ("h5", signal.SIGTERM, 1),
        ("zarr", signal.SIGINT, 2),
        ("zarr", signal.SIGTERM, 2),
    ],
    ids=["zarr-sigkill", "h5-sigkill", "zarr-ctrl-c", "h5-sigterm", "zarr-ctrl-c-2-workers", "zarr-sigterm-2-workers"],
)
def test_resume_after_a_kill_or_interruption_equals_an_uninterrupted_build(
    many_videos, reference, tmp_path, suffix, stop, workers
):
    store = tmp_path / f"killed.{suffix}"
    args = build_args(many_videos, store, "--workers", str(workers), "--clips-per-shard", "2")
    errors = kill_mid_build(args, store, stop)
    if stop != signal.SIGKILL:
        one_line(errors, "ingest: interrupted: ")
        stored = int(re.search(r"interrupted: (\d+) of", errors).group(1))
        assert stored == int((status_of(store) != PENDING).sum()) and "with --resume" in errors
    with open_store(store) as killed, open_store(reference[suffix]) as whole:
        ok = np.flatnonzero(killed.status == OK)
        pending = int((killed.status == PENDING).sum())
        assert len(ok) and pending
        assert (killed.read(ok) == whole.read(ok)).all(), "a row marked ok holds a clip other than its own"
    result = run_cli(*args, "--resume")
    assert int(re.search(r"(\d+) videos decoded", result.stdout).group(1)) == pending
    assert (f"took over the lock of {store}" in result.stdout) == (stop == signal.SIGKILL), "a kill leaves its lock"
    assert_same_store(store, reference[suffix])
    if suffix == "zarr":
        assert_same_files(store, reference[suffix])
    assert not store.with_name(f"{store.name}.lock").exists()


def on_disk(store) -> str:
    return re.search(r"[\d.]+ MiB on disk", run_cli("cache", "info", str(store)).stdout).group(0)


def test_resume_removes_the_unfinished_shard_files_of_a_kill_and_cache_info_leaves_them_out(
    many_videos, reference, tmp_path
):
    store = tmp_path / "killed.zarr"
    args = build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2")
    kill_mid_build(args, store)
    size, line = disk_size(store), on_disk(store)
    # A kill seldom lands between a shard's temporary file and its rename: leave what it would, half a shard's
    # bytes in a file named as the writer (and zarr) name theirs, beside a shard the killed build wrote.
    shard = next(p for p in sorted((store / "clips").rglob("*")) if p.is_file() and p.name != "zarr.json")
    partial = partial_name(shard)
    partial.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert shard.stat().st_size // 2 > 0.1 * 2**20, "a file too small to change the size cache info prints"
    assert disk_size(store) == size and on_disk(store) == line
    left = partial_files(store)
    assert partial in left
    result = run_cli(*args, "--resume")
    assert f"removed {len(left)} unfinished shard file(s)" in result.stdout
    assert partial_files(store) == []
    assert_same_store(store, reference["zarr"])
    assert_same_files(store, reference["zarr"])


def test_a_second_build_of_the_same_store_is_refused_while_the_first_runs(many_videos, reference, tmp_path):
    store = tmp_path / "raced.zarr"
    args = build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2")
    first = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    lock = store.with_name("raced.zarr.lock")
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:  # written once it is held
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)  # however slow the second is to start, the first is still building
    try:
        line = one_line_error(run_cli(*args, check=False))
    finally:
        first.send_signal(signal.SIGCONT)
    assert f"is being written by process {first.pid}" in line
    _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    assert_same_store(store, reference["zarr"])


def test_two_ranks_build_the_same_store_as_one_process(many_videos, reference, tmp_path):
    store = tmp_path / "ranks.zarr"
    result = run_process(*launch_two("-m", *build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2")))
    assert result.stdout.count("videos decoded") == 1, "rank 0 alone writes the summary"
    assert f"{len(status_of(store))} videos decoded" in result.stdout
    assert_same_store(store, reference["zarr"])
    assert_same_files(store, reference["zarr"])


def test_hdf5_refuses_several_ranks(many_videos, tmp_path):
    result = run_process(*launch_two("-m", *build_args(many_videos, tmp_path / "r.h5")), check=False)
    assert result.returncode != 0 and "HDF5 store has one writer" in result.stderr
    assert not (tmp_path / "r.h5").exists()


def busy_workers(pid: int) -> list[psutil.Process]:
    """Decoding processes of a build: its busy children, forked from it."""
    build = psutil.Process(pid)
    found = []
    for child in build.children(recursive=True):
        try:
            if child.cmdline() == build.cmdline() and child.cpu_times().user > 0.02:
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_a_worker_killed_mid_build_loses_nothing(many_videos, reference, tmp_path):
    store = tmp_path / "worker-killed.zarr"
    args = build_args(many_videos, store, "--workers", "2", "--clips-per-shard", "2")
    process = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and process.poll() is None and time.monotonic() < deadline:
        workers = busy_workers(process.pid)
        if workers and store.exists() and (status_of(store) == PENDING).mean() > 0.3:
            victim = workers[0]
            victim.kill()
        time.sleep(0.01)
    output, _ = process.communicate(timeout=300)
    assert victim is not None, "the build ended before a worker could be killed"
    assert process.returncode == 0
    assert "0 failed, 0 pending" in output
    assert_same_store(store, reference["zarr"])


def test_a_worker_killed_while_it_waits_for_a_video_costs_nothing(many_videos):
    """The worker waiting for the next video holds the lock of the pool's job queue. Killed there, it must not
    leave the other worker, and so the build, waiting on that lock for ever."""
    paths = sorted(many_videos.rglob("*.mp4"))[:6]
    jobs = [RowJob(row, str(path), "pyav", 1, 4, 32, "squash") for row, path in enumerate(paths)]
    hung = threading.Event()

    def end_the_hang() -> None:
        hung.set()
        for child in psutil.Process().children(recursive=True):
            child.kill()

    with DecodePool("pyav", 2, (4, 32, 32, 3)) as pool:
        reader_of_the_queue().kill()
        watchdog = threading.Timer(60, end_the_hang)
        watchdog.start()
        outcomes = list(pool.rows(jobs))
        watchdog.cancel()
    assert not hung.is_set(), "the pool hung once its worker was killed"
    assert sorted(outcome.row for outcome in outcomes) == list(range(len(jobs)))
    assert all(outcome.clip is not None and not outcome.error for outcome in outcomes)


def reader_of_the_queue() -> psutil.Process:
    """The idle worker blocked reading the job queue's pipe (the other waits for the queue's lock)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in psutil.Process().children():
            if "pipe" in Path(f"/proc/{child.pid}/wchan").read_text():
                return child
        time.sleep(0.01)
    raise AssertionError("no worker was seen waiting for a video")


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_a_full_disk_ends_with_one_line_and_resume_finishes_once_space_is_freed(
    many_videos, reference, small_disk, suffix
):
    store = small_disk.path / f"full.{suffix}"
    args = build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2")
    result = run_cli(*args, check=False)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr, f"ingest: error: no space left on the device of {store}: ")
    stored = int(re.search(r": (\d+) of \d+ videos stored", line).group(1))
    assert 0 < stored == int((status_of(store) != PENDING).sum()) < len(status_of(store))
    small_disk.resize(64 * 2**20)
    run_cli(*args, "--resume")
    assert_same_store(store, reference[suffix])


def test_a_killed_build_leaves_no_worker_behind(many_videos, tmp_path):
    args = build_args(many_videos, tmp_path / "orphans.zarr", "--workers", "2", "--clips-per-shard", "2")
    process = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and process.poll() is None and time.monotonic() < deadline:
        workers = busy_workers(process.pid)
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert len(workers) == 2, "the build ended before its workers were seen"
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "a worker outlived the build it decoded for"


CRASHING_DECODER = """
import os, signal
from ingest.decoders import PyAVDecoder

decode = PyAVDecoder.decode


def crash_on_segv_files(self, path, count):
    if path.endswith("_SEGV.mp4"):
        os.kill(os.getpid(), signal.SIGSEGV)  # as a segfault inside FFmpeg would
    return decode(self, path, count)


PyAVDecoder.decode = crash_on_segv_files
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_a_decoder_that_crashes_its_process_fails_its_row_and_the_build_goes_on(demo_root, tmp_path, workers):
    root = tmp_path / "root"
    shutil.copytree(demo_root, root)
    shutil.copy(root / "Celeb-real/id1_0000.mp4", root / "Celeb-synthesis/id1_id2_SEGV.mp4")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(CRASHING_DECODER)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    store = tmp_path / "crash.zarr"
    result = run_process(*build_args(root, store, "--workers", str(workers), "--decoder", "pyav"), env=env)
    assert "1 failed, 0 pending" in result.stdout
    with open_store(store) as built:
        failed = np.flatnonzero(built.status != OK)
        assert built.path[failed].tolist() == ["Celeb-synthesis/id1_id2_SEGV.mp4"]
        assert built.error[failed[0]].startswith("the decoder crashed")
