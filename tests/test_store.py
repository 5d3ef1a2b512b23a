"""Reading a store: the fast path against the libraries' own reads, the Dataset, `cache info` and `verify`;
writing Zarr shards directly, as the bytes zarr itself writes."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from conftest import build_args, build_both_formats, encode_numbered, run_cli
from torch.utils.data import DataLoader
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

from cache import StoreError, open_store
from cache.dataset import ClipDataset
from cache.schema import FAILED, OK, PENDING, StoreSpec
from cache.shards import LocalFiles, ShardLayout, replace_file
from cache.writer import ShardResult, StoreWriter, create_store


@pytest.fixture(scope="module")
def demo_stores(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-stores")
    return build_both_formats(demo_root, out, "demo", "--workers", "1", "--clips-per-shard", "4")


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_read_returns_what_the_library_reads_in_any_order(demo_stores, suffix):
    with open_store(demo_stores[suffix]) as store:
        rows = np.random.default_rng(0).permutation(len(store))[:9].tolist() + [3, 3]
        assert store._reader is not None, "the fast path should serve our own layout"
        expected = np.stack([store.clips[r] for r in rows])
        assert (store.read(rows) == expected).all()
        assert store.read([]).shape == (0, *store.spec.clip_shape())
        with pytest.raises(IndexError):
            store.read([len(store)])


def test_rows_selects_ok_clips_of_a_split(demo_stores):
    with open_store(demo_stores["zarr"]) as store:
        train, val, test = store.rows("train"), store.rows("val"), store.rows("test")
        assert len(train) + len(val) + len(test) == len(store.rows()) == int((store.status == OK).sum())
        assert (store.split[val] == 1).all() and (store.split[test] == 2).all()


def test_a_compressed_store_falls_back_to_zarr_reads(demo_stores, tmp_path):
    source = zarr.open_group(demo_stores["zarr"], mode="r")
    copy = zarr.open_group(tmp_path / "copy.zarr", mode="w")
    copy.attrs.update(source.attrs.asdict())
    for name, array in source.arrays():
        copy.create_array(name, data=array[...], chunks=array.chunks)
    for name, array in source["probe"].arrays():
        copy.create_array(f"probe/{name}", data=array[...])
    with open_store(tmp_path / "copy.zarr") as compressed, open_store(demo_stores["zarr"]) as ours:
        assert compressed._reader is None
        assert (compressed.read([5, 0, 2]) == ours.read([5, 0, 2])).all()


def test_dataset_feeds_a_dataloader_with_worker_processes(demo_stores):
    dataset = ClipDataset(demo_stores["zarr"], "train")
    loader = DataLoader(dataset, batch_size=3, num_workers=2, shuffle=True, generator=torch.Generator().manual_seed(0))
    seen = []
    with open_store(demo_stores["zarr"]) as store:
        for clips, labels in loader:
            assert clips.dtype == torch.uint8 and clips.shape[1:] == (16, 64, 64, 3)
            for clip, label in zip(clips, labels, strict=True):
                row = next(r for r in dataset.rows if (store.read([r])[0] == clip.numpy()).all())
                assert label == store.label[row]
                seen.append(row)
    assert sorted(seen) == sorted(dataset.rows.tolist())


def test_opening_what_is_not_a_store_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["schema"] = "something/2"
    with pytest.raises(StoreError, match="not a clipcache/1 store"):
        open_store(tmp_path / "other.zarr")


def test_cache_info_counts_and_lists_failures(celebdf_root, tmp_path):
    store = tmp_path / "c.zarr"
    run_cli(*build_args(celebdf_root, store, "--workers", "1"))
    result = run_cli("cache", "info", str(store))
    assert "clipcache/1" in result.stdout and "MiB on disk" in result.stdout
    assert result.stdout.count("failed Celeb-synthesis/id9_") == 4
    assert "All" in result.stdout
    assert run_cli("cache", "verify", str(store)).returncode == 0


def test_cache_verify_flags_a_constant_clip(tmp_path):
    from ingest.demo import write_video

    root = tmp_path / "data"
    for i in range(3):
        encode_numbered(root / "Celeb-real" / f"id{i}_0000.mp4", 20)
        encode_numbered(root / "Celeb-synthesis" / f"id{i}_id{(i + 1) % 3}_0000.mp4", 20)
    grey = np.full((64, 96, 3), 128, np.uint8)
    write_video(root / "Celeb-synthesis" / "id0_id2_0001.mp4", [grey] * 10, 96, 64)
    store = tmp_path / "c.h5"
    run_cli(*build_args(root, store, "--workers", "1"))
    result = run_cli("cache", "verify", str(store), check=False)
    assert result.returncode == 1
    assert "id0_id2_0001.mp4" in result.stdout and "constant" in result.stdout
    assert run_cli("cache", "info", str(tmp_path / "none.zarr"), check=False).returncode == 2


def small_table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"v{i}.mp4" for i in range(n)], "label": 0, "split": 0, "group": "g"})


def shards_of(clips: np.ndarray, per_shard: int) -> list[ShardResult]:
    """Whole shards of `clips`, a row failed wherever its clip is all zeros: -1 frame indices, no probe, a reason.
    One failed row's fps is -0.0, which zarr stores: it is not the fill value 0.0 bit for bit."""
    shards = []
    for start in range(0, len(clips), per_shard):
        block = clips[start : start + per_shard]
        k, frames = block.shape[:2]
        ok = block.reshape(k, -1).any(axis=1)
        fps = np.where(ok, 25, 0).astype(np.float32)
        fps[np.arange(start, start + k) == 4] = -0.0
        probe = {"frames": np.where(ok, 20, 0).astype(np.int32), "fps": fps, "width": np.where(ok, 96, 0)}
        probe |= {"height": np.where(ok, 64, 0).astype(np.int32), "codec": np.where(ok, "h264", "")}
        probe["width"] = probe["width"].astype(np.int32)
        frame_index = np.where(ok[:, None], np.arange(frames, dtype=np.int32), -1).astype(np.int32)
        errors = ["" if good else "broken" for good in ok]
        decoders = ["pyav" if good else "" for good in ok]
        status = np.where(ok, OK, FAILED).astype(np.int8)
        shards.append(ShardResult(start, block, frame_index, status, errors, probe, decoders))
    return shards


