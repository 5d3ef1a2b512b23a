"""GPU decoders on NVIDIA's video engines: PyNvVideoCodec (`nvdec`) and DALI (`dali`).

Both count a video's frames with the same demux pass as the CPU decoders (`probe_video`), so every
decoder samples the same frame numbers; ask the GPU for exactly those frames; resize them on the GPU;
and copy only the small clips back to the host. One decoder instance keeps at most one decode engine
busy (an H100 has seven), so several videos are always in flight. A video a GPU decoder cannot decode
is decoded again by PyAV, whose careful path handles damaged files, before it is called failed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch

from ingest.clips import RowJob, RowOutcome, decode_row, failed_row
from ingest.decoders import DecodedClip, DecodeError, Probe, available, probe_video
from ingest.frames import resize_clip, sample_indices

FALLBACK = "pyav"


def gpu_rows(jobs: list[RowJob], in_flight: int) -> Iterator[RowOutcome]:
    """Outcomes of `jobs` (one GPU decoder, named in the jobs), `in_flight` videos at a time."""
    decoder = make_gpu_decoder(jobs[0].decoder)
    by_row = {job.row: job for job in jobs}
    for outcome in decoder.clips(jobs, max(1, in_flight)):
        if outcome.clip is None and available(FALLBACK):
            outcome = decode_row(replace(by_row[outcome.row], decoder=FALLBACK, threads=1))
        yield outcome


def make_gpu_decoder(name: str) -> NvdecDecoder | DaliDecoder:
    device = torch.device("cuda", torch.cuda.current_device())
    return NvdecDecoder(device) if name == "nvdec" else DaliDecoder(device)


def _unique(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct frame numbers to decode, and where each sampled index finds its frame among them
    (short videos repeat frames; a decoder is asked for each frame once)."""
    return np.unique(indices, return_inverse=True)


def _failed(job: RowJob, error: Exception) -> RowOutcome:
    return failed_row(job.row, error, source=f"{job.decoder}: ")


class NvdecDecoder:
    """PyNvVideoCodec's `SimpleDecoder` into device memory, one instance per video, several threads at once.

    Each thread has its own CUDA stream, handed to the decoder too, so that colour conversion, resize and
    the copy back of one video overlap with the others'.
    """

    name = "nvdec"

    def __init__(self, device: torch.device):
        self.device = device

    def frames(self, path: str, indices: np.ndarray, stream: torch.cuda.Stream) -> torch.Tensor:
        """(T, H, W, 3) uint8 RGB on the GPU, the frames at `indices` (repeats kept)."""
        import PyNvVideoCodec as nvc

        unique, positions = _unique(indices)
        reader = nvc.SimpleDecoder(
            path,
            gpu_id=self.device.index or 0,
            cuda_stream=stream.cuda_stream,
            use_device_memory=True,
            output_color_type=nvc.OutputColorType.RGB,
        )
        surfaces = reader.get_batch_frames_by_index(unique.tolist())
        if len(surfaces) != len(unique):
            raise DecodeError(f"asked for {len(unique)} frames, the GPU decoded {len(surfaces)}")
        decoded = torch.stack([_hwc(torch.from_dlpack(surface)) for surface in surfaces])
        return decoded[torch.from_numpy(positions).to(self.device)]

    def decode(self, path: str, count: int, size: int | None = None, resize: str = "squash") -> DecodedClip:
        """The sampled frames on the host: full size, or resized on the GPU to `size` first."""
        probe = probe_video(path)
        indices = sample_indices(probe.frames, count)
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            frames = self.frames(path, indices, stream)
            if size is not None:
                frames = resize_clip(frames, size, resize)
            return DecodedClip(frames.cpu().numpy(), indices, probe)

    def clips(self, jobs: list[RowJob], in_flight: int) -> Iterator[RowOutcome]:
        with ThreadPoolExecutor(in_flight, thread_name_prefix="nvdec") as pool:
            yield from pool.map(self._row, jobs)

    def _row(self, job: RowJob) -> RowOutcome:
        try:
            clip = self.decode(job.path, job.frames, job.size, job.resize)
            return RowOutcome(job.row, clip.frames, clip.indices.astype(np.int32), clip.probe)
        except Exception as error:
            return _failed(job, error)


def _hwc(frame: torch.Tensor) -> torch.Tensor:
    """PyNvVideoCodec hands interleaved RGB as (H, W, 3); planar as (3, H, W)."""
    return frame if frame.shape[-1] == 3 else frame.permute(1, 2, 0)


