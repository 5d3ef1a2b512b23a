"""The trainer's feed on real stores: the sampler's order, every clip once, intact batches, Accelerate's shares."""

import threading

import numpy as np
import pytest
import torch
from conftest import build_both_formats

from cache import open_store
from cache.dataset import ClipDataset
from train.data import READER_THREADS, BatchFeed, Sharding, train_sampler


@pytest.fixture(scope="module")
def stores(demo_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("feed")
    return build_both_formats(demo_root, out, "feed", "--workers", "1", "--frames", "4", "--clips-per-shard", "3")


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(READER_THREADS)]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
@pytest.mark.parametrize("threads", [0, 1, 3])
def test_each_pass_reads_every_clip_once_in_the_samplers_order_and_leaves_held_batches_intact(stores, suffix, threads):
    dataset = ClipDataset(stores[suffix], "train")
    feed = BatchFeed(dataset, 2, threads=threads)
    with open_store(stores[suffix]) as store:
        for epoch in (1, 2):  # the second pass refills the first one's buffers
            feed.sampler = train_sampler(dataset, "weights", 42, epoch)
            order = dataset.rows[list(train_sampler(dataset, "weights", 42, epoch))]
            seen: list[int] = []
            kept = []  # labels and rows are kept for the whole pass, as evaluation gathers them
            for clips, labels, rows in feed:
                kept.append((labels, rows))
                assert rows.tolist() == order[len(seen) : len(seen) + len(rows)].tolist()
                expected = store.read(rows.numpy())  # meanwhile the readers run ahead into the other buffers
                assert clips.dtype == torch.uint8 and (clips.numpy() == expected).all()
                assert labels.tolist() == store.label[rows.numpy()].tolist()
                seen += rows.tolist()
            assert seen == order.tolist() and sorted(seen) == sorted(dataset.rows.tolist())
            for labels, rows in kept:
                assert labels.tolist() == store.label[rows.numpy()].tolist(), "a later batch overwrote these labels"
    assert len(dataset) % 2 == 1, "the store should end on a short batch"


def shares(length: int, batch_size: int, count: int, even: bool) -> list[list[np.ndarray]]:
    """Each process's batches of dataset indices; a plan needs only the dataset's length."""
    return [
        [np.asarray(batch) for batch in BatchFeed(range(length), batch_size, sharding=Sharding(i, count, even)).plan()]
        for i in range(count)
    ]


@pytest.mark.parametrize("length", [15, 16, 5])
def test_training_shares_hold_every_clip_once(length):
    one, two = shares(length, 3, 2, even=False)
    assert sorted(np.concatenate(one + two).tolist()) == list(range(length))
    assert 0 <= len(one) - len(two) <= 1
    # Batch i of the whole pass goes to process i mod 2, as Accelerate deals them.
    whole = [np.arange(start, min(start + 3, length)) for start in range(0, length, 3)]
    assert all((a == b).all() for a, b in zip(one, whole[::2], strict=True))
    assert all((a == b).all() for a, b in zip(two, whole[1::2], strict=True))


@pytest.mark.parametrize("length", [15, 16, 5, 2])
def test_evaluation_shares_are_even_and_gather_back_to_the_split_in_order(length):
    one, two = shares(length, 3, 2, even=True)
    assert len(one) == len(two) and all(len(batch) == 3 for batch in one + two)
    gathered = np.concatenate([part for pair in zip(one, two, strict=True) for part in pair])
    assert gathered[:length].tolist() == list(range(length))


def test_a_consumer_that_stops_early_leaves_no_reader_thread(stores):
    dataset = ClipDataset(stores["zarr"], "train")
    feed = BatchFeed(dataset, 2, threads=3)
    for _ in feed:
        assert reader_threads()
        break
    assert reader_threads() == []
    assert sum(len(rows) for _, _, rows in feed) == len(dataset), "a later pass starts afresh"
    assert reader_threads() == []


def test_a_failed_read_reaches_the_consumer_and_stops_the_readers(stores, tmp_path):
    dataset = ClipDataset(stores["h5"], "train")
    dataset.rows = dataset.rows.copy()
    dataset.rows[-1] = 10**6  # past the store's end: the last batch's read fails
    with pytest.raises(IndexError, match="out of range"):
        for _ in BatchFeed(dataset, 2, threads=2):
            pass
    assert reader_threads() == []
