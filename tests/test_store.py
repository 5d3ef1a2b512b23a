"""Reading a store: the fast path against the libraries' own reads, the Dataset, `cache info` and `verify`."""

import numpy as np
import pytest
import torch
import zarr
from conftest import build_args, build_both_formats, encode_numbered, run_cli
from torch.utils.data import DataLoader

from cache import ClipDataset, StoreError, open_store
from cache.schema import OK


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
