"""A video whose decoding never ends costs its row, not the run (`--video-timeout`): its process is killed and
replaced. Tested with a stand-in decoder (tests/stalling_decoder.py) that blocks for ever in a read on one chosen
video, as a read on a hung network mount does, in the CPU workers and in the GPU decoding process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build_args, encode_numbered, read_number

from cache import open_store
from cache.schema import FAILED, OK
from ingest.pool import CRASHED
from train.run_config import CONFIG_FILE

TESTS = Path(__file__).resolve().parent
RUN = f"""
import functools, importlib, sys
sys.path.insert(0, {str(TESTS)!r})
from stalling_decoder import StallingDecoder
from ingest.decoders import stand_in
where, names, module, *args = sys.argv[1:]
stand_in("stalling", functools.partial(StallingDecoder, *names.split(",")), gpu=where == "gpu")
sys.exit(importlib.import_module(module).main(args))
"""
TIMEOUT = 3
TOO_LONG = f"decoding took longer than --video-timeout {TIMEOUT} s"
STALLED = "Celeb-real/id1_0000.mp4"
LIMIT = 240  # seconds a build may take here: one that waits for the stalled video for ever fails, not hangs


@pytest.fixture(scope="module")
def nine(tmp_path_factory) -> Path:
    """Nine numbered videos, each from a source of its own."""
    root = tmp_path_factory.mktemp("nine")
    for i in range(5):
        encode_numbered(root / f"Celeb-real/id{i}_0000.mp4", 20 + i)
    for i in range(4):
        encode_numbered(root / f"Celeb-synthesis/id{i + 5}_id{i}_0000.mp4", 30 + i)
    return root


def run_stalling(where: str, names: str, module: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m module args` in a process of its own, with the decoder "stalling" (a CPU or GPU decoder) that
    blocks on the first video of `names` (`stalled[,aborted,...]`) and aborts its process on the others."""
    command = [sys.executable, "-c", RUN, where, names, module, *args, "--video-timeout", str(TIMEOUT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def build(root: Path, out: Path, where: str, workers: int, aborted: str = "") -> subprocess.CompletedProcess:
    args = build_args(root, out, "--decoder", "stalling", "--workers", str(workers), "--clips-per-shard", "3")
    names = ",".join(Path(path).name for path in (STALLED, aborted) if path)
    return run_stalling(where, names, "ingest.cli", *args[1:])


def assert_every_clip_is_its_frames(store) -> None:
    ok = store.rows()
    for row, clip in zip(ok, store.read(ok), strict=True):
        assert [read_number(frame) for frame in clip] == store.frame_index[row].tolist(), store.path[row]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_video_that_never_decodes_on_the_cpu_is_a_failed_row_and_the_build_ends(nine, tmp_path, workers):
    out = tmp_path / "cpu.zarr"
    result = build(nine, out, "cpu", workers)
    with open_store(out) as store:
        stalled = store.path.tolist().index(STALLED)
        assert store.status[stalled] == FAILED and store.error[stalled] == TOO_LONG
        others = [row for row in range(len(store)) if row != stalled]
        assert (store.status[others] == OK).all() and (store.decoder[others] == "stalling").all()
        assert_every_clip_is_its_frames(store)
    assert f"failed {STALLED}: {TOO_LONG}" in result.stdout


@pytest.mark.slow
def test_a_video_that_never_decodes_beside_one_that_crashes_its_worker_fails_when_retried_alone(nine, tmp_path):
    """A crash breaks the pool, and the videos it was decoding are retried one at a time: the stalled one too."""
    out = tmp_path / "crash.zarr"
    aborted = "Celeb-real/id2_0000.mp4"
    build(nine, out, "cpu", 2, aborted)
    with open_store(out) as store:
        paths = store.path.tolist()
        stalled, crashed = paths.index(STALLED), paths.index(aborted)
        assert store.error[stalled] == TOO_LONG and store.error[crashed] == CRASHED
        others = [row for row in range(len(store)) if row not in (stalled, crashed)]
        assert (store.status[[stalled, crashed]] == FAILED).all() and (store.status[others] == OK).all()
        assert_every_clip_is_its_frames(store)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_video_that_never_decodes_on_the_gpu_falls_back_as_if_its_process_died(nine, tmp_path, workers):
    out = tmp_path / "gpu.zarr"
    result = build(nine, out, "gpu", workers)
    killed = f"fell back to pyav: stalling: the GPU decoder's process died (killed: {TOO_LONG}) with this video among"
    with open_store(out) as store:
        paths = store.path.tolist()
        assert (store.status == OK).all()
        lost = [row for row in range(len(paths)) if store.error[row].startswith(killed)]
        assert paths.index(STALLED) in lost and len(lost) <= 2 * workers and (store.decoder[lost] == "pyav").all()
        after = range(max(lost) + 1, len(paths))
        assert after and all(store.decoder[row] == "stalling" for row in after), "no new GPU process decoded the rest"
        assert_every_clip_is_its_frames(store)
    assert f"fell back {STALLED}: stalling: the GPU decoder's process died (killed: {TOO_LONG})" in result.stdout


@pytest.mark.slow
def test_prediction_gives_a_video_that_never_decodes_its_error_and_scores_the_rest(all_run, demo_root, tmp_path):
    """A run whose store a stalling decoder built: prediction decodes new videos with that decoder, in a pool."""
    run = tmp_path / "run"
    shutil.copytree(all_run[0] / "simple_cnn", run)
    config = json.loads((run / CONFIG_FILE).read_text())  # what prediction rebuilds the run from
    config["clip"]["decoder"] = "stalling"
    (run / CONFIG_FILE).write_text(json.dumps(config))
    stalled, other = demo_root / "Celeb-synthesis/id0_id1_0000.mp4", demo_root / "Celeb-real/id0_0000.mp4"
    args = ["--run", str(run), str(stalled), str(other), "--workers", "1"]
    lines = run_stalling("cpu", stalled.name, "train.predict", *args).stdout.splitlines()
    assert f"{'-':>6}  error  {stalled}: {TOO_LONG}" in lines
    assert any(line.endswith(f"  {other}") and line.split()[0] != "-" for line in lines)
    assert lines[-1].endswith(" 1 error")
