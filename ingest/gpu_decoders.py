"""GPU decoders on NVIDIA's video engines: PyNvVideoCodec (`nvdec`) and DALI (`dali`).

Both count a video's frames with the same demux pass as the CPU decoders (`probe_video`), so every
decoder samples the same frame numbers; ask the GPU for exactly those frames; resize them on the GPU;
and copy only the small clips back to the host. One decoder instance keeps at most one decode engine
busy (an H100 has seven), so several videos are always in flight. Every exception of the GPU libraries
becomes a one-line `DecodeError` for its video; `ingest.clips.gpu_rows` decodes such videos again with PyAV.

This module needs only what every decoder shares (`ingest.decoding`, `ingest.demux`), never the registry
(`ingest.decoders`, which imports it) or the row code that calls it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import torch

from ingest.decoding import DecodedClip, DecodeError, Decoder, Probe, error_line
from ingest.demux import probe_video
from ingest.faces import FACE_DEFAULTS, FaceCrops, FaceSettings
from ingest.frames import make_clip, sample_indices


class Job(Protocol):
    """What a GPU decoder needs of a row's job (`ingest.clips.RowJob`)."""

    row: int
    path: str
    decoder: str
    frames: int
    size: int
    resize: str
    face: FaceSettings


Result = DecodedClip | DecodeError  # a job's clip (resized to the job's size), or why there is none


def gpu_results(jobs: list[Job], in_flight: int) -> Iterator[tuple[Job, Result]]:
    """Each of `jobs` (one GPU decoder, named in the jobs) with its result, `in_flight` videos at a time.

    Nothing raises past this: a decoder that cannot start, or a batch loop that breaks, leaves its
    remaining jobs with the error as their result, so that they fall back rather than end the build.
    """
    pending = {job.row: job for job in jobs}
    try:
        with refusals():
            decoder = make_gpu_decoder(jobs[0].decoder)
            for job, result in decoder.clips(jobs, max(1, in_flight)):
                pending.pop(job.row, None)
                yield job, result
    except DecodeError as error:
        for job in pending.values():
            yield job, error


class GpuDecoder(Decoder, Protocol):
    """A decoder that also takes many jobs at once (`gpu_results`): each with its result, `in_flight` at a time."""

    def clips(self, jobs: list[Job], in_flight: int) -> Iterator[tuple[Job, Result]]: ...


STAND_INS: dict[str, Callable[[], GpuDecoder]] = {}  # decoder names made without a GPU (`decoders.stand_in`)


def make_gpu_decoder(name: str) -> GpuDecoder:
    if name in STAND_INS:
        return STAND_INS[name]()
    device = torch.device("cuda", torch.cuda.current_device())
    return NvdecDecoder(device) if name == "nvdec" else DaliDecoder(device)


@contextmanager
def refusals() -> Iterator[None]:
    """PyNvVideoCodec's, DALI's and CUDA's own exceptions as a one-line DecodeError naming their type."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(f"{type(error).__name__}: {error_line(error)}") from error


@functools.cache
def gpu_unavailable(name: str) -> str | None:
    """Why GPU decoder `name` cannot run in this process though its package is installed, or None; tried once.

    Finding the package is not enough: PyNvVideoCodec's import loads the driver's libnvidia-encode and its
    first decoder query loads libnvcuvid, which a container without the driver's video capability lacks.
    """
    try:
        with refusals():
            _nvdec_caps() if name == "nvdec" else _dali_import()
    except DecodeError as error:
        return f"{name} cannot start here: {error}"
    return None


def _nvdec_caps() -> None:
    """Import PyNvVideoCodec (which loads libnvidia-encode), load libnvcuvid as it does when it makes a decoder,
    and ask the decode engines whether they take 8-bit 4:2:0 H.264."""
    import ctypes

    import PyNvVideoCodec as nvc

    ctypes.CDLL("libnvcuvid.so.1")
    try:
        chroma = next(value for key, value in nvc.cudaVideoChromaFormat.__members__.items() if "420" in key)
        caps = dict(
            nvc.GetDecoderCaps(
                gpuid=torch.cuda.current_device(), codec=nvc.cudaVideoCodec.H264, chromaformat=chroma, bitdepth=8
            )
        )
    except (AttributeError, TypeError, StopIteration):  # the query's spelling in this release is not ours: skip it
        return
    if caps.get("width_max", 1) == 0:
        raise DecodeError(f"the GPU's decoder does not take 8-bit 4:2:0 H.264 (caps {caps})")


def _dali_import() -> None:
    from nvidia.dali import fn, pipeline_def  # noqa: F401  (the import is the check)


def _unique(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct frame numbers to decode, and where each sampled index finds its frame among them
    (short videos repeat frames; a decoder is asked for each frame once)."""
    return np.unique(indices, return_inverse=True)