def arrays_of(shard: ShardResult) -> dict[str, np.ndarray]:
    probe = {f"probe/{name}": values for name, values in shard.probe.items()}
    rows = {"frame_index": shard.frame_index, "error": np.array(shard.error), "decoder": np.array(shard.decoder)}
    return {"clips": shard.clips, **rows, **probe} | {"status": shard.status}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Seven clips in shards of three: a failed row in shard 0, every row failed in shard 1, a last shard of one."""
    clips = np.random.default_rng(1).integers(1, 256, (7, 2, 8, 8, 3), dtype=np.uint8)
    clips[1] = clips[3:6] = 0
    path = tmp_path_factory.mktemp("direct") / "direct.zarr"
    create_store(path, small_table(len(clips)), StoreSpec(frames=2, size=8, clips_per_shard=3))
    with StoreWriter(path) as writer:
        for name in arrays_of(shards_of(clips, 3)[0]):
            assert writer._direct(name) is not None, f"{name}: our own layout should take the direct path"
        for shard in shards_of(clips, 3):
            writer.write_shard(shard)
    return path, clips


def store_files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_direct_shard_writes_are_the_bytes_zarr_writes(written, tmp_path):
    path, clips = written
    reference = tmp_path / "zarr.zarr"
    create_store(reference, small_table(len(clips)), StoreSpec(frames=2, size=8, clips_per_shard=3))
    group = zarr.open_group(reference, mode="r+")
    for shard in shards_of(clips, 3):
        for name, values in arrays_of(shard).items():
            group[name][shard.rows] = values
    ours, theirs = store_files(path), store_files(reference)
    assert "clips/c/1/0/0/0/0" not in ours and "status/c/1" in ours, "a shard of failed rows has no clips file"
    assert "probe/fps/c/1" in ours and "probe/width/c/1" not in ours
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name] == theirs[name], name


def test_zarr_reads_every_array_of_a_directly_written_store_without_warnings(written):
    path, clips = written
    ok = np.array([1, 0, 1, 0, 0, 0, 1], bool)
    expected = {"status": np.where(ok, OK, FAILED), "frame_index": np.where(ok[:, None], [0, 1], -1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(path, mode="r")
        arrays = dict(group.arrays()) | {f"probe/{name}": array for name, array in group["probe"].arrays()}
        values = {name: array[...] for name, array in arrays.items()}
    assert len(values) == 16
    assert (values["face_detected"] == -1).all() and values["face_box"].shape == (7, 2, 4)
    assert (values["face_box"] == -1).all()
    assert values["clips"].shape == clips.shape and (values["clips"] == clips).all()
    for name, value in expected.items():
        assert (values[name] == value).all(), name
    assert values["error"].tolist() == ["", "broken", "", "broken", "broken", "broken", ""]
    assert values["decoder"].tolist() == ["pyav", "", "pyav", "", "", "", "pyav"]
    assert values["probe/codec"].tolist() == ["h264" if good else "" for good in ok]
    assert np.signbit(values["probe/fps"]).tolist() == [False] * 4 + [True] + [False] * 2
    with open_store(path) as store:
        assert (store.read(range(7)) == clips).all()


def test_a_new_store_has_chunk_files_only_for_arrays_of_values_other_than_their_fill(tmp_path):
    """Creating a store writes the table's columns and nothing for the arrays every row starts at the fill value
    of; those read as their fill, and the store's shards written afterwards verify."""
    path = tmp_path / "new.zarr"
    table = small_table(7).assign(label=[0, 1, 0, 1, 0, 1, 0], group=[f"g{i}" for i in range(7)])
    create_store(path, table, StoreSpec(frames=2, size=8, clips_per_shard=3))
    chunked = {name.rpartition("/c/")[0] for name in store_files(path) if "/c/" in name}
    assert chunked == {"label", "path", "group"}, "split is all 0, its fill value: no file"
    group = zarr.open_group(path, mode="r")
    assert group["label"][...].tolist() == table["label"].tolist() and (group["split"][...] == 0).all()
    assert group["path"][...].tolist() == table["path"].tolist()
    assert (group["status"][...] == PENDING).all() and set(group["error"][...].tolist()) == {""}
    assert (group["frame_index"][...] == -1).all() and group["face_box"][...].shape == (7, 2, 4)
    assert (group["face_box"][...] == -1).all() and (group["face_detected"][...] == -1).all()
    assert set(group["probe/codec"][...].tolist()) == {""} and not group["probe/width"][...].any()
    clips = np.random.default_rng(2).integers(1, 256, (7, 2, 8, 8, 3), dtype=np.uint8)
    with StoreWriter(path) as writer:
        for shard in shards_of(clips, 3):
            writer.write_shard(shard)
    assert "7 ok clips read, 0 problems" in run_cli("cache", "verify", str(path)).stdout


