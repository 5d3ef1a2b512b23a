"""A build killed with SIGKILL resumes to exactly what an uninterrupted build writes; ranks share one store."""

import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import psutil
import pytest
import zarr
from conftest import build_args, build_both_formats, encode_numbered, run_cli
from test_build import assert_same_store

from cache import open_store
from cache.schema import OK, PENDING

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


def status_of(path):
    if path.suffix == ".zarr":
        return zarr.open_group(path, mode="r")["status"][:]
    with h5py.File(path, "r", locking=False) as f:
        return f["status"][:]


def kill_mid_build(args, store) -> None:
    """Start a build in its own process group and SIGKILL all of it once some, not most, rows are done."""
    process = subprocess.Popen(
        [sys.executable, "-m", *args], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if store.exists():
                status = status_of(store)
                if (status == OK).any() and (status == PENDING).mean() > 0.3:
                    os.killpg(process.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the build ended before it could be killed"


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_resume_after_sigkill_equals_an_uninterrupted_build(many_videos, reference, tmp_path, suffix):
    store = tmp_path / f"killed.{suffix}"
    args = build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2")
    kill_mid_build(args, store)
    with open_store(store) as killed, open_store(reference[suffix]) as whole:
        ok = np.flatnonzero(killed.status == OK)
        pending = int((killed.status == PENDING).sum())
        assert len(ok) and pending
        assert (killed.read(ok) == whole.read(ok)).all(), "a row marked ok holds a clip other than its own"
    result = run_cli(*args, "--resume")
    assert int(re.search(r"(\d+) videos decoded", result.stdout).group(1)) == pending
    assert_same_store(store, reference[suffix])


def test_two_ranks_build_the_same_store_as_one_process(many_videos, reference, tmp_path):
    store = tmp_path / "ranks.zarr"
    launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    result = run_cli(*launch, *build_args(many_videos, store, "--workers", "1", "--clips-per-shard", "2"))
    assert result.stdout.count("videos decoded") == 1, "rank 0 alone writes the summary"
    assert f"{len(status_of(store))} videos decoded" in result.stdout
    assert_same_store(store, reference["zarr"])


def test_hdf5_refuses_several_ranks(many_videos, tmp_path):
    launch = ["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    result = run_cli(*launch, *build_args(many_videos, tmp_path / "r.h5"), check=False)
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