def _bounded(work: Callable[[Job], Result], jobs: Iterable[Job], threads: int) -> Iterator[tuple[Job, Result]]:
    """`work` on `jobs` in `threads` threads, in order, at most two per thread submitted: finished clips
    wait for the consumer in a short queue, not all of them in memory."""
    with ThreadPoolExecutor(threads, thread_name_prefix="gpu-decode") as pool:
        running: deque[tuple[Job, Future]] = deque()
        for job in jobs:
            running.append((job, pool.submit(work, job)))
            if len(running) >= 2 * threads:
                done, future = running.popleft()
                yield done, future.result()
        while running:
            done, future = running.popleft()
            yield done, future.result()


class NvdecDecoder:
    """PyNvVideoCodec's `SimpleDecoder` into device memory, several threads at once.

    Each thread keeps one decoder and one CUDA stream (handed to the decoder too, so that colour conversion,
    resize and the copy back of one video overlap with the others'). Decoders are made under a lock and
    reconfigured for each next video, as NVIDIA's frame-sampling benchmark does: making one per video costs
    a decoder session each time.
    """

    name = "nvdec"

    def __init__(self, device: torch.device):
        self.device = device
        self._local = threading.local()
        self._lock = threading.Lock()

    def _reader(self, path: str, frames: int):
        """This thread's decoder, pointed at `path`: reconfigured if it can be (and then counts `frames`), else new."""
        import PyNvVideoCodec as nvc

        local = self._local
        if getattr(local, "reader", None) is not None:
            try:
                local.reader.reconfigure_decoder(path)
                if len(local.reader) == frames:
                    return local.reader
            except Exception:  # a decoder that cannot take this video is replaced, not reused
                pass
            local.reader = None
        if getattr(local, "stream", None) is None:
            local.stream = torch.cuda.Stream(self.device)
        with self._lock:
            local.reader = nvc.SimpleDecoder(
                path,
                gpu_id=self.device.index or 0,
                cuda_stream=local.stream.cuda_stream,
                use_device_memory=True,
                need_scanned_stream_metadata=True,  # MKV and WebM carry no frame count: count the packets
                output_color_type=nvc.OutputColorType.RGB,
            )
        return local.reader

    def decode(
        self,
        path: str,
        count: int,
        size: int | None = None,
        resize: str = "squash",
        face: FaceSettings = FACE_DEFAULTS,
    ) -> DecodedClip:
        """The sampled frames on the host: full size, or made into the clip on the GPU first (with `--resize face`
        the faces are found on a small grey copy on the host, then cut and resized on the GPU)."""
        with refusals():
            probe = probe_video(path)
            indices = sample_indices(probe.frames, count)
            unique, positions = _unique(indices)
            reader = self._reader(path, probe.frames)
            stream = self._local.stream
            with torch.cuda.stream(stream):
                surfaces = reader.get_batch_frames_by_index(unique.tolist())
                if len(surfaces) != len(unique):
                    raise DecodeError(f"asked for {len(unique)} frames, the GPU decoded {len(surfaces)}")
                frames = torch.stack([_hwc(torch.from_dlpack(surface)) for surface in surfaces])
                frames = frames[torch.from_numpy(positions).to(self.device)]
                crops = None
                if size is not None:
                    frames, crops = make_clip(frames, indices, size, resize, face)
                host = frames.cpu().numpy()
            stream.synchronize()  # the decoder's surfaces stay alive until every copy out of them is done
            del surfaces
            return DecodedClip(host, indices, probe, crops)

    def clips(self, jobs: list[Job], in_flight: int) -> Iterator[tuple[Job, Result]]:
        return _bounded(self._result, jobs, in_flight)

    def _result(self, job: Job) -> Result:
        try:
            return self.decode(job.path, job.frames, job.size, job.resize, job.face)
        except DecodeError as error:
            return error


