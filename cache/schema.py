"""The store layout `clipcache/1`: the contract between ingest, train and users.

A store is a Zarr v3 group (`*.zarr`) or an HDF5 file (`*.h5`, `*.hdf5`) holding these arrays:

    clips        uint8   (N, T, H, W, 3)  RGB frames, one chunk per clip
    label        int8    (N,)             0 real, 1 fake, -1 unknown
    split        int8    (N,)             0 train, 1 val, 2 test
    frame_index  int32   (N, T)           source frame of each stored frame (its place among the frames
                                          that decode), -1 where none
    path         string  (N,)             path relative to the data root, `/` separators
    group        string  (N,)             the source used for splitting
    status       int8    (N,)             0 pending, 1 ok, 2 failed
    error        string  (N,)             empty, or why the row failed (or why its decoder's fallback made it)
    decoder      string  (N,)             the decoder that made the clip: the store's, or its fallback's
    face_box     int32   (N, T, 4)        `--resize face`: each frame's square crop in source pixels (x0, y0,
                                          x1, y1; may reach past the frame, where it is padded), -1 where none
    face_detected int8   (N,)             `--resize face`: frames in which the tracked face was detected (0: no
                                          face, the clip is squashed), -1 in other modes and rows not ok
    probe/frames int32   (N,)             decoded frame count of the video
    probe/fps    float32 (N,)
    probe/width  int32   (N,)
    probe/height int32   (N,)
    probe/codec  string  (N,)

Attributes: the `StoreSpec` fields and `schema`; `dataset` (stores built since data set layouts; older ones lack
it): {"name": "ffpp", "options": {"compression": "c23", ...}, "split_source": "official"}, the layout or
"manifest", the options it was read with, and where the splits came from (official, grouped, list, folder,
metadata, all-test, manifest); after a build `summary` and `probe`. HDF5 keeps nested attributes as JSON text.

Rows are grouped in shards of `clips_per_shard` rows; every per-row array is chunked by shard, so
one writer owns a shard and all its metadata, and writers never share a chunk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA = "clipcache/1"

PENDING, OK, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}

REAL, FAKE, UNKNOWN = 0, 1, -1
LABEL_NAMES = {REAL: "real", FAKE: "fake", UNKNOWN: "unknown"}

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_CODES = {"train": TRAIN, "val": VAL, "test": TEST}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}

PROBE_FIELDS = ("frames", "fps", "width", "height", "codec")
ROW_ARRAYS = (
    "label",
    "split",
    "frame_index",
    "path",
    "group",
    "status",
    "error",
    "decoder",
    "face_box",
    "face_detected",
)
# Arrays that stores written before them lack: read as their defaults, and not written into such a store.
LATER_ARRAYS = ("decoder", "face_box", "face_detected")

ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")


class StoreError(Exception):
    """A store that is missing, of the wrong schema, or not what the caller asked for."""


@dataclass(frozen=True)
class StoreSpec:
    """What every row of a store shares; saved in the group attributes."""

    frames: int = 16
    size: int = 224
    resize: str = "squash"
    decoder: str = "pyav"
    clips_per_shard: int = 8
    data_root: str = ""
    face_margin: float = 1.3  # `--resize face`: the crop's side over the face box's longer side
    no_face: str = "squash"  # `--resize face`: what a video without a face becomes (squash or fail)

    def attrs(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_attrs(cls, attrs: dict) -> StoreSpec:
        """The spec saved in `attrs`; settings added since a store was written take their defaults, which are
        what that store was built with."""
        if attrs.get("schema") != SCHEMA:
            raise StoreError(f"not a {SCHEMA} store (schema attribute is {attrs.get('schema')!r})")
        return cls(**{name: attrs[name] for name in cls.__dataclass_fields__ if name in attrs})

    def clip_shape(self) -> tuple[int, int, int, int]:
        return (self.frames, self.size, self.size, 3)


@dataclass(frozen=True)
class ClipSettings:
    """How a store's clips were made from videos: what a new video must go through to match them."""

    frames: int
    size: int
    resize: str
    decoder: str
    face_margin: float = 1.3
    no_face: str = "squash"

    @classmethod
    def of_spec(cls, spec: StoreSpec) -> ClipSettings:
        return cls(spec.frames, spec.size, spec.resize, spec.decoder, spec.face_margin, spec.no_face)

    def as_dict(self) -> dict:
        return asdict(self)

    def difference(self, other: ClipSettings) -> str | None:
        """The first preprocessing setting in which two stores' clips differ, as `name a against b`; None when
        a model trained on one sees the other's clips as it saw its own (the decoder may differ: every decoder
        samples the same frames within a few grey levels)."""
        names = ["frames", "size", "resize"] + (["face_margin"] if self.resize == "face" else [])
        for name in names:
            if getattr(self, name) != getattr(other, name):
                return f"{name} {getattr(self, name)!r} against {getattr(other, name)!r}"
        return None


def store_format(path: str | Path) -> str:
    """`zarr` or `hdf5`, from the file name, so that users choose the format by naming the store."""
    suffix = Path(path).suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise StoreError(f"{path}: a store's name ends in .zarr, .h5 or .hdf5")


def shard_rows(shard: int, clips_per_shard: int, rows: int) -> range:
    start = shard * clips_per_shard
    return range(start, min(start + clips_per_shard, rows))


def shard_slice(shard: int, clips_per_shard: int, rows: int) -> slice:
    """`shard_rows` as a slice, for indexing arrays."""
    span = shard_rows(shard, clips_per_shard, rows)
    return slice(span.start, span.stop)


def shard_count(rows: int, clips_per_shard: int) -> int:
    return -(-rows // clips_per_shard)