class DaliDecoder:
    """DALI's `fn.decoders.video` on the GPU (`mixed`) with exact frame indices, resized in the same pipeline.

    A pipeline takes a batch of whole files as bytes; `--resize crop` slices the centred square on the GPU
    before the resize. The resize is DALI's linear filter with antialiasing, the same interpolation as
    the CPU decoders' torch resize.
    """

    name = "dali"

    def __init__(self, device: torch.device):
        self.device = device
        self._pipelines: dict[tuple[int, int | None], object] = {}

    def _pipeline(self, batch: int, size: int | None, resize: str):
        key = (batch, size, resize)
        if key not in self._pipelines:
            self._pipelines[key] = _dali_pipeline(batch, size, resize == "crop", self.device.index or 0)
        return self._pipelines[key]

    def run(self, paths: list[str], probes: list[Probe], indices: list[np.ndarray], size: int | None, resize: str):
        """Host arrays (T, S, S, 3), or (T, H, W, 3) full frames with `size` None, one for each of `paths`."""
        pipe = self._pipeline(len(paths), size, resize)
        unique = [_unique(i) for i in indices]
        pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8) for path in paths])
        pipe.feed_input("frames", [frames.astype(np.int32) for frames, _ in unique])
        if size is not None and resize == "crop":
            windows = [_crop_window(probe.height, probe.width) for probe in probes]
            pipe.feed_input("anchor", [anchor for anchor, _ in windows])
            pipe.feed_input("shape", [shape for _, shape in windows])
        (out,) = pipe.run()
        host = out.as_cpu()
        return [np.asarray(host[i])[positions] for i, (_, positions) in enumerate(unique)]

    def decode(self, path: str, count: int) -> DecodedClip:
        probe = probe_video(path)
        indices = sample_indices(probe.frames, count)
        return DecodedClip(self.run([path], [probe], [indices], None, "squash")[0], indices, probe)

    def clips(self, jobs: list[RowJob], in_flight: int) -> Iterator[RowOutcome]:
        """Batches of `in_flight` videos per pipeline run; a batch that fails is retried a video at a time."""
        with ThreadPoolExecutor(min(in_flight, os.cpu_count() or 1)) as pool:
            for start in range(0, len(jobs), in_flight):
                batch = jobs[start : start + in_flight]
                probes = list(pool.map(_probe_or_error, (job.path for job in batch)))
                ready = [(job, probe) for job, probe in zip(batch, probes, strict=True) if isinstance(probe, Probe)]
                for job, error in zip(batch, probes, strict=True):
                    if not isinstance(error, Probe):
                        yield _failed(job, error)
                yield from self._batch(ready)

    def _batch(self, ready: list[tuple[RowJob, Probe]]) -> Iterator[RowOutcome]:
        if not ready:
            return
        first = ready[0][0]
        indices = [sample_indices(probe.frames, job.frames) for job, probe in ready]
        try:
            paths, probes = [job.path for job, _ in ready], [probe for _, probe in ready]
            clips = self.run(paths, probes, indices, first.size, first.resize)
        except Exception as error:
            if len(ready) == 1:
                yield _failed(first, error)
                return
            self._pipelines.clear()  # a pipeline that raised is not reused
            for one in ready:
                yield from self._batch([one])
            return
        for (job, probe), clip, picked in zip(ready, clips, indices, strict=True):
            yield RowOutcome(job.row, clip, picked.astype(np.int32), probe)


def _probe_or_error(path: str) -> Probe | Exception:
    try:
        return probe_video(path)
    except Exception as error:
        return error


def _crop_window(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The centred square of `resize_clip(mode="crop")`, as a (y, x) anchor and (h, w) shape."""
    side = min(height, width)
    anchor = np.array([(height - side) // 2, (width - side) // 2], dtype=np.float32)
    return anchor, np.array([side, side], dtype=np.float32)


def _dali_pipeline(batch: int, size: int | None, crop: bool, device_id: int):
    """Decode (and with `size`, resize, after slicing the centred square with `crop`) a batch of encoded
    videos on GPU `device_id`."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=batch, num_threads=min(batch, os.cpu_count() or 1), device_id=device_id, prefetch_queue_depth=1
    )
    def pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(encoded, device="mixed", frames=frames)
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
