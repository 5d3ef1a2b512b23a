"""The bench's machinery on tiny inputs: timing, rows, tables, JSON, the plot, and a real run. Nothing about speed."""

import json
import os
from dataclasses import replace

import pytest
import torch
from conftest import encode_numbered, run_cli, run_process

from bench import scan as bench_scan
from bench import shard_cache as bench_shard_cache
from bench.context import BenchConfig, Context
from bench.decode import decode
from bench.faces import faces
from bench.features import features
from bench.read import read
from bench.remote import remote
from bench.results import append_markdown, latest, plot, save, table
from bench.stores import replicate
from bench.timing import Rate, Row, skipped
from bench.train import registry_setting, registry_steps, train_setting
from cache import open_store
from cache.dataset import ClipDataset
from ingest.layouts import find_videos
from train.models import MODEL_NAMES


def test_rate_reports_median_min_and_max_of_the_repeats():
    calls = []

    def work():
        calls.append(1)
        return 10

    rate = Rate.measure(work, repeat=3, unit="things/s", warmup=2)
    assert len(calls) == 5
    assert rate.low <= rate.median <= rate.high and rate.unit == "things/s"
    assert Rate.of_seconds(0.25, "x/s").median == 4


def test_rows_give_ratios_to_baseline_and_limit():
    row = Row("s", "m", Rate(10, 9, 11, "x/s"), Rate(2, 2, 2, "x/s"), "b", Rate(20, 20, 20, "x/s"), "l")
    assert row.versus_baseline == 5 and row.of_limit == 0.5
    empty = skipped("h2d", "GB/s", "no GPU")
    assert empty.versus_baseline is None and "not run: no GPU" in empty.note
    text = table([row, empty])
    assert text.count("\n") == 3 and "5.00x" in text and "0.50" in text and "not run: no GPU" in text


