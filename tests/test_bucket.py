"""Stores in a bucket: built into, resumed in and read from a real S3 server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import build_args, launch_two, lock_holder, new_bucket, one_line, run_cli, run_process, train_args

from bench.remote import free_port, local_s3_server
from cache.cli import main as cache_main
from cache.dataset import FeatureDataset
from cache.features import feature_entries
from cache.lock import BucketLock, LockLost, StoreLocked
from cache.schema import OK, PENDING, StoreError
from cache.shard_cache import ShardCache
from cache.store import open_store
from train.augment import ClipTransform
from train.checkpoint import find_last
from train.feature_cache import backbone_model
from train.models import ModelConfig

TINY = (  # the options of conftest's tiny_cache, a local build of the same videos
    "--workers",
    "1",
    "--frames",
    "4",
    "--size",
    "32",
)


def arrays(group: zarr.Group) -> dict[str, np.ndarray]:
    return {name: np.asarray(array[...]) for name, array in group.arrays()} | {
        f"probe/{name}": np.asarray(array[...]) for name, array in group["probe"].arrays()
    }


@pytest.fixture(scope="module")
def built(s3_server, demo_root) -> str:
    """The tiny store built into a bucket of its own, once for the module: its URL."""
    url = f"{new_bucket(s3_server.endpoint)}/stores/tiny.zarr"
    result = run_cli(*build_args(demo_root, url, *TINY))
    assert f"{url}: 14 ok, 0 failed, 0 pending" in result.stdout
    return url


@pytest.fixture
def shard_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "shard-cache"
    monkeypatch.setenv("CLIPCACHE_CACHE_DIR", str(folder))
    return folder


def test_a_store_built_into_a_bucket_equals_a_local_build(built, shard_cache, tiny_cache):
    url = built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remote = zarr.open_group(zarr.storage.ObjectStore(open_store(url).files.store, read_only=True), mode="r")
        here = zarr.open_group(tiny_cache, mode="r")
        ours, theirs = arrays(remote), arrays(here)
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    with open_store(url) as store, open_store(tiny_cache) as twin:
        rows = twin.rows()
        np.testing.assert_array_equal(store.read(rows), twin.read(rows))


def bucket_status(url: str) -> np.ndarray | None:
    """The store's `status` as the bucket holds it now; None before the store exists."""
    try:
        with open_store(url) as store:
            return store.status
    except StoreError:
        return None


def wait_for_part_of(url: str, process: subprocess.Popen) -> None:
    """Until the build writing `url` has stored some rows and not all (or has ended)."""
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        status = bucket_status(url)
        if status is not None and (status == OK).any() and (status == PENDING).any():
            return
        time.sleep(0.05)


def assert_same_as(url: str, reference) -> None:
    with open_store(url) as store, open_store(reference) as twin:
        for name in ("status", "label", "split", "path", "error", "frame_index", "decoder"):
            np.testing.assert_array_equal(getattr(store, name), getattr(twin, name), err_msg=name)
        np.testing.assert_array_equal(store.read(twin.rows()), twin.read(twin.rows()))


@pytest.mark.slow
def test_a_build_killed_mid_way_into_a_bucket_resumes_to_the_same_store(demo_root, bucket, tiny_cache):
    url = f"{bucket}/killed.zarr"
    args = build_args(demo_root, url, *TINY, "--clips-per-shard", "2")
    process = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_part_of(url, process)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    pending = int((bucket_status(url) == PENDING).sum())
    result = run_cli(*args, "--resume")
    assert f"{pending} videos decoded" in result.stdout
    assert f"took over the lock of {url} from process {process.pid}" in result.stdout
    assert_same_as(url, tiny_cache)


@pytest.mark.slow
def test_two_ranks_build_one_store_in_a_bucket(demo_root, bucket, tiny_cache):
    url = f"{bucket}/ranks.zarr"
    result = run_process(*launch_two("-m", *build_args(demo_root, url, *TINY, "--clips-per-shard", "4")))
    assert result.stdout.count("videos decoded") == 1
    with open_store(url) as store:
        assert store.spec.clips_per_shard == 4 and (store.status != PENDING).all()
    with open_store(url) as store, open_store(tiny_cache) as twin:
        np.testing.assert_array_equal(store.status, twin.status)
        np.testing.assert_array_equal(store.read(twin.rows()), twin.read(twin.rows()))


@pytest.fixture
def holder(bucket):
    """Another process holding the lock of BUCKET/s.zarr until its stdin closes."""
    with lock_holder(BucketLock, f"{bucket}/s.zarr") as process:
        yield process


