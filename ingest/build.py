"""`ingest build-cache`: decode every video once into a store, in parallel, resumably.

Worker processes decode and resize; the process that owns a shard collects its rows and writes
the shard whole (see `cache.writer`). Under `accelerate launch` or `torchrun` each rank owns every
`world`-th shard of one shared store, and rank 0 creates the store and writes the summary.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cache.bucket import Bucket, is_remote
from cache.exits import deferred_stop
from cache.lock import BucketLock, StoreLock, StoreLocked
from cache.schema import (
    FAILED,
    OK,
    PENDING,
    PROBE_FIELDS,
    StoreSpec,
    shard_count,
    shard_rows,
    shard_slice,
    store_format,
)
from cache.shards import partial_files
from cache.store import open_store, store_exists
from cache.writer import ShardResult, StoreWriter, create_store
from ingest.clips import RowJob, RowOutcome, fallback_of
from ingest.decoders import GPU_DECODERS, choose
from ingest.decoding import Probe
from ingest.discover import UsageError
from ingest.faces import NO_FACE_CHOICES, FaceCrops, FaceSettings
from ingest.frames import RESIZE_MODES
from ingest.layouts import Chosen, LayoutOptions
from ingest.layouts import choose as choose_layout
from ingest.pool import VIDEO_TIMEOUT, DecodePool, threads_per_worker
from ingest.splits import assign_splits


@dataclass(frozen=True)
class BuildConfig:
    data_root: Path
    out: Path | str  # a local path, or an s3:// URL
    frames: int = 16
    size: int = 224
    resize: str = "squash"
    face_margin: float = 1.3
    no_face: str = "squash"
    decoder: str = "auto"
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    video_timeout: float = VIDEO_TIMEOUT  # seconds a video may take to decode (0: no limit)
    val_fraction: float = 0.2
    seed: int = 42
    manifest: Path | None = None
    dataset: str | None = None  # a layout's name (ingest.layouts.LAYOUTS); None: found from the folders
    layout: LayoutOptions = field(default_factory=LayoutOptions)
    clips_per_shard: int = 8
    resume: bool = False
    retry_failed: bool = False
    strict: bool = False


@dataclass(frozen=True)
class BuildSummary:
    ok: int
    failed: int
    pending: int
    done: int
    seconds: float
    decoder: str
    failures: list[tuple[str, str]]
    fallbacks: list[tuple[str, str]]  # rows the GPU decoder failed on and PyAV decoded, with the GPU's reason
    retried: int = 0  # failed rows decoded again (--retry-failed)
    recovered: int = 0  # of them, those now ok
    without_face: int | None = None  # `--resize face`: ok clips with no face found, stored squashed

    @property
    def videos_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self, out: Path) -> str:
        return (
            f"{out}: {self.ok} ok, {self.failed} failed, {self.pending} pending; "
            f"{self.done} videos decoded in {self.seconds:.1f} s ({self.videos_per_second:.2f} videos/s, "
            f"decoder {self.decoder}{self._fallback_note()})"
            + (f"; {self.recovered} of {self.retried} failed videos decoded again are now ok" if self.retried else "")
            + (f"; {self.without_face} of {self.ok} clips had no face (stored squashed)" if self.without_face else "")
        )

    def _fallback_note(self) -> str:
        """How many ok rows the fallback decoder made: always for a GPU build, whose every row falling back to
        PyAV must not pass for a GPU build; for a CPU build where any did."""
        if self.decoder not in GPU_DECODERS and not self.fallbacks:
            return ""
        return f"; {len(self.fallbacks)} of {self.ok} ok rows fell back to {fallback_of(self.decoder)}"


class Ranks:
    """This process's place among the ranks of `accelerate launch` or `torchrun` (one rank alone)."""

    def __init__(self) -> None:
        self._state = None
        self.index, self.count = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self._state = PartialState(cpu=not torch.cuda.is_available())
            self.index, self.count = self._state.process_index, self._state.num_processes

    @property
    def main(self) -> bool:
        return self.index == 0

    def share(self, value):
        """Rank 0's `value`, on every rank."""
        if self._state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()


def build_cache(config: BuildConfig, log: Callable[[str], None] = print) -> BuildSummary:
    ranks = Ranks()
    started = time.perf_counter()
    layout = choose_layout(config.data_root, config.dataset, config.layout, config.manifest)
    if ranks.main:
        log(layout.line())  # the first line: which data set, read how
    spec, choice = _check(config, ranks)
    if ranks.main:
        log(choice)
    with _locked(config.out, ranks, log) as lock:
        return _build(config, layout, spec, ranks, started, log, lock)


