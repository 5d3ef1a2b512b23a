"""The clip store: schema `clipcache/1`, writing shards safely, reading clips fast."""

from cache.dataset import ClipDataset, collate_clips
from cache.schema import SCHEMA, StoreError, StoreSpec
from cache.store import ClipStore, open_store

__all__ = ["SCHEMA", "ClipDataset", "collate_clips", "ClipStore", "StoreError", "StoreSpec", "open_store"]
