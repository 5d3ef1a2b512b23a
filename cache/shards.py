"""The files of a Zarr store's shards, written as the bytes zarr would write, without zarr's machinery.

`clips` is a sharded array: a shard file holds its rows' uncompressed chunks, one row each, concatenated
in row order, then the shard index: a little-endian uint64 (offset, nbytes) pair per chunk, MISSING for
both where the chunk holds only the fill value (zarr writes no bytes for those), then the index's crc32c
where the array's index codecs ask for one. The fast reader finds clips through the same index.

The small per-row arrays are one plain chunk per shard, encoded by numcodecs as zarr's codecs do.

Zarr reads what this writes; arrays laid out or encoded otherwise get no layout here and go through zarr.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import google_crc32c
import numpy as np
import zarr
from numcodecs import VLenUTF8, Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, VLenUTF8Codec, ZstdCodec
from zarr.codecs.bytes import Endian

MISSING = 2**64 - 1
CRC_BYTES = 4
PARTIAL = ".partial"


class Files(Protocol):
    """Where a store's files live, by key (`clips/c/0/0/0/0/0`): a local folder, or a bucket (`cache.bucket`)."""

    def path(self, key: str) -> Path:
        """A local file holding `key`'s bytes, to read; FileNotFoundError where there is none."""

    def put(self, key: str, pieces: list) -> None:
        """Replace `key` with `pieces` whole: a reader sees the old bytes or the new, never part."""

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class LocalFiles:
    """A store in a local folder: keys are its files."""

    root: Path

    def path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, pieces: list) -> None:
        replace_file(self.root / key, pieces)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardFiles:
    """An array with one file per shard of `per_shard` rows, in `files` under the array's own `prefix`."""

    files: Files
    prefix: str
    array: zarr.Array
    per_shard: int

    def key(self, shard: int) -> str:
        return f"{self.prefix}/{self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))}"

    def file(self, shard: int) -> Path:
        """The shard's local file (fetched first from a bucket); FileNotFoundError may come for a bucket's."""
        return self.files.path(self.key(shard))

    def whole_shard(self, start: int, rows: int) -> bool:
        """Whether rows start..start+rows are one shard entire, so writing it needs nothing already on disk."""
        return start % self.per_shard == 0 and rows == min(self.per_shard, self.array.shape[0] - start)

    def empty(self, values: np.ndarray) -> np.ndarray:
        """Which rows of `values` zarr leaves unwritten: those holding only the fill value."""
        if self.array.config.write_empty_chunks:
            return np.zeros(len(values), bool)
        rows = np.ascontiguousarray(values).reshape(len(values), -1)
        fill = np.asarray(self.array.fill_value, dtype=rows.dtype)
        if rows.dtype.kind not in "biuf":
            return (rows == fill).all(axis=1)
        bits = f"u{rows.dtype.itemsize}"  # zarr compares numbers bit for bit: -0.0 is not a fill value of 0.0
        rows, fill = rows.view(bits), fill.view(bits)
        return ~rows.any(axis=1) if fill == 0 else (rows == fill).all(axis=1)

    def write(self, start: int, values: np.ndarray) -> None:
        """Write the whole shard beginning at row `start`."""
        raise NotImplementedError


