"""Fallbacks, counted: the GPU path's to PyAV (every GPU row fails for real on a machine without a GPU),
and the CPU decoders' to each other."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import build_args, encode_lying, encode_numbered, read_number, run_cli

from cache import open_store
from cache.schema import FAILED, OK, StoreSpec
from cache.writer import StoreWriter, create_store
from ingest.build import _collect_shards, _finish, _summarise
from ingest.clips import FELL_BACK, RowJob, decode_row, gpu_rows

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where the GPU decoder fails")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> list[RowJob]:
    """Two good videos and a file that is not one, for nvdec at 4 frames of 32 x 32."""
    folder = tmp_path_factory.mktemp("fallback")
    paths = [encode_numbered(folder / "a.mp4", 30), encode_numbered(folder / "b.mp4", 12)]
    (folder / "c.mp4").write_text("not a video\n")
    return [RowJob(row, str(path), "nvdec", 1, 4, 32, "squash") for row, path in enumerate([*paths, folder / "c.mp4"])]


def test_rows_the_gpu_fails_on_are_decoded_by_pyav_and_marked(jobs):
    outcomes = {outcome.row: outcome for outcome in gpu_rows(jobs, 2)}
    assert sorted(outcomes) == [0, 1, 2]
    for row in (0, 1):
        outcome, pyav = outcomes[row], decode_row(RowJob(row, jobs[row].path, "pyav", 1, 4, 32, "squash"))
        assert outcome.fell_back and outcome.error.startswith(f"{FELL_BACK}nvdec: ")
        assert (outcome.clip == pyav.clip).all() and (outcome.indices == pyav.indices).all()
        assert [read_number(frame) for frame in outcome.clip] == outcome.indices.tolist()
    broken = outcomes[2]
    assert broken.clip is None and not broken.fell_back
    assert broken.error.startswith("nvdec: ") and "; pyav: " in broken.error and "\n" not in broken.error


def test_a_gpu_store_counts_its_fallbacks_in_its_summary(jobs, tmp_path):
    out = tmp_path / "gpu.zarr"
    spec = StoreSpec(frames=4, size=32, decoder="nvdec", clips_per_shard=2)
    paths = [job.path for job in jobs]
    create_store(out, pd.DataFrame({"path": paths, "label": [0, 1, 0], "split": 0, "group": paths}), spec)
    with StoreWriter(out) as writer:
        for shard in _collect_shards(gpu_rows(jobs, 2), spec, len(jobs)):
            writer.write_shard(shard)
    summary = _summarise(out, 0, 1.0, "nvdec")
    assert (summary.ok, summary.failed, len(summary.fallbacks)) == (2, 1, 2)
    assert "2 of 2 ok rows fell back to pyav" in summary.line(out)
    assert [path for path, _ in summary.fallbacks] == paths[:2] and summary.fallbacks[0][1].startswith("nvdec: ")
    _finish(out, summary)
    assert zarr.open_group(out, mode="r").attrs["summary"]["fallbacks"] == 2
    with open_store(out) as store:
        assert store.status.tolist() == [OK, OK, FAILED] and np.char.startswith(store.error[:2], FELL_BACK).all()
        assert store.fell_back().tolist() == [0, 1]


REFUSED_BY_DECORD_ONLY = """
import sys
from ingest.decoders import make_decoder
from ingest.decoding import DecodeError
try:
    make_decoder("decord").decode(sys.argv[1], 4)
    sys.exit(1)
except DecodeError:
    make_decoder("pyav").decode(sys.argv[1], 4)
"""


def refused_by_decord(folder: Path) -> Path:
    """A truncated faststart MP4 that decord refuses and PyAV decodes, each in a process of its own as in a build
    (decord, after other videos in the same process, has read such a cut as far as it goes)."""
    for keep in (0.5, 0.6, 0.4, 0.7):
        path = encode_lying(folder / f"lying-{keep}.mp4", 200, keep)
        if (
            subprocess.run([sys.executable, "-c", REFUSED_BY_DECORD_ONLY, str(path)], capture_output=True).returncode
            == 0
        ):
            return path
    raise AssertionError("no cut file that decord refuses and PyAV decodes")


def test_a_decord_build_stores_which_decoder_made_each_clip_and_counts_the_fallbacks(tmp_path):
    root = tmp_path / "root"
    for name in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", "Celeb-synthesis/id3_id1_0000.mp4"):
        encode_numbered(root / name, 30)
    refused_by_decord(tmp_path).rename(root / "Celeb-synthesis/id2_id0_0000.mp4")
    store = tmp_path / "decord.h5"
    built = run_cli(*build_args(root, store, "--decoder", "decord", "--workers", "1"))
    assert "1 of 4 ok rows fell back to pyav" in built.stdout
    assert "fell back Celeb-synthesis/id2_id0_0000.mp4: " in built.stdout
    with open_store(store) as opened:
        made = dict(zip(opened.path.tolist(), opened.decoder.tolist(), strict=True))
        assert (opened.status == OK).all()
        reason = opened.error[opened.path.tolist().index("Celeb-synthesis/id2_id0_0000.mp4")]
    assert made.pop("Celeb-synthesis/id2_id0_0000.mp4") == "pyav" and set(made.values()) == {"decord"}
    assert reason.startswith("fell back to pyav: ")
    assert "ok clips by decoder: decord 3, pyav 1" in run_cli("cache", "info", str(store)).stdout