@contextlib.contextmanager
def _locked(out: Path | str, ranks: Ranks, log: Callable[[str], None]) -> Iterator[StoreLock | BucketLock]:
    """Rank 0 holds the store's lock for the whole launch; a second build is refused on every rank."""
    lock = BucketLock(out) if is_remote(out) else StoreLock(out)
    refused = None
    if ranks.main:
        try:
            lock.acquire()
        except StoreLocked as error:
            refused = f"{error}: wait for it to finish or stop it, then run again with --resume"
        if lock.taken_over is not None:
            log(f"took over the lock of {out} from {lock.taken_over}, which is no longer running")
    refused = ranks.share(refused)
    if refused:
        raise UsageError(refused)
    try:
        yield lock
    finally:
        lock.release()


def _build(
    config: BuildConfig,
    layout: Chosen,
    spec: StoreSpec,
    ranks: Ranks,
    started: float,
    log: Callable[[str], None],
    lock: StoreLock | BucketLock,
) -> BuildSummary:
    # The workers start while the videos are found.
    with DecodePool(spec.decoder, config.workers, spec.clip_shape(), config.video_timeout) as pool:
        table, status, dataset = _discover(config, layout, spec, log if ranks.main else lambda _: None)
        if ranks.main:  # before any rank writes: no other writer is running, the lock says so
            _remove_partial_files(config.out, log)
        redo = (status == PENDING) | ((status == FAILED) & config.retry_failed)
        shards = _shards_to_do(redo, spec, ranks)
        errors = table["error"].tolist()
        jobs = _jobs(config, spec, table["path"].tolist(), shards, redo & (table["error"] == "").to_numpy())
        absent = _absent_rows(errors, spec, shards, redo)
        outcomes = tqdm(
            itertools.chain(absent, pool.rows(jobs)),  # the first videos decode while the store is created
            total=len(jobs) + len(absent),
            unit="video",
            desc=f"decode ({spec.decoder})" + (f" rank {ranks.index}" if ranks.count > 1 else ""),
            position=ranks.index,
            dynamic_ncols=True,
        )
        ranks.barrier()
        if ranks.main and not store_exists(config.out):
            create_store(config.out, table, spec, dataset)
        ranks.barrier()
        # The writer opens first: HDF5 lets a file open for writing be opened again for reading, not the reverse.
        with (
            StoreWriter(config.out, guard=lock.check) as writer,
            _kept_rows(config.out, redo, config.retry_failed) as kept,
        ):
            for shard in _collect_shards(outcomes, spec, len(table), kept):
                with deferred_stop():
                    lock.verify()  # a build that lost its lock to another starts no shard more
                    writer.write_shard(shard)
    ranks.barrier()
    retried = np.flatnonzero(redo & (status == FAILED))
    summary = _summarise(config.out, int((~redo).sum()), time.perf_counter() - started, spec.decoder, retried)
    if ranks.main:
        lock.verify()
        _finish(config.out, summary)
        log(summary.line(config.out))
        _log_rows(log, "failed", summary.failures, config.out)
        _log_rows(log, "fell back", summary.fallbacks, config.out)
    return summary