@dataclass(frozen=True)
class ShardLayout(ShardFiles):
    """How a sharded array's shard files and their index are written, for one-row-per-chunk shards."""

    chunk_bytes: int
    checksum: bool

    @classmethod
    def of(cls, array: zarr.Array, files: Files | None) -> ShardLayout | None:
        """The layout of `array`, whose files are `files`, or None where its shards are not the ones described
        above (or `files` is None: no direct access)."""
        codecs = array.metadata.codecs
        if not (len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) and files is not None):
            return None
        sharding = codecs[0]
        shard_shape = tuple(array.metadata.chunk_grid.chunk_shape)
        checksum = _index_checksum(sharding.index_codecs)
        if checksum is None or sharding.index_location.value != "end" or len(sharding.codecs) != 1:
            return None
        one_row = tuple(sharding.chunk_shape) == (1, *shard_shape[1:])
        if not (one_row and _plain(sharding.codecs[0], array.dtype)) or _nan(array.fill_value):
            return None
        chunk_bytes = int(np.prod(shard_shape[1:])) * array.dtype.itemsize
        return cls(files, array.path, array, shard_shape[0], chunk_bytes, checksum)

    @property
    def index_bytes(self) -> int:
        return self.per_shard * 16 + (CRC_BYTES if self.checksum else 0)

    def read_index(self, shard: int) -> np.ndarray | None:
        """The (offset, nbytes) pair of each chunk of `shard`, or None where the shard has no file."""
        try:
            with open(self.file(shard), "rb") as f:
                f.seek(-self.index_bytes, os.SEEK_END)
                raw = f.read(self.index_bytes)
        except FileNotFoundError:
            return None
        return np.frombuffer(raw, dtype="<u8", count=self.per_shard * 2).reshape(self.per_shard, 2)

    def write(self, start: int, values: np.ndarray) -> None:
        """Write the whole shard beginning at row `start` as zarr would, replacing its file atomically;
        a shard of fill values only has no file, as in zarr."""
        values = np.ascontiguousarray(values, dtype=self.array.dtype.newbyteorder("<"))
        rows = values.reshape(len(values), -1)
        stored = ~self.empty(rows)
        key = self.key(start // self.per_shard)
        if not stored.any():
            self.files.delete(key)
            return
        present = np.flatnonzero(stored)
        index = np.full((self.per_shard, 2), MISSING, dtype="<u8")
        index[present, 0] = np.arange(len(present), dtype="<u8") * self.chunk_bytes
        index[present, 1] = self.chunk_bytes
        pieces = [memoryview(rows[i]).cast("B") for i in present] + [index.tobytes()]
        if self.checksum:
            pieces.append(google_crc32c.value(pieces[-1]).to_bytes(CRC_BYTES, "little"))
        self.files.put(key, pieces)


@dataclass(frozen=True)
class ChunkLayout(ShardFiles):
    """A small per-row array stored as one chunk per shard, encoded as bytes or vlen-utf8, then zstd or nothing."""

    @classmethod
    def of(cls, array: zarr.Array, files: Files | None) -> ChunkLayout | None:
        """The layout of `array`, whose files are `files`, or None where it is chunked or encoded otherwise."""
        chunks = tuple(array.metadata.chunk_grid.chunk_shape)
        if files is None or chunks[1:] != tuple(array.shape[1:]):
            return None
        if _nan(array.fill_value) or _encoder(array.metadata.codecs, array.dtype) is None:
            return None
        return cls(files, array.path, array, chunks[0])

    def write(self, start: int, values: np.ndarray) -> None:
        """Write the chunk of the whole shard beginning at row `start` as zarr would: rows past the array's end
        hold the fill value, and a chunk of fill values only has no file."""
        chunk = np.full((self.per_shard, *self.array.shape[1:]), self.array.fill_value, dtype=self.array.dtype)
        chunk[: len(values)] = values
        key = self.key(start // self.per_shard)
        if self.empty(chunk).all():
            self.files.delete(key)
            return
        data = _encoder(self.array.metadata.codecs, self.array.dtype)(chunk)
        for codec in self.array.metadata.codecs[1:]:
            data = Zstd(level=codec.level, checksum=codec.checksum).encode(data)
        self.files.put(key, [data])


def _encoder(codecs: tuple, dtype: np.dtype) -> Callable[[np.ndarray], bytes] | None:
    """What turns a chunk into bytes before zstd, as `codecs` say, or None for codecs other than these."""
    if not codecs or not all(isinstance(codec, ZstdCodec) for codec in codecs[1:]):
        return None
    if isinstance(codecs[0], VLenUTF8Codec):
        return lambda chunk: bytes(VLenUTF8().encode(chunk))
    if _plain(codecs[0], dtype):
        little = dtype.newbyteorder("<")
        return lambda chunk: chunk.astype(little, copy=False).tobytes()
    return None


def _nan(value) -> bool:
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


def partial_name(path: Path) -> Path:
    """A temporary file for `path`, named as zarr's LocalStore names its own: `<name>.<uuid>.partial`."""
    return path.with_suffix(f".{uuid.uuid4().hex}{PARTIAL}")


def partial_files(store: Path | str) -> list[Path]:
    """The temporary files that writers killed mid-write (ours or zarr's) left in a Zarr store; none in HDF5, nor
    in a bucket (a PUT leaves the old object or the new)."""
    return sorted(store.rglob(f"*{PARTIAL}")) if isinstance(store, Path) and store.is_dir() else []


def replace_file(path: Path, pieces: list) -> None:
    """Write `pieces` to a temporary file beside `path` and rename it onto `path`, as zarr's LocalStore does,
    so a killed writer leaves the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_name(path)
    try:
        with open(partial, "wb") as f:
            for piece in pieces:
                f.write(piece)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _index_checksum(index_codecs: tuple) -> bool | None:
    """Whether the index ends in a crc32c, or None where the index is encoded some other way."""
    if not index_codecs or index_codecs[0] != BytesCodec(endian=Endian.little):
        return None
    if len(index_codecs) == 1:
        return False
    return True if len(index_codecs) == 2 and isinstance(index_codecs[1], Crc32cCodec) else None


def _plain(codec, dtype: np.dtype) -> bool:
    """Whether `codec` stores values as their plain little-endian bytes."""
    return isinstance(codec, BytesCodec) and (dtype.itemsize == 1 or codec.endian == Endian.little)