def _hwc(frame: torch.Tensor) -> torch.Tensor:
    """PyNvVideoCodec hands interleaved RGB as (H, W, 3); planar as (3, H, W)."""
    return frame if frame.shape[-1] == 3 else frame.permute(1, 2, 0)


class DaliDecoder:
    """DALI's `fn.decoders.video` on the GPU (`mixed`) with exact frame indices, resized in the same pipeline.

    A pipeline takes a batch of whole files as bytes; `--resize crop` slices the centred square on the GPU
    before the resize; `--resize face` takes the whole frames into torch on the GPU and cuts the faces there.
    The resize is DALI's linear filter with antialiasing, the same interpolation as
    the CPU decoders' torch resize. A pipeline that failed a run is never run again.
    """

    name = "dali"

    def __init__(self, device: torch.device):
        self.device = device
        self._pipelines: dict[tuple[int, int | None, str], object] = {}

    @staticmethod
    def _key(batch: int, size: int | None, resize: str) -> tuple[int, int | None, str]:
        """Which pipeline a run needs: face clips are cut from whole frames, by torch, whatever their size."""
        return (batch, None if resize == "face" else size, resize)

    def _pipeline(self, batch: int, size: int | None, resize: str):
        key = self._key(batch, size, resize)
        if key not in self._pipelines:
            _, decoded_size, _ = key
            self._pipelines[key] = _dali_pipeline(batch, decoded_size, resize == "crop", self.device.index or 0)
        return self._pipelines[key]

    def run(
        self,
        paths: list[str],
        probes: list[Probe],
        indices: list[np.ndarray],
        size: int | None,
        resize: str,
        face: FaceSettings = FACE_DEFAULTS,
    ) -> list[tuple[np.ndarray, FaceCrops | None]]:
        """Host arrays (T, S, S, 3), or (T, H, W, 3) full frames with `size` None, one for each of `paths`, with
        the face crops of `--resize face` (found on a small grey copy on the host, cut and resized on the GPU)."""
        try:
            with refusals():
                return self._run(paths, probes, indices, size, resize, face)
        except DecodeError:
            self._pipelines.pop(self._key(len(paths), size, resize), None)
            raise

    def _run(self, paths, probes, indices, size, resize, face) -> list[tuple[np.ndarray, FaceCrops | None]]:
        pipe = self._pipeline(len(paths), size, resize)
        unique = [_unique(i) for i in indices]
        pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8) for path in paths])
        pipe.feed_input("frames", [frames.astype(np.int32) for frames, _ in unique])
        if size is not None and resize == "crop":
            windows = [_crop_window(probe.height, probe.width) for probe in probes]
            pipe.feed_input("anchor", [anchor for anchor, _ in windows])
            pipe.feed_input("shape", [shape for _, shape in windows])
        (out,) = pipe.run()
        faces = size is not None and resize == "face"
        clips = [self._on_device(out[i]) for i in range(len(paths))] if faces else list(out.as_cpu())
        for clip, (frames, _) in zip(clips, unique, strict=True):
            if len(clip) != len(frames):
                raise DecodeError(f"asked for {len(frames)} frames, DALI decoded {len(clip)}")
        if not faces:
            return [(np.asarray(clip)[positions], None) for clip, (_, positions) in zip(clips, unique, strict=True)]
        made = [
            make_clip(clip[torch.from_numpy(p).to(self.device)], picked, size, resize, face)
            for clip, (_, p), picked in zip(clips, unique, indices, strict=True)
        ]
        return [(clip.cpu().numpy(), crops) for clip, crops in made]

    def _on_device(self, sample) -> torch.Tensor:
        """One sample of a DALI GPU output copied into a torch tensor on the same device."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        frames = torch.empty(tuple(sample.shape()), dtype=torch.uint8, device=self.device)
        feed_ndarray(sample, frames, cuda_stream=torch.cuda.current_stream(self.device))
        return frames

    def decode(self, path: str, count: int) -> DecodedClip:
        with refusals():
            probe = probe_video(path)
            indices = sample_indices(probe.frames, count)
            return DecodedClip(self.run([path], [probe], [indices], None, "squash")[0][0], indices, probe)

    def clips(self, jobs: list[Job], in_flight: int) -> Iterator[tuple[Job, Result]]:
        """Batches of `in_flight` videos per pipeline run; a batch that fails is retried a video at a time."""
        with ThreadPoolExecutor(min(in_flight, os.cpu_count() or 1)) as pool:
            for start in range(0, len(jobs), in_flight):
                batch = jobs[start : start + in_flight]
                probes = list(pool.map(_probe_or_error, (job.path for job in batch)))
                ready = [(job, probe) for job, probe in zip(batch, probes, strict=True) if isinstance(probe, Probe)]
                for job, error in zip(batch, probes, strict=True):
                    if not isinstance(error, Probe):
                        yield job, error
                yield from self._batch(ready)

    def _batch(self, ready: list[tuple[Job, Probe]]) -> Iterator[tuple[Job, Result]]:
        if not ready:
            return
        first = ready[0][0]
        indices = [sample_indices(probe.frames, job.frames) for job, probe in ready]
        try:
            paths, probes = [job.path for job, _ in ready], [probe for _, probe in ready]
            clips = self.run(paths, probes, indices, first.size, first.resize, first.face)
        except DecodeError as error:
            if len(ready) == 1:
                yield first, error
                return
            for one in ready:
                yield from self._batch([one])
            return
        for (job, probe), (clip, crops), picked in zip(ready, clips, indices, strict=True):
            yield job, DecodedClip(clip, picked, probe, crops)


def _probe_or_error(path: str) -> Probe | DecodeError:
    try:
        with refusals():
            return probe_video(path)
    except DecodeError as error:
        return error


def _crop_window(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The centred square of `resize_clip(mode="crop")`, as a (y, x) anchor and (h, w) shape."""
    side = min(height, width)
    anchor = np.array([(height - side) // 2, (width - side) // 2], dtype=np.float32)
    return anchor, np.array([side, side], dtype=np.float32)


def _dali_pipeline(batch: int, size: int | None, crop: bool, device_id: int):
    """Decode (and with `size`, resize, after slicing the centred square with `crop`) a batch of encoded
    videos on GPU `device_id`. `pad_mode="none"`: a frame past the end is an error, not a black frame."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=batch, num_threads=min(batch, os.cpu_count() or 1), device_id=device_id, prefetch_queue_depth=1
    )
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(encoded, device="mixed", frames=frames, pad_mode="none")
        if size is None:
            return video
        if crop:
            anchor = fn.external_source(name="anchor", dtype=types.FLOAT, ndim=1)
            shape = fn.external_source(name="shape", dtype=types.FLOAT, ndim=1)
            video = fn.slice(video, anchor, shape, axis_names="HW", normalized_anchor=False, normalized_shape=False)
        return fn.resize(video, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)

    pipe = pipeline()
    pipe.build()
    return pipe