def test_the_bucket_lock_refuses_a_second_holder_and_frees_on_release(bucket, holder):
    with pytest.raises(StoreLocked, match=f"s.zarr is being written by process {holder.pid} on "):
        BucketLock(f"{bucket}/s.zarr").acquire()
    holder.communicate("")
    lock = BucketLock(f"{bucket}/s.zarr")
    lock.acquire()
    assert lock.taken_over is None
    lock.release()


def test_the_bucket_lock_of_a_killed_holder_is_taken_over_and_named(bucket, holder):
    holder.kill()
    holder.wait()
    lock = BucketLock(f"{bucket}/s.zarr")
    lock.acquire()
    assert lock.taken_over is not None and lock.taken_over.pid == holder.pid
    with pytest.raises(StoreLocked, match=f"by process {os.getpid()} on "):
        BucketLock(f"{bucket}/s.zarr").acquire()
    lock.release()


def test_a_stale_lock_of_another_host_is_taken_over(bucket, monkeypatch):
    """A build killed on another machine leaves a lock nobody rewrites: after STALE seconds it is free."""
    first = BucketLock(f"{bucket}/s.zarr")
    first.acquire()
    first._stop.set()  # the holder's machine dies: no more heartbeats, and its lock stays
    monkeypatch.setattr(socket, "gethostname", lambda: "another-node")
    with pytest.raises(StoreLocked):
        BucketLock(f"{bucket}/s.zarr").acquire()
    monkeypatch.setattr(BucketLock, "STALE", 0.0)
    second = BucketLock(f"{bucket}/s.zarr")
    second.acquire()
    assert second.taken_over.host != "another-node"
    second.release()


@pytest.mark.slow
def test_a_build_whose_lock_is_taken_over_stops_writing_at_once_exit_6_and_resume_finishes(
    demo_root, bucket, s3_server, tiny_cache, monkeypatch
):
    """Another build takes the lock over mid-build (as one would from a build paused past STALE): the build writes
    no shard once it knows (a shard already being written may land), leaves the taker's lock alone, ends in one
    line with exit 6, and once the taker lets go, --resume finishes the store as a build left alone would."""
    url = f"{bucket}/taken.zarr"
    args = build_args(demo_root, url, *TINY, "--clips-per-shard", "2")
    process = subprocess.Popen(
        [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_part_of(url, process)
        monkeypatch.setattr(BucketLock, "STALE", 0.0)
        taker = BucketLock(url)
        taker.acquire()
        taken = len(s3_server.app.requests)
        errors = process.communicate(timeout=120)[1]
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 6, errors
    line = one_line(errors, f"ingest: error: {url}: its lock was taken over by process {os.getpid()} on ")
    assert line.endswith("run the same command with --resume to finish it once that build has ended")
    store, lock = "/" + url.removeprefix("s3://") + "/", "/" + url.removeprefix("s3://") + ".lock"
    after = s3_server.app.requests[taken:]
    checked = after.index(("HEAD", lock))  # the build's first look at its lock since the takeover
    clips_puts = [i for i, (method, path) in enumerate(after) if method == "PUT" and path.startswith(store + "clips/")]
    assert len([i for i in clips_puts if i < checked]) <= 1, "at most the shard being written lands"
    assert not [path for method, path in after[checked:] if method == "PUT" and path.startswith(store)]
    assert not [path for method, path in after if method == "DELETE" and path == lock], "the taker's lock stays"
    taker.release()
    result = run_cli(*args, "--resume")
    assert "0 failed, 0 pending" in result.stdout
    assert_same_as(url, tiny_cache)


def test_a_holder_learns_from_its_heartbeat_that_its_lock_was_taken_over_and_leaves_it_to_the_taker(
    bucket, monkeypatch
):
    monkeypatch.setattr(BucketLock, "HEARTBEAT", 0.05)
    holder = BucketLock(f"{bucket}/s.zarr")
    holder.acquire()
    stale, here = BucketLock.STALE, socket.gethostname
    monkeypatch.setattr(BucketLock, "STALE", 0.0)
    monkeypatch.setattr(socket, "gethostname", lambda: "another-node")  # the taker: another machine's build
    taker = BucketLock(f"{bucket}/s.zarr")
    taker.acquire()
    monkeypatch.setattr(BucketLock, "STALE", stale)
    monkeypatch.setattr(socket, "gethostname", here)
    deadline = time.monotonic() + 60
    while holder.lost is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(LockLost, match="s.zarr: its lock was taken over by process .* on another-node since "):
        holder.check()
    holder.release()
    with pytest.raises(StoreLocked, match="on another-node"):
        BucketLock(f"{bucket}/s.zarr").acquire()
    taker.release()


def test_cache_info_verify_and_show_read_a_store_in_a_bucket(built, tiny_cache, tmp_path, shard_cache, capsys):
    folder = tmp_path / "cache"

    def cache(*args: str) -> str:
        assert cache_main(list(args)) == 0
        return capsys.readouterr().out

    info, here = cache("info", built), cache("info", str(tiny_cache))
    assert info.splitlines()[0] == f"{built} (zarr, schema clipcache/1)"
    assert "MiB in the bucket" in info and info.splitlines()[2:] == here.splitlines()[2:]
    assert "14 ok clips read, 0 problems" in cache("verify", built, "--cache-dir", str(folder))
    shards = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("clips/c/*/0/0/0/0"))
    bucket_name, _, key = built.removeprefix("s3://").partition("/")
    assert shards == [f"{bucket_name}/{key}/clips/c/{i}/0/0/0/0" for i in range(2)], "whole shards, as in the bucket"
    picture = tmp_path / "row.png"
    cache("show", built, str(tiny_cache), "--row", "1", "--out", str(picture), "--cache-dir", str(folder))
    assert picture.stat().st_size > 1000


def shards_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("clips/c/*/0/0/0/0"))


