"""The bytes of a Zarr v3 shard as we lay out `clips`, shared by the fast reader and the fast writer.

A shard file holds its rows' uncompressed chunks, one row each, concatenated in row order, then the
shard index: a little-endian uint64 (offset, nbytes) pair per chunk, MISSING for both where the chunk
holds only the fill value (zarr writes no bytes for those), then the index's crc32c where the array's
index codecs ask for one. Zarr reads what this writes; arrays laid out otherwise get no `ShardLayout`
and go through zarr.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.bytes import Endian
from zarr.storage import LocalStore

MISSING = 2**64 - 1
CRC_BYTES = 4


@dataclass(frozen=True)
class ShardLayout:
    """Where an array's shard files are and how their index is written, for one-row-per-chunk shards."""

    folder: Path
    array: zarr.Array
    per_shard: int
    chunk_bytes: int
    checksum: bool

    @classmethod
    def of(cls, array: zarr.Array) -> ShardLayout | None:
        """The layout of `array`, or None where its shards are not the ones described above."""
        codecs = array.metadata.codecs
        store = array.store_path.store
        if not (len(codecs) == 1 and isinstance(codecs[0], ShardingCodec) and isinstance(store, LocalStore)):
            return None
        sharding = codecs[0]
        shard_shape = tuple(array.metadata.chunk_grid.chunk_shape)
        checksum = _index_checksum(sharding.index_codecs)
        if checksum is None or sharding.index_location.value != "end" or not _raw(sharding, array.dtype):
            return None
        if tuple(sharding.chunk_shape) != (1, *shard_shape[1:]) or array.fill_value != 0:
            return None
        chunk_bytes = int(np.prod(shard_shape[1:])) * array.dtype.itemsize
        return cls(Path(store.root) / array.path, array, shard_shape[0], chunk_bytes, checksum)

    @property
    def index_bytes(self) -> int:
        return self.per_shard * 16 + (CRC_BYTES if self.checksum else 0)

    def file(self, shard: int) -> Path:
        key = self.array.metadata.encode_chunk_key((shard,) + (0,) * (self.array.ndim - 1))
        return self.folder / key

    def read_index(self, shard: int) -> np.ndarray | None:
        """The (offset, nbytes) pair of each chunk of `shard`, or None where the shard has no file."""
        try:
            with open(self.file(shard), "rb") as f:
                f.seek(-self.index_bytes, os.SEEK_END)
                raw = f.read(self.index_bytes)
        except FileNotFoundError:
            return None
        return np.frombuffer(raw, dtype="<u8", count=self.per_shard * 2).reshape(self.per_shard, 2)

    def whole_shard(self, start: int, rows: int) -> bool:
        """Whether rows start..start+rows are one shard entire, so writing it needs nothing already on disk."""
        return start % self.per_shard == 0 and rows == min(self.per_shard, self.array.shape[0] - start)

    def write(self, start: int, values: np.ndarray) -> None:
        """Write the whole shard beginning at row `start` as zarr would, replacing its file atomically;
        a shard of fill values only has no file, as in zarr."""
        values = np.ascontiguousarray(values, dtype=self.array.dtype.newbyteorder("<"))
        rows = values.reshape(len(values), -1)
        stored = np.ones(len(rows), bool) if self.array.config.write_empty_chunks else rows.any(axis=1)
        file = self.file(start // self.per_shard)
        if not stored.any():
            file.unlink(missing_ok=True)
            return
        present = np.flatnonzero(stored)
        index = np.full((self.per_shard, 2), MISSING, dtype="<u8")
        index[present, 0] = np.arange(len(present), dtype="<u8") * self.chunk_bytes
        index[present, 1] = self.chunk_bytes
        pieces = [memoryview(rows[i]).cast("B") for i in present] + [index.tobytes()]
        if self.checksum:
            pieces.append(google_crc32c.value(pieces[-1]).to_bytes(CRC_BYTES, "little"))
        replace_file(file, pieces)


def replace_file(path: Path, pieces: list) -> None:
    """Write `pieces` to a temporary file beside `path` and rename it onto `path`, as zarr's LocalStore does,
    so a killed writer leaves the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
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


def _raw(sharding: ShardingCodec, dtype: np.dtype) -> bool:
    """Whether each chunk is stored as its plain little-endian bytes."""
    inner = sharding.codecs
    if len(inner) != 1 or not isinstance(inner[0], BytesCodec):
        return False
    return dtype.itemsize == 1 or inner[0].endian == Endian.little
