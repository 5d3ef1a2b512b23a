"""Creating a store and writing it one shard at a time, so that a kill never loses a finished row.

Every write goes to a whole shard: its clips first, then its metadata, then its `status` chunk last.
A whole Zarr shard is written as bytes straight to its files (see `cache.shards`), not through zarr.
A row is marked ok only after its clip is on disk, and a writer owns whole shards, so two writers
(processes or machines) never rewrite each other's chunks. Zarr's local store replaces chunk files
atomically; the HDF5 file has every dataset allocated at creation, so later writes touch raw data only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import zarr

from cache.bucket import Bucket, is_remote, staging
from cache.schema import PROBE_FIELDS, StoreSpec, store_format
from cache.shards import ChunkLayout, ShardFiles, ShardLayout
from cache.store import StoreHandle

ERROR_BYTES = 256
CODEC_BYTES = 32
DECODER_BYTES = 16


@dataclass
class ShardResult:
    """Every row of one shard, as the decoders left it."""

    start: int
    clips: np.ndarray
    frame_index: np.ndarray
    status: np.ndarray
    error: list[str]
    probe: dict[str, np.ndarray] = field(default_factory=dict)
    decoder: list[str] = field(default_factory=list)  # which decoder made each clip ("" for a failed row)
    face_box: np.ndarray | None = None  # (k, T, 4) int32 crop windows of `--resize face`; None: -1, as fill
    face_detected: np.ndarray | None = None  # (k,) int8 frames with the face detected; None: -1

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + len(self.status))


def create_store(path: str | Path, table: pd.DataFrame, spec: StoreSpec, dataset: dict | None = None) -> None:
    """Write an empty store for `table` (columns path, label, split, group), all rows pending; `dataset` (the data
    set's name, options and split source) becomes the `dataset` attribute.

    The store is built under a temporary name and renamed into place, so a store either exists
    whole or not at all; a store in a bucket is built in a local folder and uploaded, its root metadata last.
    """
    if is_remote(path):
        with staging(str(path)) as local:
            _create_zarr(local, table, spec, dataset)
            Bucket(str(path)).upload(local)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    _remove(tmp)
    try:
        if store_format(path) == "zarr":
            _create_zarr(tmp, table, spec, dataset)
        else:
            _create_hdf5(tmp, table, spec, dataset)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _initial_arrays(table: pd.DataFrame, spec: StoreSpec) -> dict[str, np.ndarray]:
    n = len(table)
    return {
        "label": table["label"].to_numpy(np.int8),
        "split": table["split"].to_numpy(np.int8),
        "path": table["path"].to_numpy(str),
        "group": table["group"].to_numpy(str),
        "status": np.zeros(n, np.int8),
        "error": np.full(n, "", dtype=object).astype(str),
        "decoder": np.full(n, "", dtype=object).astype(str),
        "frame_index": np.full((n, spec.frames), -1, np.int32),
        "face_box": np.full((n, spec.frames, 4), -1, np.int32),
        "face_detected": np.full(n, -1, np.int8),
        "probe/frames": np.zeros(n, np.int32),
        "probe/fps": np.zeros(n, np.float32),
        "probe/width": np.zeros(n, np.int32),
        "probe/height": np.zeros(n, np.int32),
        "probe/codec": np.full(n, "", dtype=object).astype(str),
    }


def _create_zarr(path: Path, table: pd.DataFrame, spec: StoreSpec, dataset: dict | None) -> None:
    root = zarr.open_group(path, mode="w-", zarr_format=3)
    root.attrs.update(spec.attrs() | ({"dataset": dataset} if dataset else {}))
    n, k, clip = len(table), spec.clips_per_shard, spec.clip_shape()
    root.create_array(
        "clips",
        shape=(n, *clip),
        dtype="uint8",
        chunks=(1, *clip),
        shards=(k, *clip),
        compressors=None,
        fill_value=0,
    )
    for name, values in _initial_arrays(table, spec).items():
        dtype = str if values.dtype.kind == "U" else values.dtype
        fill = _fill(values)
        array = root.create_array(name, shape=values.shape, dtype=dtype, chunks=(k, *values.shape[1:]), fill_value=fill)
        if not (values == fill).all():  # zarr would encode every chunk of fill values to write none of them
            array[...] = values


def _fill(values: np.ndarray):
    return "" if values.dtype.kind == "U" else values.flat[0] if values.size else 0


def _create_hdf5(path: Path, table: pd.DataFrame, spec: StoreSpec, dataset: dict | None) -> None:
    with h5py.File(path, "w") as f:
        for name, value in spec.attrs().items():
            f.attrs[name] = value
        if dataset:
            f.attrs["dataset"] = json.dumps(dataset)  # HDF5 has no nested attributes: JSON, as `update_attrs`
        allocate(f, "clips", (len(table), *spec.clip_shape()), h5py.h5t.STD_U8LE)
        widths = {"error": ERROR_BYTES, "decoder": DECODER_BYTES, "probe/codec": CODEC_BYTES}
        for name, values in _initial_arrays(table, spec).items():
            if values.dtype.kind == "U":
                values = _encode(values, widths.get(name))
            dataset = allocate(f, name, values.shape, h5py.h5t.py_create(values.dtype, logical=True))
            dataset[...] = values


def allocate(f: h5py.File, name: str, shape: tuple[int, ...], h5type) -> h5py.Dataset:
    """A contiguous dataset whose bytes exist from the start: later writes never change file metadata."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    parent, _, leaf = name.rpartition("/")
    group = f.require_group(parent) if parent else f
    dsid = h5py.h5d.create(group.id, leaf.encode(), h5type, h5py.h5s.create_simple(shape), dcpl=dcpl)
    return h5py.Dataset(dsid)


def _encode(values, width: int | None) -> np.ndarray:
    """UTF-8 bytes of fixed width (the longest value, or `width` cut at a character boundary)."""
    encoded = [str(v).encode() for v in values]
    if width is None:
        width = max((len(e) for e in encoded), default=1) or 1
    cut = [e[:width].decode("utf-8", "ignore").encode() for e in encoded]
    return np.array(cut, dtype=h5py.string_dtype("utf-8", width))


def _or_none(values: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
    """`values`, or the array's "none" (-1) where a writer has none to give."""
    return np.full(shape, -1, dtype) if values is None else values.astype(dtype, copy=False)


class StoreWriter(StoreHandle):
    """Writes whole shards into an existing store; one writer per shard at a time. `guard` (a store in a bucket)
    is called before every write and raises where the writer may write no more (its build's lock was lost)."""

    def __init__(self, path: str | Path, guard: Callable[[], None] | None = None):
        super().__init__(path, writable=True, guard=guard)
        self._arrays: dict = {}
        self._layouts: dict[str, ShardFiles | None] = {}

    def write_shard(self, shard: ShardResult) -> None:
        with self.answering():
            self._write_shard(shard)

    def _write_shard(self, shard: ShardResult) -> None:
        rows = shard.rows
        self._set("clips", rows, shard.clips)
        self.flush()
        self._set("frame_index", rows, shard.frame_index)
        self._set("error", rows, np.array(shard.error, dtype=str))
        k = len(shard.status)
        later = {
            "decoder": np.array(shard.decoder or [""] * k, dtype=str),
            "face_box": _or_none(shard.face_box, (k, shard.frame_index.shape[1], 4), np.int32),
            "face_detected": _or_none(shard.face_detected, (k,), np.int8),
        }
        for name, values in later.items():
            if name in self._root:  # LATER_ARRAYS: an older store has none
                self._set(name, rows, values)
        for name in PROBE_FIELDS:
            self._set(f"probe/{name}", rows, shard.probe[name])
        self.flush()
        self._set("status", rows, shard.status)
        self.flush()

    def _array(self, name: str):
        """Each array opened once: opening one reads its metadata from disk."""
        if name not in self._arrays:
            self._arrays[name] = self._root[name]
        return self._arrays[name]

    def _direct(self, name: str) -> ShardFiles | None:
        """How to write `name`'s shard files without zarr; None for HDF5 and for layouts of another kind."""
        if name not in self._layouts:
            layout = None
            if self.format == "zarr":
                layout = (ShardLayout if name == "clips" else ChunkLayout).of(self._array(name), self.files)
            self._layouts[name] = layout
        return self._layouts[name]

    def _set(self, name: str, rows: slice, values: np.ndarray) -> None:
        direct = self._direct(name)
        if direct is not None and direct.whole_shard(rows.start, len(values)):
            direct.write(rows.start, values)
            return
        array = self._array(name)
        if self.format == "hdf5" and values.dtype.kind == "U":
            values = _encode(values, array.dtype.itemsize)
        array[rows] = values

    def update_attrs(self, attrs: dict) -> None:
        """Nested values become JSON strings in HDF5, which has no nested attributes."""
        with self.answering():
            for name, value in attrs.items():
                if self.format == "hdf5" and isinstance(value, dict | list):
                    value = json.dumps(value)
                self._root.attrs[name] = value
        self.flush()