READ_IN_WORKERS = """
import sys
from pathlib import Path
import numpy as np, torch
from torch.utils.data import DataLoader
from cache.dataset import ClipDataset, collate_clips
from cache.shard_cache import ShardCacheConfig
url, folder, out = sys.argv[1:]
dataset = ClipDataset(url, "train", cache=ShardCacheConfig(Path(folder), 2**30))
loader = DataLoader(dataset, 4, num_workers=2, multiprocessing_context="spawn", collate_fn=collate_clips)
np.save(out, torch.cat([batch[0] for batch in loader]).numpy())
"""


def test_the_shard_cache_settings_go_with_the_dataset_to_its_workers_not_through_the_environment(
    built, tiny_cache, tmp_path, shard_cache, capsys
):
    """A command's --cache-dir reaches the stores it opens and sets nothing for what runs after it; a dataset
    carries its shard cache to DataLoader workers that start afresh (spawned, in a process of their own: the
    spawn's resource tracker would outlive the test), which read through it."""
    given = tmp_path / "given"
    assert cache_main(["verify", built, "--cache-dir", str(given), "--cache-limit", "1G"]) == 0
    assert "14 ok clips read" in capsys.readouterr().out and len(shards_under(given)) == 2
    assert os.environ["CLIPCACHE_CACHE_DIR"] == str(shard_cache), "the command changed the environment"
    folder, out = tmp_path / "workers", tmp_path / "clips.npy"
    subprocess.run([sys.executable, "-c", READ_IN_WORKERS, built, str(folder), str(out)], check=True, timeout=300)
    with open_store(tiny_cache) as twin:
        np.testing.assert_array_equal(np.load(out), twin.read(twin.rows("train")))
    assert len(shards_under(folder)) == 2 and not shards_under(shard_cache)


def shard_gets(server, url: str) -> list[str]:
    """The GETs of the store's clip shards that the server answered so far."""
    prefix = "/" + url.removeprefix("s3://") + "/clips/c/"
    return [path for method, path in server.app.requests if method == "GET" and path.startswith(prefix)]


@pytest.mark.slow
def test_training_reads_each_shard_from_the_bucket_once_then_from_the_local_cache(
    built, s3_server, tiny_cache, tmp_path
):
    folder = tmp_path / "cache"
    before = len(shard_gets(s3_server, built))
    out = tmp_path / "run"
    run_cli(*train_args(built, out, "simple_cnn", "--epochs", "2", "--cache-dir", str(folder)))
    fetched = shard_gets(s3_server, built)[before:]
    assert sorted(fetched) == sorted(set(fetched)) and len(fetched) == 2, "each shard once: epoch 2 reads the cache"
    history = (out / "simple_cnn" / "history.csv").read_text().splitlines()
    assert len(history) == 3, "two epochs trained"
    scored = run_cli(
        "train.evaluate", "--run", str(out), "--cache", built, "--split", "all", "--cache-dir", str(folder)
    )
    assert "tiny" in scored.stdout and len(shard_gets(s3_server, built)) == before + 2, "scored from the cache"
    explained = tmp_path / "explain"
    explain = ["train.explain", "--run", str(out / "simple_cnn"), "--cache", built, "--rows", "0"]
    run_cli(*explain, "--out", str(explained), "--cache-dir", str(folder))
    assert len(list(explained.glob("*.png"))) == 1
    assert sum(p.stat().st_size for p in folder.rglob("clips/c/*/0/0/0/0")) == sum(
        p.stat().st_size for p in (tiny_cache / "clips" / "c").rglob("*") if p.is_file()
    )