def test_results_are_saved_appended_and_plotted(tmp_path):
    rows = [Row("s", "m", Rate(10, 9, 11, "x/s"), Rate(2, 2, 2, "x/s"), "b"), skipped("h2d", "GB/s", "no GPU")]
    path, record = save(rows, tmp_path / "results", {"quick": True})
    saved = json.loads(path.read_text())
    assert saved["machine"]["cpus"] >= 1 and "torch" in saved["machine"]["versions"]
    assert saved["rows"][0]["versus_baseline"] == 5 and saved["rows"][1]["ours"] is None
    markdown = tmp_path / "RESULTS.md"
    append_markdown(rows, record, markdown)
    append_markdown(rows, record, markdown)
    assert markdown.read_text().count(record["date"]) == 2
    assert latest(tmp_path / "results") == path
    png = plot(path, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_config(demo_root, tiny_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    videos = [encode_numbered(work / f"v{i}.mp4", 30) for i in range(2)]
    cache = replicate(tiny_cache, work / "many.zarr", 20)
    return BenchConfig(videos=videos, data_root=demo_root, cache=cache, work=work, repeat=1, quick=True, workers=1)


def test_replicate_cycles_the_ok_clips_of_a_store(tiny_cache, bench_config):
    with open_store(tiny_cache) as source, open_store(bench_config.cache) as many:
        ok = source.rows()
        assert len(many) == 20 and (many.rows("train") == range(20)).all()
        assert (many.read([len(ok)]) == source.read([ok[0]])).all()
        assert many.path[len(ok)] == source.path[ok[0]]


def test_decode_and_read_stages_fill_their_rows(bench_config):
    context = Context()
    rows = decode(bench_config, context) + read(bench_config, context)
    decoded = [row for row in rows if row.stage.startswith("decode") and row.ours]
    assert {row.measures.split(",")[0] for row in decoded} == {"pyav", "decord"}
    alone = [row for row in decoded if "1 process" in row.measures]
    assert len(alone) == 2 and all(row.baseline and row.limit for row in alone)
    together = [row for row in decoded if "processes at once" in row.measures]
    assert len(together) == (len(os.sched_getaffinity(0)) > 1) and all(row.limit for row in together)
    assert any("not run" in row.note for row in rows)
    reads = [row for row in rows if row.stage == "store random read"]
    assert {"zarr", "h5"} == {row.measures.split(",")[0] for row in reads} and all(row.ours for row in reads)


def test_features_stage_computes_each_backbone_once_and_times_its_head(bench_config):
    context = Context()
    rows = features(bench_config, context)
    assert [row.stage for row in rows] == ["feature cache", "train step from features"] * 2
    assert all(row.ours and row.ours.median > 0 for row in rows)
    assert {row.measures.split(",")[0] for row in rows[::2]} == {"resnet18", "efficientnet_b0"}


def test_train_stage_runs_a_cpu_sized_setting_on_a_cpu_and_says_so_and_the_full_one_on_a_gpu(bench_config):
    full = replace(bench_config, quick=False, size=224, repeat=5)
    cpu = train_setting(full, torch.device("cpu"))
    assert cpu.sizes == {"simple_cnn": 64, "resnet18": 224, "effnet_lstm": 64} and cpu.repeat == 1
    assert cpu.note == "cpu-sized: resnet18 at 224px, others at 64px, fp32, 3 steps, 1 repeat"
    gpu = train_setting(full, torch.device("cuda"))
    assert set(gpu.sizes.values()) == {224} and gpu.repeat == 5 and gpu.precisions == ("bf16",) and not gpu.note
    quick = train_setting(bench_config, torch.device("cpu"))
    assert set(quick.sizes.values()) == {64} and not quick.note


def test_every_registered_model_takes_a_cpu_sized_step_and_says_so(bench_config):
    """One step of each registered model, the trainer's own, at a size a CPU takes in seconds; the GPU's setting is
    written beside it and named in the note."""
    rows = registry_steps(bench_config, ClipDataset(bench_config.cache, "train"), torch.device("cpu"))
    assert [row.measures.split(",")[0] for row in rows] == list(MODEL_NAMES)
    for row in rows:
        assert row.stage == "train step, every model" and row.ours.median > 0
        assert "fp32, batch 2 x 2 frames at 32px, cpu" in row.measures
        assert row.note.startswith("cpu-sized: 32px") and "224px in bf16 (written, not yet run on one)" in row.note
    gpu = registry_setting(replace(bench_config, size=224), torch.device("cuda"))
    assert (gpu.size, gpu.precision, gpu.note) == (224, "bf16", "")


def test_faces_stage_times_detection_and_the_face_build_beside_squash(face_root, bench_config, tmp_path):
    videos = [face_root / "Celeb-real/id0_0000.mp4", face_root / "Celeb-synthesis/id0_id1_0000.mp4"]
    hd = tmp_path / "hd"
    (hd / "Celeb-real").mkdir(parents=True)
    for name in ("id0_0000", "id1_0000"):  # 1920x1080, an 87 px face
        (hd / f"Celeb-real/{name}.mp4").symlink_to(face_root / "Celeb-real/id3_0000.mp4")
    config = replace(bench_config, videos=videos, data_root=face_root, work=tmp_path, hd_faces=hd)
    detection, build, accuracy, hd_detection, hd_build, hd_accuracy = faces(config, Context())
    assert detection.measures == "dlib HOG face detection as a build does, 480x320 frames, 1 thread"
    assert detection.ours.median > 0 and "a face in 16 of 16 sampled frames" in detection.note
    assert build.ours and build.baseline and "--resize squash" in build.baseline_name
    assert build.note.startswith("8 of 8 clips with a face") and build.measures.endswith("at 480x320")
    assert hd_detection.measures.startswith("dlib HOG face detection as a build does, 1920x1080 frames")
    assert hd_build.note.startswith("4 of 4 clips with a face") and hd_build.measures.endswith("at 1920x1080")
    assert accuracy.measures.endswith("2 videos at 480x320") and accuracy.ours.unit == "% of frames centred"
    assert (
        accuracy.note.startswith("32 of 32 frames centred")
        and "2 of 2 videos' median crop side within" in accuracy.note
    )
    assert hd_accuracy.measures.endswith("1 video at 1920x1080") and hd_accuracy.note.startswith("16 of 16 frames")


def test_bench_run_command_writes_results(demo_root, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_process(  # a process of its own: TMPDIR is read once a process
        "bench",
        "run",
        "--data",
        str(demo_root),
        "--quick",
        "--stages",
        "resize",
        "h2d",
        "--out",
        str(tmp_path / "results"),
        "--markdown",
        str(tmp_path / "RESULTS.md"),
        env={"TMPDIR": str(scratch)},
    )
    assert list(scratch.iterdir()) == [], "the bench's scratch stores outlive it"
    assert "| resize |" in result.stdout and "not run" in result.stdout
    assert len(list((tmp_path / "results").glob("*.json"))) == 1
    assert "| resize |" in (tmp_path / "RESULTS.md").read_text()
    assert run_cli("bench", "run", "--data", str(tmp_path / "none"), check=False).returncode == 2


def test_scan_stage_times_ingest_scan_on_a_dfdc_shaped_tree_beside_os_walk(bench_config, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_scan, "PARTS", 3)
    monkeypatch.setattr(bench_scan, "VIDEOS", 72)
    tree = bench_scan.dfdc_tree(tmp_path / "tree", 3, 72)
    table = find_videos(tree)
    assert len(table) == 72 and (table["label"] == 1).sum() == 60  # five fakes of each real, in its group
    assert table.groupby("group")["label"].apply(lambda labels: sorted(labels) == [0, 1, 1, 1, 1, 1]).all()
    (row,) = bench_scan.scan(replace(bench_config, work=tmp_path), Context())
    assert row.stage == "scan" and "72 empty videos in 3 parts" in row.measures
    assert row.ours.median > 0 and row.baseline.median > 0


def test_remote_stage_reads_an_epoch_from_a_local_s3_server_beside_local_disk(bench_config):
    rows = remote(bench_config, Context())
    assert [row.stage for row in rows] == ["store in a bucket"] * 2
    assert all(row.ours and row.limit and row.ours.median > 0 for row in rows)
    assert "127.0.0.1" in rows[0].note and "20 clips" in rows[0].measures


def test_shard_cache_stage_puts_shards_into_a_full_cache_beside_bare_file_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_shard_cache, "SHARDS", 300)
    config = BenchConfig(videos=[], data_root=tmp_path, cache=tmp_path / "no.zarr", work=tmp_path, repeat=1, quick=True)
    added, hits = bench_shard_cache.shard_cache(config, Context())
    assert "a cache of 30 shards" in added.measures and added.ours.median > 0 and added.limit.median > 0
    assert hits.ours.median > 0
    shards = [path for path in (tmp_path / "shard-cache" / "bench").rglob("*") if path.is_file()]
    assert len(shards) == 30, "full, one shard out for each put in"