@pytest.mark.parametrize("checksum", [True, False])
def test_a_shard_index_without_a_checksum_is_written_as_zarr_writes_it(tmp_path, checksum):
    index_codecs = [BytesCodec(endian="little"), Crc32cCodec()] if checksum else [BytesCodec(endian="little")]
    sharding = ShardingCodec(chunk_shape=(1, 4), codecs=[BytesCodec()], index_codecs=index_codecs)
    clips = np.arange(1, 21, dtype=np.uint8).reshape(5, 4)
    clips[2] = 0
    folders = {}
    for way in ("zarr", "direct"):
        group = zarr.open_group(tmp_path / f"{way}.zarr", mode="w", zarr_format=3)
        array = group.create_array(
            "a", shape=(5, 4), dtype="uint8", chunks=(3, 4), serializer=sharding, compressors=None, fill_value=0
        )
        layout = ShardLayout.of(array, LocalFiles(tmp_path / f"{way}.zarr"))
        assert layout is not None and layout.checksum == checksum and layout.index_bytes == 3 * 16 + 4 * checksum
        for start in (0, 3):
            if way == "zarr":
                array[start : start + 3] = clips[start : start + 3]
            else:
                layout.write(start, clips[start : start + 3])
        folders[way] = tmp_path / f"{way}.zarr" / "a"
        assert (zarr.open_group(tmp_path / f"{way}.zarr", mode="r")["a"][...] == clips).all()
    assert store_files(folders["direct"]) == store_files(folders["zarr"])


def test_other_shard_layouts_are_left_to_zarr(tmp_path):
    group = zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3)
    start = ShardingCodec(chunk_shape=(1, 4), codecs=[BytesCodec()], index_location="start")
    compressed = ShardingCodec(chunk_shape=(1, 4), codecs=[BytesCodec(), ZstdCodec()])
    two_rows = ShardingCodec(chunk_shape=(2, 4), codecs=[BytesCodec()])
    for name, sharding in {"start": start, "compressed": compressed, "two_rows": two_rows}.items():
        array = group.create_array(
            name, shape=(5, 4), dtype="uint8", chunks=(4, 4), serializer=sharding, compressors=None, fill_value=0
        )
        assert ShardLayout.of(array, LocalFiles(tmp_path / "other.zarr")) is None, name
    unsharded = group.create_array("plain", shape=(5, 4), dtype="uint8", chunks=(3, 4), compressors=None)
    assert ShardLayout.of(unsharded, LocalFiles(tmp_path / "other.zarr")) is None


def test_a_failed_shard_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    file = tmp_path / "c" / "0"
    replace_file(file, [b"old"])
    with pytest.raises(TypeError):
        replace_file(file, [b"new bytes", object()])
    assert file.read_bytes() == b"old"
    assert [p.name for p in file.parent.iterdir()] == ["0"]


def test_cache_show_onto_a_full_disk_ends_with_one_line(tiny_cache, small_disk):
    (small_disk.path / "filler").write_bytes(b"\0" * (3 * 2**20 - small_disk.used() - 4096))
    out = small_disk.path / "strip.png"
    result = run_cli("cache.cli", "show", str(tiny_cache), "--out", str(out), check=False)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"cache: error: no space left on the device of {out}: {out} may be part written; run the same command again "
        "once space is freed"
    ]