def _discover(
    config: BuildConfig, layout: Chosen, spec: StoreSpec, log: Callable[[str], None]
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The videos with their labels and splits, each one's status (that of the store to resume, else pending),
    and the store's `dataset` attribute."""
    found = layout.read()
    for line in found.remarks():
        log(line)
    table = assign_splits(found.table, config.val_fraction, config.seed, found.test_fraction)
    dataset = layout.attrs(found)
    if not store_exists(config.out):
        return table, np.full(len(table), PENDING, np.int8), dataset
    if not config.resume:
        raise UsageError(f"{config.out} exists: pass --resume to finish it, or choose another --out")
    _check_resumable(config.out, table["path"].tolist(), spec)
    with open_store(config.out) as store:
        return table, store.status, dataset


def _remove_partial_files(out: Path, log: Callable[[str], None]) -> None:
    """Remove the temporary files of shard writes that a killed build never finished: their shards are written
    again whole (their rows are not ok), and nothing else would ever remove them."""
    partial = partial_files(out)
    for file in partial:
        file.unlink(missing_ok=True)
    if partial:
        log(f"removed {len(partial)} unfinished shard file(s) a stopped build left in {out}")


def _absent_rows(errors: list[str], spec: StoreSpec, shards: list[int], redo: np.ndarray) -> list[RowOutcome]:
    """The rows to do of `shards` that the layout found missing (a listed video that is not there): failed
    with that reason, without decoding."""
    return [
        RowOutcome(row, None, None, Probe(), errors[row])
        for shard in shards
        for row in shard_rows(shard, spec.clips_per_shard, len(errors))
        if redo[row] and errors[row]
    ]


def _shards_to_do(redo: np.ndarray, spec: StoreSpec, ranks: Ranks) -> list[int]:
    """This rank's shards that hold a row to decode."""
    return [
        s
        for s in range(ranks.index, shard_count(len(redo), spec.clips_per_shard), ranks.count)
        if redo[shard_slice(s, spec.clips_per_shard, len(redo))].any()
    ]


@contextlib.contextmanager
def _kept_rows(out: Path, redo: np.ndarray, retrying: bool) -> Iterator[Callable[[range], dict] | None]:
    """With `retrying`, a shard's rows that are not decoded again, as the store holds them: a shard decoded again
    for its failed rows is still written whole, its ok rows as they were. (Shards are otherwise decoded whole.)"""
    if not retrying:
        yield None
        return
    with open_store(out) as store:
        probe = store.table()[list(PROBE_FIELDS)]

        def kept(rows: range) -> dict[int, RowOutcome]:
            keep = [row for row in rows if not redo[row]]
            return {
                row: RowOutcome(
                    row,
                    clip,
                    store.frame_index[row],
                    Probe(*probe.loc[row].tolist()),
                    store.error[row],
                    store.decoder[row],
                    FaceCrops(store.face_box[row], int(store.face_detected[row]))
                    if store.face_detected[row] >= 0
                    else None,
                )
                for row, clip in zip(keep, store.read(keep), strict=True)
            }

        yield kept


def _check(config: BuildConfig, ranks: Ranks) -> tuple[StoreSpec, str]:
    """Every argument error, found before anything is written; the store's spec and the decoder choice."""
    try:
        fmt = store_format(config.out)
        decoder, choice = choose(config.decoder)
    except Exception as error:
        raise UsageError(str(error)) from error
    if fmt == "hdf5" and ranks.count > 1:
        raise UsageError("an HDF5 store has one writer: use a .zarr store to build with several ranks")
    if config.retry_failed and not config.resume:
        raise UsageError("--retry-failed decodes the failed rows of an existing store again: add --resume")
    if config.resize not in RESIZE_MODES:
        raise UsageError(f"--resize must be one of {', '.join(RESIZE_MODES)}")
    if config.no_face not in NO_FACE_CHOICES:
        raise UsageError(f"--no-face must be one of {', '.join(NO_FACE_CHOICES)}")
    if config.video_timeout < 0:
        raise UsageError("--video-timeout must be 0 (no limit) or more seconds")
    if config.face_margin < 1:
        raise UsageError("--face-margin must be at least 1: the crop holds the whole face box")
    for name in ("frames", "size", "workers", "clips_per_shard"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if is_remote(config.out):
        Bucket(str(config.out))  # a malformed URL or an HDF5 name is refused here, before anything is decoded
    elif not config.out.parent.is_dir():
        raise UsageError(f"--out {config.out}: folder {config.out.parent} does not exist")
    spec = StoreSpec(
        frames=config.frames,
        size=config.size,
        resize=config.resize,
        decoder=decoder,
        clips_per_shard=config.clips_per_shard,
        data_root=str(config.data_root.resolve()),
        face_margin=config.face_margin,
        no_face=config.no_face,
    )
    return spec, choice


def _check_resumable(out: Path, paths: list[str], spec: StoreSpec) -> None:
    try:
        with open_store(out) as store:
            old, old_paths = store.spec, store.path.tolist()
    except Exception as error:
        raise UsageError(f"--resume {out}: {error}") from error
    names = ["frames", "size", "resize", "decoder", "clips_per_shard"]
    names += ["face_margin", "no_face"] if spec.resize == "face" else []
    for name in names:
        if getattr(old, name) != getattr(spec, name):
            raise UsageError(
                f"--resume {out}: the store was built with {name}={getattr(old, name)!r}, not {getattr(spec, name)!r}"
            )
    if old_paths != paths:
        raise UsageError(f"--resume {out}: the videos under the data root are not those the store was built from")


def _jobs(config: BuildConfig, spec: StoreSpec, paths: list[str], shards: list[int], redo: np.ndarray) -> list[RowJob]:
    threads = threads_per_worker(config.workers)
    root = config.data_root
    face = FaceSettings(margin=spec.face_margin, no_face=spec.no_face)
    return [
        RowJob(row, str(root / paths[row]), spec.decoder, threads, spec.frames, spec.size, spec.resize, face)
        for shard in shards
        for row in shard_rows(shard, spec.clips_per_shard, len(paths))
        if redo[row]
    ]


def _collect_shards(
    outcomes: Iterable[RowOutcome],
    spec: StoreSpec,
    n: int,
    kept: Callable[[range], dict[int, RowOutcome]] | None = None,
) -> Iterator[ShardResult]:
    """Gather outcomes by shard, with the `kept` rows of a shard that is not decoded whole, and hand each shard
    on once all its rows are in."""
    buffers: dict[int, dict[int, RowOutcome]] = {}
    for outcome in outcomes:
        shard = outcome.row // spec.clips_per_shard
        rows = shard_rows(shard, spec.clips_per_shard, n)
        if shard not in buffers:
            buffers[shard] = kept(rows) if kept else {}
        buffer = buffers[shard]
        buffer[outcome.row] = outcome
        if len(buffer) == len(rows):
            yield _shard_result(rows, buffers.pop(shard), spec)


def _shard_result(rows: range, outcomes: dict[int, RowOutcome], spec: StoreSpec) -> ShardResult:
    k = len(rows)
    clips = np.zeros((k, *spec.clip_shape()), dtype=np.uint8)
    frame_index = np.full((k, spec.frames), -1, dtype=np.int32)
    status = np.full(k, FAILED, dtype=np.int8)
    errors, decoders = [""] * k, [""] * k
    face_box = np.full((k, spec.frames, 4), -1, dtype=np.int32)
    face_detected = np.full(k, -1, dtype=np.int8)
    probe = {name: [] for name in PROBE_FIELDS}
    for i, row in enumerate(rows):
        outcome = outcomes[row]
        if outcome.clip is not None:
            clips[i], frame_index[i], status[i] = outcome.clip, outcome.indices, OK
            if outcome.face is not None:
                face_box[i], face_detected[i] = outcome.face.boxes, outcome.face.detected
        errors[i], decoders[i] = outcome.error, outcome.decoder
        for name in PROBE_FIELDS:
            probe[name].append(getattr(outcome.probe, name))
    dtypes = {"frames": np.int32, "fps": np.float32, "width": np.int32, "height": np.int32, "codec": str}
    arrays = {name: np.array(values, dtype=dtypes[name]) for name, values in probe.items()}
    return ShardResult(rows.start, clips, frame_index, status, errors, arrays, decoders, face_box, face_detected)


def _summarise(
    out: Path, settled_before: int, seconds: float, decoder: str, retried: np.ndarray | None = None
) -> BuildSummary:
    """Counts from the store itself, so that they cover every rank's work; `retried` the failed rows decoded
    again."""
    retried = np.zeros(0, np.int64) if retried is None else retried
    with open_store(out) as store:
        status = store.status
        failed = np.flatnonzero(status == FAILED)
        fell_back = store.fell_back()
        return BuildSummary(
            ok=int((status == OK).sum()),
            failed=len(failed),
            pending=int((status == PENDING).sum()),
            done=int((status != PENDING).sum()) - settled_before,
            seconds=seconds,
            decoder=decoder,
            failures=[(store.path[i], store.error[i]) for i in failed],
            fallbacks=[(store.path[i], store.error[i].partition(": ")[2]) for i in fell_back],
            retried=len(retried),
            recovered=int((status[retried] == OK).sum()),
            without_face=len(store.without_face()) if store.spec.resize == "face" else None,
        )


def _log_rows(log: Callable[[str], None], what: str, rows: list[tuple[str, str]], out: Path) -> None:
    for path, reason in rows[:20]:
        log(f"  {what} {path}: {reason}")
    if len(rows) > 20:
        log(f"  ... and {len(rows) - 20} more (cache info {out})")


def _finish(out: Path, summary: BuildSummary) -> None:
    """Rank 0's last word: the run's summary and the per-video probe, in a form pandas reads."""
    with open_store(out) as store:
        table = store.table()
    probe = {name: table[name].tolist() for name in ("path", *PROBE_FIELDS)}
    with StoreWriter(out) as writer:
        writer.update_attrs(
            {
                "summary": {
                    "ok": summary.ok,
                    "failed": summary.failed,
                    "pending": summary.pending,
                    "seconds": round(summary.seconds, 3),
                    "videos_per_second": round(summary.videos_per_second, 3),
                    "decoder": summary.decoder,
                    "fallbacks": len(summary.fallbacks),
                    "without_face": summary.without_face,
                },
                "probe": probe,
            }
        )
