"""A GPU decoder that kills its process costs the videos it had in flight, not the build: tested on the CPU with a
stand-in (tests/aborting_decoder.py) that decodes with PyAV in the GPU decoding process, through the path nvdec and
dali take, and calls os.abort() on a chosen video."""

import subprocess
import sys
from multiprocessing import active_children
from multiprocessing.context import SpawnProcess
from pathlib import Path

import numpy as np
import pytest
from conftest import build_args, read_number

from cache import open_store
from cache.schema import FAILED, OK
from ingest.pool import DecodePool

TESTS = Path(__file__).resolve().parent
BUILD = f"""
import functools, sys
sys.path.insert(0, {str(TESTS)!r})
from aborting_decoder import AbortingDecoder
from ingest.cli import main
from ingest.decoders import stand_in
stand_in("aborting", functools.partial(AbortingDecoder, *sys.argv[1].split(",")))
sys.exit(main(sys.argv[2:]))
"""
FATAL = "Celeb-synthesis/id1_id2_0000.mp4"
DIED = "fell back to pyav: aborting: the GPU decoder's process died (SIGABRT) with this video among the"
GAVE_UP = "fell back to pyav: aborting: GPU decoding stopped: its process died twice in a row before it decoded a video"


def build(root: Path, out: Path, fatal: str) -> subprocess.CompletedProcess:
    args = build_args(root, out, "--decoder", "aborting", "--workers", "1", "--clips-per-shard", "3")
    result = subprocess.run([sys.executable, "-c", BUILD, fatal, *args[1:]], capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def assert_every_clip_is_its_frames(store) -> None:
    ok = store.rows()
    for row, clip in zip(ok, store.read(ok), strict=True):
        assert [read_number(frame) for frame in clip] == store.frame_index[row].tolist(), store.path[row]


@pytest.mark.slow
def test_a_gpu_process_that_aborts_costs_its_videos_in_flight_and_a_new_one_decodes_the_rest(celebdf_root, tmp_path):
    out = tmp_path / "crash.zarr"
    result = build(celebdf_root, out, Path(FATAL).name)
    with open_store(out) as store:
        paths = store.path.tolist()
        fatal = paths.index(FATAL)
        assert (store.status == FAILED).sum() == 4 and (store.status == OK).sum() == len(paths) - 4  # the broken files
        assert store.decoder[fatal] == "pyav" and store.error[fatal].startswith(DIED)
        for row in np.flatnonzero(store.status == FAILED):  # refused in the GPU process, then tried by PyAV there
            assert store.error[row].startswith("aborting: ") and "; pyav: " in store.error[row], store.error[row]
        lost = [row for row in range(len(paths)) if store.error[row].startswith(DIED)]
        assert fatal in lost and len(lost) <= 2  # one video in flight: at most 2 * 1 taken for lost
        before, after = range(fatal), range(max(lost) + 1, len(paths))
        assert after, "no row left for a new GPU process"
        for row in (*before, *after):
            assert store.decoder[row] in ("aborting", ""), (paths[row], store.error[row])  # "": a broken file
        assert_every_clip_is_its_frames(store)
    assert f"{len(lost)} of {len(paths) - 4} ok rows fell back to pyav" in result.stdout
    assert f"fell back {FATAL}: aborting: the GPU decoder's process died (SIGABRT)" in result.stdout


@pytest.mark.slow
def test_gpu_processes_that_die_before_decoding_anything_leave_the_rest_to_the_cpu(celebdf_root, tmp_path):
    out = tmp_path / "broken-gpu.zarr"
    result = build(celebdf_root, out, "*")
    with open_store(out) as store:
        ok = store.rows()
        assert len(ok) == len(store.status) - 4 and (store.decoder[ok] == "pyav").all()
        died = [row for row in ok if store.error[row].startswith(DIED)]
        assert died == [0, 1, 2, 3]  # two processes, each died on its first video and lost 2 * 1 in flight
        assert all(store.error[row].startswith(GAVE_UP) for row in ok if row not in died)
        assert_every_clip_is_its_frames(store)
    assert f"{len(ok)} of {len(ok)} ok rows fell back to pyav" in result.stdout


def test_a_cpu_pool_starts_no_gpu_process():
    with DecodePool("pyav", 1, (4, 32, 32, 3)):
        children = active_children()
        assert children and not any(isinstance(child, SpawnProcess) for child in children)