def test_the_shard_cache_keeps_to_its_limit_least_recently_read_out_first(tmp_path):
    cache = ShardCache(tmp_path, limit=3000)
    files = [tmp_path / "b" / "s.zarr" / "clips" / "c" / str(i) for i in range(4)]
    for file in files[:3]:
        cache.add(file, b"x" * 1000)
    assert cache.cached(files[0])  # read again: now the newest
    os.utime(files[0], ns=(time.time_ns() + 10**9,) * 2)  # mtimes in one tick of a coarse clock must still order
    cache.add(files[3], b"y" * 1000)
    assert [file.exists() for file in files] == [True, False, True, True]
    assert cache.size() == 3000 and not list(tmp_path.rglob("*.partial"))


def test_reader_threads_read_right_through_a_cache_too_small_to_keep_a_shard(built, tiny_cache, tmp_path):
    """Each thread's shard may be let go by another's fetch before it opens it: it fetches it again."""
    with open_store(built) as store, open_store(tiny_cache) as twin:
        store.files.cache = ShardCache(tmp_path, limit=1)
        rows = np.tile(twin.rows(), 3)
        with ThreadPoolExecutor(4) as pool:
            clips = list(pool.map(lambda row: store.read([row])[0], rows))
        np.testing.assert_array_equal(np.stack(clips), twin.read(rows))
    assert ShardCache(tmp_path, limit=1).size() <= max(p.stat().st_size for p in tmp_path.rglob("clips/c/*/0/0/0/0"))


def fill(folder: Path, name: str) -> None:
    cache = ShardCache(folder, 20_000)
    for i in range(60):
        cache.add(folder / name / str(i), bytes(1000))


def test_processes_sharing_a_shard_cache_keep_it_under_its_limit(tmp_path):
    fork = multiprocessing.get_context("fork")
    fillers = [fork.Process(target=fill, args=(tmp_path, name)) for name in ("a", "b", "c")]
    for filler in fillers:
        filler.start()
    for filler in fillers:
        filler.join(timeout=120)
    assert [filler.exitcode for filler in fillers] == [0, 0, 0]
    assert ShardCache(tmp_path, 20_000).size() <= 20_000 and not list(tmp_path.rglob("*.partial"))


def test_the_shard_cache_lists_its_folder_once_not_on_every_fetch(tmp_path, monkeypatch):
    """The folder's first user indexes it; from then on, shards put in by several processes, each letting the
    oldest go, keep the cache to its limit from the index alone, even for a process whose view predates the
    others' changes. Listing the folder on every fetch cost a stat of every shard of the cache."""
    parent = ShardCache(tmp_path, 20_000)
    parent.add(tmp_path / "first", bytes(1000))

    def listed(*_):
        raise AssertionError("the shard cache listed its folder")

    monkeypatch.setattr(os, "walk", listed)
    fork = multiprocessing.get_context("fork")
    fillers = [fork.Process(target=fill, args=(tmp_path, name)) for name in ("a", "b")]
    for filler in fillers:
        filler.start()
    for filler in fillers:
        filler.join(timeout=120)
    last = [tmp_path / "last" / str(i) for i in range(5)]
    for file in last:
        parent.add(file, bytes(1000))
    monkeypatch.undo()
    assert [filler.exitcode for filler in fillers] == [0, 0]
    assert parent.size() == 20_000 and all(file.exists() for file in last)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_missing_bucket_is_one_line_naming_the_store_exit_2(s3_server, demo_root, tmp_path, capsys):
    url = "s3://no-such-bucket-here/a/tiny.zarr"
    assert cache_main(["info", url]) == 2
    assert one_error_line(capsys.readouterr().err) == f"cache: error: {url}: no such bucket 'no-such-bucket-here'"
    result = run_cli(*build_args(demo_root, url, *TINY), check=False)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == f"ingest: error: {url}: no such bucket"


