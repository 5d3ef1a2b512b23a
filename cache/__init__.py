"""The clip store: schema `clipcache/1`, writing shards safely, reading clips fast.

The torch dataset is in `cache.dataset`, not here: `cache info` and the builds' workers start without torch's
seconds of import.
"""

from cache.schema import SCHEMA, StoreError, StoreSpec
from cache.store import ClipStore, open_store

__all__ = ["SCHEMA", "ClipStore", "StoreError", "StoreSpec", "open_store"]
