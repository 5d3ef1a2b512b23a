"""Opening a store read-only and reading clips fast.

A training loader reads random clips, so per-clip overhead decides its speed. Where the store is laid
out as we write it (uncompressed Zarr shards on a local disk, or a contiguous HDF5 dataset), `read`
finds each clip's bytes once and reads them with `os.preadv` straight into the output array; any
other layout falls back to the library's own reads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import zarr

from cache.bucket import Bucket, is_remote, store_location
from cache.schema import OK, PROBE_FIELDS, ROW_ARRAYS, SPLIT_CODES, ClipSettings, StoreError, StoreSpec, store_format
from cache.shard_cache import ShardCacheConfig
from cache.shards import MISSING, Files, LocalFiles, ShardLayout


class StoreHandle:
    """An open store: a zarr group, or an HDF5 file, which needs closing."""

    def __init__(
        self,
        path: str | Path,
        writable: bool = False,
        cache: ShardCacheConfig | None = None,
        guard: Callable[[], None] | None = None,
    ):
        self.location = store_location(path)
        self.format = store_format(self.location)
        mode = "r+" if writable else "r"
        self.files: Files | None = None  # a Zarr store's files, for the direct shard reads and writes
        if is_remote(self.location):
            bucket = Bucket(self.location, cache, guard)
            self.files = bucket
            self._root = zarr.open_group(bucket.zarr_store(writable), mode=mode, zarr_format=3)
        elif self.format == "zarr":
            self.files = LocalFiles(self.location)
            self._root = zarr.open_group(self.location, mode=mode, zarr_format=3)
        else:
            self._root = h5py.File(self.location, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.format == "hdf5":
            self._root.close()

    def answering(self) -> contextlib.AbstractContextManager:
        """Where zarr itself talks to a bucket: its errors end as the bucket's own do (nothing for a local store)."""
        return self.files.answering() if isinstance(self.files, Bucket) else contextlib.nullcontext()

    def flush(self) -> None:
        """Put what was written on disk before what comes next (Zarr's local store writes each chunk at once)."""
        if self.format == "hdf5":
            self._root.flush()


class ClipStore(StoreHandle):
    """A read-only store: the per-row arrays in memory, the clips on disk (for a store in a bucket, in the shard
    cache `cache` names)."""

    def __init__(self, path: str | Path, cache: ShardCacheConfig | None = None):
        if not store_exists(path):
            raise StoreError(f"{path}: no such store")
        try:
            super().__init__(path, cache=cache)
        except StoreError:
            raise
        except Exception as error:
            raise StoreError(f"{path}: cannot open as a store: {error}") from error
        self.attrs = {name: attr_value(value) for name, value in self._root.attrs.items()}
        self.spec = StoreSpec.from_attrs(self.attrs)
        self.clips = self._root["clips"]
        arrays = {name: _load(self._root[name]) for name in ROW_ARRAYS if name in self._root}
        self.label: np.ndarray = arrays["label"]
        self.split: np.ndarray = arrays["split"]
        self.frame_index: np.ndarray = arrays["frame_index"]
        self.path: np.ndarray = arrays["path"]
        self.group: np.ndarray = arrays["group"]
        self.status: np.ndarray = arrays["status"]
        self.error: np.ndarray = arrays["error"]
        self.decoder: np.ndarray = arrays.get("decoder", np.where(self.status == OK, self.spec.decoder, ""))
        self.face_box: np.ndarray = arrays.get(
            "face_box", np.full((len(self.status), self.spec.frames, 4), -1, np.int32)
        )
        self.face_detected: np.ndarray = arrays.get("face_detected", np.full(len(self.status), -1, np.int8))
        self._reader = _fast_reader(self)

    def __len__(self) -> int:
        return len(self.status)

    def rows(self, split: str | int | None = None) -> np.ndarray:
        """Row numbers of the ok clips of a split (all splits when None), in store order."""
        keep = self.status == OK
        if split is not None:
            code = SPLIT_CODES[split] if isinstance(split, str) else int(split)
            keep &= self.split == code
        return np.flatnonzero(keep)

    def fell_back(self) -> np.ndarray:
        """Rows of ok clips made by a decoder other than the store's: its fallback (the row's error says why)."""
        return np.flatnonzero((self.status == OK) & (self.decoder != self.spec.decoder))

    def without_face(self) -> np.ndarray:
        """Rows of ok clips of a face build in which no face was found: stored squashed."""
        return np.flatnonzero((self.status == OK) & (self.face_detected == 0))

    def read(self, rows, out: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
        """The clips of `rows`, in that order, as one uint8 array (len(rows), T, H, W, 3).

        `frames` (len(rows), F) picks F of each clip's stored frames, in that order: a clip of every k-th
        frame reads only those frames' bytes. `out` (C-contiguous uint8 of the result's shape) receives them
        instead of a new array: a reader that reuses its buffers skips the page faults of fresh memory, which
        cost as much as the reads themselves.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        t, h, w, c = self.spec.clip_shape()
        if frames is not None:
            frames = np.asarray(frames, dtype=np.int64).reshape(len(rows), -1)
            if frames.size and (frames.min() < 0 or frames.max() >= t):
                raise IndexError(f"frames out of range 0..{t - 1}")
        shape = (len(rows), t if frames is None else frames.shape[1], h, w, c)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 {shape}, not {out.dtype} {out.shape}")
        if self._reader is not None:
            self._reader.read_into(rows, out, frames)
        else:
            for i, row in enumerate(rows):
                out[i] = self.clips[int(row)] if frames is None else self.clips[int(row)][frames[i]]
        return out

    def locate(self, rows) -> list[tuple[Path, int]] | None:
        """(file, byte offset) of each clip's bytes, for tools that read or measure them directly (for a store in a
        bucket, in the local shard cache); None where the store's layout has no direct path (compressed)."""
        if self._reader is None:
            return None
        return [self._reader.locate(int(row)) for row in rows]

    def table(self) -> pd.DataFrame:
        """One row per video: the per-row arrays and the probe, for people and reports."""
        frame = pd.DataFrame(
            {
                "path": self.path,
                "label": self.label,
                "split": self.split,
                "group": self.group,
                "status": self.status,
                "error": self.error,
                "decoder": self.decoder,
            }
        )
        for name in PROBE_FIELDS:
            frame[name] = _load(self._root[f"probe/{name}"])
        return frame


