"""Per-frame backbone embeddings kept beside the clips, as `features/<entry>` in the same store.

An entry holds float16 `values` (N, T, D), one chunk per shard of the store, and int8 `done` (N,), which a
writer sets for a shard only after the shard's values are on disk, so a killed run resumes where it
stopped. The entry's name carries the backbone, a digest of its weights and the frame size, so other
weights or preprocessing make another entry and never mix with this one. What made the features (the
model that computes them) is not this package's business: it stores and serves them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from cache.bucket import store_location
from cache.dataset import PhasedItems, Phases
from cache.schema import StoreError
from cache.store import StoreHandle, attr_value, open_store
from cache.writer import allocate

FEATURES = "features"
FEATURES_SCHEMA = "clipcache-features/1"


@dataclass(frozen=True)
class FeatureSpec:
    """What one entry's features are: saved as the entry's attributes and checked before every write."""

    backbone: str
    weights: str  # a safetensors file the backbone weights came from, or ""
    pretrained: bool  # timm's ImageNet weights
    seed: int  # what drew random weights, with neither
    weights_sha256: str
    frame_size: int
    frames: int
    dim: int
    normalize: str = "imagenet"

    @property
    def name(self) -> str:
        return f"{self.backbone}-{self.weights_sha256[:10]}-{self.frame_size}px"

    @property
    def source(self) -> str:
        return self.weights or ("timm pretrained" if self.pretrained else f"random, seed {self.seed}")

    def attrs(self) -> dict:
        return {"schema": FEATURES_SCHEMA, **asdict(self)}

    @classmethod
    def from_attrs(cls, attrs) -> FeatureSpec:
        values = {name: attr_value(attrs[name]) for name in cls.__dataclass_fields__ if name in attrs}
        if attr_value(attrs.get("schema")) != FEATURES_SCHEMA:
            raise StoreError(f"not a {FEATURES_SCHEMA} entry")
        return cls(**values)


def feature_entries(store: StoreHandle) -> dict[str, FeatureSpec]:
    """The store's feature entries by name."""
    root = store._root
    if FEATURES not in root:
        return {}
    return {name: FeatureSpec.from_attrs(root[FEATURES][name].attrs) for name in sorted(root[FEATURES].keys())}


class FeatureWriter(StoreHandle):
    """Creates an entry (or checks an existing one) and writes it a shard at a time."""

    def __init__(self, path: str | Path):
        super().__init__(path, writable=True)

    def open_entry(self, spec: FeatureSpec, rows: int, chunk_rows: int) -> np.ndarray:
        """The entry's `done` flags, after creating it where it does not exist yet."""
        existing = feature_entries(self)
        if spec.name in existing:
            if existing[spec.name] != spec:
                raise StoreError(f"features/{spec.name} holds other features ({existing[spec.name]}), not {spec}")
        else:
            self._create_entry(spec, rows, chunk_rows)
        return np.asarray(self._entry(spec.name)["done"][...]).astype(bool)

    def _create_entry(self, spec: FeatureSpec, rows: int, chunk_rows: int) -> None:
        group = self._root.require_group(FEATURES).create_group(spec.name)
        shape = (rows, spec.frames, spec.dim)
        if self.format == "zarr":
            group.create_array("values", shape=shape, dtype="float16", chunks=(chunk_rows, *shape[1:]), fill_value=0)
            group.create_array("done", shape=(rows,), dtype="int8", chunks=(chunk_rows,), fill_value=0)
        else:
            allocate(self._root, f"{FEATURES}/{spec.name}/values", shape, h5py.h5t.IEEE_F16LE)
            allocate(self._root, f"{FEATURES}/{spec.name}/done", (rows,), h5py.h5t.STD_I8LE)[...] = 0
        group.attrs.update(spec.attrs())
        self.flush()

    def _entry(self, name: str):
        return self._root[FEATURES][name]

    def write(self, name: str, rows: slice, values: np.ndarray) -> None:
        """Values first, then the rows' done flags, each on disk before the next."""
        entry = self._entry(name)
        entry["values"][rows] = values.astype(np.float16, copy=False)
        self.flush()
        entry["done"][rows] = 1
        self.flush()


class FeatureDataset(PhasedItems, Dataset):
    """The features (T, D) float16 and labels of the ok, computed rows of one split, held in memory; with
    `clip_frames`, k items of every k-th frame's features per video, as `ClipDataset` has them.

    Features are small (16 x 512 halves are 16 KB a clip), so a split fits in memory and an epoch reads
    nothing from disk; only the split's own rows are read, once. `read_into` serves the trainer's feed a
    batch by indexing the tensor in memory.
    """

    def __init__(self, store_path: str | Path, entry: str, split: str | None = None, clip_frames: int | None = None):
        self.store_path = store_location(store_path)
        with open_store(self.store_path) as store:
            entries = feature_entries(store)
            if entry not in entries:
                raise StoreError(f"{store_path}: no feature entry {entry!r} (has: {', '.join(entries) or 'none'})")
            self.spec = entries[entry]
            group = store._root[FEATURES][entry]
            done = np.asarray(group["done"][...]).astype(bool)
            rows = store.rows(split)
            missing = rows[~done[rows]]
            if len(missing):
                raise StoreError(
                    f"features/{entry}: {len(missing)} ok clips of {split or 'the store'} have no features yet "
                    "(run `python -m train.features` again to finish)"
                )
            self._set_items(rows, store.label[rows], Phases.of(store.spec.frames, clip_frames))
            self.values = torch.from_numpy(read_rows(group["values"], rows))
        self.sample_shape = (self.phases.clip_frames, *self.values.shape[2:])
        self.sample_dtype = self.values.dtype

    def __getitem__(self, index: int) -> tuple:
        out = torch.empty(self.sample_shape, dtype=self.sample_dtype)
        self.read_into(np.array([index]), out[None])
        return out, int(self.labels[index])

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        videos = torch.from_numpy(np.asarray(indices) // self.phases.count)
        frames = self._frames(indices)
        if frames is None:
            torch.index_select(self.values, 0, videos, out=out)
        else:
            out.copy_(self.values[videos[:, None], torch.from_numpy(frames)])


def read_rows(array, rows: np.ndarray) -> np.ndarray:
    """`array[rows]` for sorted unique rows, reading only those: Zarr fetches just the chunks that hold them;
    HDF5 reads each run of consecutive rows as one slice (its point selections are slow)."""
    if len(rows) == 0:
        return np.empty((0, *array.shape[1:]), array.dtype)
    if isinstance(array, h5py.Dataset):
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
        return np.concatenate([array[run[0] : run[-1] + 1] for run in runs])
    return np.asarray(array.oindex[rows])