@pytest.mark.parametrize(
    "url, says",
    [
        ("s3://clips/x.h5", "a store in a bucket is a Zarr store (NAME.zarr); HDF5 needs a filesystem"),
        ("s3://clips", "a store in a bucket is s3://BUCKET/PATH/NAME.zarr"),
    ],
)
def test_a_bucket_holds_zarr_stores_only_said_in_one_line(url, says, capsys):
    assert cache_main(["info", url]) == 2
    assert one_error_line(capsys.readouterr().err) == f"cache: error: {url}: {says}"


def test_an_unreachable_endpoint_is_one_line_exit_2(bucket, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert cache_main(["info", f"{bucket}/tiny.zarr"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"cache: error: {bucket}/tiny.zarr: cannot reach http://127.0.0.1:")


def test_wrong_credentials_are_one_line_exit_2(built, s3_server, monkeypatch, capsys):
    import requests

    reset = f"{s3_server.endpoint}/moto-api/reset-auth"
    requests.post(reset, data="0", timeout=10)  # moto checks every request's key from now on
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
        assert cache_main(["info", built]) == 2
    finally:
        requests.post(reset, data="inf", timeout=10)
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"cache: error: {built}: ") and "credentials" in line


def stop_when(process: subprocess.Popen, server, ready) -> str:
    """Stop `server` (its socket closed: a network gone) once `ready()`, and `process`'s stderr when it ends."""
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.02)
    finally:
        server.stop()
        server._server.server_close()
    return process.communicate(timeout=120)[1]


@pytest.mark.slow
def test_a_server_gone_mid_build_ends_with_one_line_exit_5_and_resume_finishes(
    demo_root, tiny_cache, s3_server, shard_cache
):
    """The server stops answering part way: the build keeps its finished shards, says how to go on, and the same
    command with --resume finishes once a server answers at that address again."""
    port = free_port()
    with local_s3_server(port) as (server, endpoint):
        url = f"{new_bucket(endpoint)}/gone.zarr"
        args = build_args(demo_root, url, *TINY, "--clips-per-shard", "2")
        process = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

        def some_ok() -> bool:
            status = bucket_status(url)
            return status is not None and bool((status == OK).any())

        errors = stop_when(process, server, some_ok)
    assert process.returncode == 5, errors
    line = one_line(errors, f"ingest: error: {url}: cannot reach {endpoint} (after 3 retries): ")
    assert line.endswith("run the same command with --resume to finish it once the bucket answers again")
    with local_s3_server(port):
        assert "0 failed, 0 pending" in run_cli(*args, "--resume").stdout
        assert_same_as(url, tiny_cache)


@pytest.mark.slow
def test_a_server_gone_mid_training_keeps_the_last_epoch_and_resume_finishes(built, tmp_path):
    """A cache of 1 byte keeps no shard: every epoch fetches again, so the server's going stops the second."""
    port = free_port()
    out = tmp_path / "run"
    args = train_args(
        built, out, "simple_cnn", "--epochs", "4", "--cache-dir", str(tmp_path / "c"), "--cache-limit", "1"
    )
    with local_s3_server(port) as (server, endpoint):
        process = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        errors = stop_when(process, server, lambda: find_last(out / "simple_cnn" / "last") is not None)
    assert process.returncode == 5, errors
    line = one_line(errors, f"train: error: {built}: cannot reach {endpoint} (after 3 retries): simple_cnn's last ")
    assert line.endswith("run the same command with --resume to continue from it once the bucket answers again")
    with local_s3_server(port):
        run_cli(*args, "--resume")
    assert len((out / "simple_cnn" / "history.csv").read_text().splitlines()) == 5


@pytest.mark.slow
def test_features_are_written_back_into_the_bucket(built, shard_cache):
    """Last in the module: it adds an entry to the shared bucket store, which the tests above compare whole."""
    result = run_cli("train.features", built, "--backbone", "resnet18", "--cache-dir", str(shard_cache))
    with open_store(built) as store:
        ((name, spec),) = feature_entries(store).items()
        clips = store.read(store.rows()[:3])
    assert f"features/{name}" in result.stdout and spec.frame_size == 32
    values = FeatureDataset(built, name).values
    model = backbone_model(ModelConfig("resnet18"), 42).eval()
    with torch.no_grad():
        expected = model.forward_features(ClipTransform(train=False)(torch.from_numpy(clips)))
    torch.testing.assert_close(values[:3].float(), expected, atol=2e-2, rtol=2e-3)