def open_store(path: str | Path, cache: ShardCacheConfig | None = None) -> ClipStore:
    return ClipStore(path, cache)


def store_exists(path: str | Path) -> bool:
    """Whether a store is at `path`; for a bucket, StoreError where the bucket cannot be read (missing, refused,
    unreachable)."""
    return Bucket(str(path)).check() if is_remote(path) else Path(path).exists()


def clip_settings(path: str | Path) -> ClipSettings:
    """How the store's clips were made: what a new video must go through to match them."""
    with open_store(path) as store:
        return ClipSettings.of_spec(store.spec)


def attr_value(value):
    """HDF5 keeps nested attributes as JSON text; zarr keeps them as they are."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(("[", "{")):
        return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load(array) -> np.ndarray:
    if isinstance(array, h5py.Dataset) and array.dtype.kind in "SO":
        return array.asstr()[...].astype(str)
    values = array[...]
    return np.array(values.tolist(), dtype=str) if values.dtype.kind in "OT" else values


class _PreadReader:
    """Reads each clip with one `preadv` at a known file offset (a frame at a time where only some frames are
    wanted); `locate` says where."""

    def __init__(self, clip_bytes: int, frame_bytes: int, locate):
        self.clip_bytes = clip_bytes
        self.frame_bytes = frame_bytes
        self.locate = locate

    def read_into(self, rows: np.ndarray, out: np.ndarray, frames: np.ndarray | None = None) -> None:
        fds: dict[Path, int] = {}
        try:
            for i, row in enumerate(rows):
                file, offset = self.locate(int(row))
                if file is None:
                    out[i] = 0
                    continue
                if file not in fds:
                    try:
                        fds[file] = os.open(file, os.O_RDONLY)
                    except FileNotFoundError:  # a full shard cache let it go since `locate` fetched it: again
                        file, offset = self.locate(int(row))
                        fds[file] = os.open(file, os.O_RDONLY)
                if frames is None:
                    self._read(fds[file], file, out[i], offset, self.clip_bytes)
                    continue
                for j, frame in enumerate(frames[i]):
                    self._read(fds[file], file, out[i, j], offset + int(frame) * self.frame_bytes, self.frame_bytes)
        finally:
            for fd in fds.values():
                os.close(fd)

    @staticmethod
    def _read(fd: int, file: Path, into: np.ndarray, offset: int, size: int) -> None:
        if os.preadv(fd, [memoryview(into).cast("B")], offset) != size:
            raise StoreError(f"{file}: short read at byte {offset}")


def _fast_reader(store: ClipStore) -> _PreadReader | None:
    clip_bytes = int(np.prod(store.spec.clip_shape()))
    frame_bytes = clip_bytes // store.spec.frames
    if store.format == "hdf5":
        offset = store.clips.id.get_offset() if store.clips.chunks is None else None
        if offset is None or store.clips.compression is not None:
            return None
        return _PreadReader(clip_bytes, frame_bytes, lambda row: (store.location, offset + row * clip_bytes))
    shards = _ShardIndex.for_array(store.clips, store.spec, store.files)
    return None if shards is None else _PreadReader(clip_bytes, frame_bytes, shards.locate)


class _ShardIndex:
    """Where each clip lies inside its Zarr shard file, from the shard's own index at its end."""

    def __init__(self, layout: ShardLayout):
        self.layout = layout
        self._entries: dict[int, np.ndarray | None] = {}

    @classmethod
    def for_array(cls, array: zarr.Array, spec: StoreSpec, files: Files | None) -> _ShardIndex | None:
        layout = ShardLayout.of(array, files)
        if layout is None or tuple(array.metadata.chunk_grid.chunk_shape[1:]) != spec.clip_shape():
            return None
        return cls(layout)

    def locate(self, row: int) -> tuple[Path | None, int]:
        shard, inner = divmod(row, self.layout.per_shard)
        if shard not in self._entries:
            self._entries[shard] = self.layout.read_index(shard)
        entries = self._entries[shard]
        if entries is None or entries[inner, 0] == MISSING:
            return None, 0
        offset, nbytes = entries[inner]
        if nbytes != self.layout.chunk_bytes:
            file = self.layout.file(shard)
            raise StoreError(f"{file}: clip {row} holds {nbytes} bytes, not {self.layout.chunk_bytes}")
        return self.layout.file(shard), int(offset)
