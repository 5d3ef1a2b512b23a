"""Decoders: one interface (`ingest.decoding`), several engines, and the registry that chooses and makes them.

A decoder returns exactly the frames at `sample_indices(n, count)` of a video's `n` decodable
frames, at full resolution, in RGB. `n` is counted (`ingest.demux`), not read from container metadata, which
can claim frames that are not there. The CPU decoders live here; the GPU ones sit beside them in
`ingest.gpu_decoders`, under the same names and interface.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from itertools import chain

import numpy as np
import torch

from ingest.decoding import DecodedClip, DecodeError, Decoder, Probe, error_line
from ingest.demux import Packets, good_packets, read_packets, video_stream
from ingest.frames import sample_indices
from ingest.gpu_decoders import STAND_INS, GpuDecoder, gpu_unavailable, make_gpu_decoder

# Frames of fewer pixels than 1280x720 decode in one thread (FFmpeg's slice threads: one slice under x264's
# defaults), however many cores a worker has: frame threads give each thread a decoder context per video and hold
# frames back in their pipeline, which small frames do not repay. Measured 2026-11-29 on 2 shared cores, decode_row
# (16 frames to 224 px) with 2 threads over 1, alternating video by video (median, min-max of 3 rounds): 320x180
# 1.03 (1.01-1.12), 640x360 1.01 (0.98-1.43), 942x500 of 48 frames 1.00 (0.97-1.26), of 400 frames 0.97
# (0.92-0.97), 1280x720 1.44 (1.17-1.60), 1920x1080 1.19 (1.14-1.23); and bench rows of RESULTS.md: build-cache
# with 1 worker and 2 threads at 0.64-0.97 of 1 worker pinned to 1 core on the 320x180 demo set.
FRAME_THREADS_FROM_PIXELS = 1280 * 720


def decoder_threads(cores: int, pixels: int) -> int:
    """Threads for decoding frames of `pixels` pixels with `cores` cores to oneself (0: FFmpeg's own choice):
    more than one only for frames large enough for frame threads to pay."""
    return cores if pixels >= FRAME_THREADS_FROM_PIXELS else 1


class PyAVDecoder:
    """FFmpeg through PyAV, decoding only what the sampled frames need.

    A first pass reads the packets (no decoding) to count the frames and learn their timestamps and
    keyframes; the second decodes forward but feeds the decoder only the packets the sampled frames
    depend on (see `_feed_mask`), skips every non-reference frame that is not sampled (FFmpeg's
    `skip_frame`), converts only the sampled frames to RGB and stops after the last one. Frames are
    told apart by timestamp, so skipped frames do not shift the count. Files whose timestamps cannot
    be trusted, whose keyframes are not what their packets claim, or that decode fewer frames than
    their packets promise, are decoded frame by frame.
    """

    name = "pyav"

    def __init__(self, threads: int = 0):
        self.threads = threads

    def decode(self, path: str, count: int) -> DecodedClip:
        try:
            probe, packets = read_packets(path)
            if probe.frames == 0:
                raise DecodeError("the video stream has no frames")
            indices = sample_indices(probe.frames, count)
            threads = decoder_threads(self.threads, probe.width * probe.height)
            if packets is not None:
                frames = self._pick_by_timestamp(path, packets, np.sort(packets.pts)[indices], threads)
                if frames is not None:
                    return DecodedClip(np.stack(frames), indices, probe)
            frames, decoded = self._pick_in_order(path, indices, threads)
            if decoded <= indices[-1]:
                # Fewer frames decode than the packets promised. Frame threads may drop a different
                # number of frames near damage on each pass, so count and pick again in one thread.
                _, decoded = self._pick_in_order(path, None, 1)
                if decoded == 0:
                    raise DecodeError("no frame of the video stream decodes")
                probe = replace(probe, frames=decoded)
                indices = sample_indices(decoded, count)
                frames, _ = self._pick_in_order(path, indices, 1)
            return DecodedClip(np.stack(frames), indices, probe)
        except DecodeError:
            raise
        except Exception as error:
            raise DecodeError(error_line(error)) from error

    def _open(self, container, threads: int):
        stream = video_stream(container)
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        return stream

    def _pick_by_timestamp(
        self, path: str, packets: Packets, wanted: np.ndarray, threads: int
    ) -> list[np.ndarray] | None:
        """RGB frames with the `wanted` timestamps (repeats kept); None if one of them never decodes, or
        a group of pictures fed after a gap does not start with a real keyframe."""
        import av

        needed = set(wanted.tolist())
        fed = _feed_mask(packets, needed)
        feed = set(packets.pts[fed].tolist())
        last = int(packets.pts[np.flatnonzero(fed)[-1]])
        picker = _Picker(needed)
        with av.open(path) as container:
            stream = self._open(container, threads)
            context = stream.codec_context
            sent = gap = False
            try:
                for packet in good_packets(container, stream):
                    if packet.pts not in feed:
                        gap = True
                        continue
                    if gap:
                        if sent:
                            _restart(stream, picker)
                        picker.expect_key(packet.pts)
                        gap = False
                    context.skip_frame = "DEFAULT" if packet.pts in needed or packet.is_keyframe else "NONREF"
                    sent = True
                    picker.take(stream.decode(packet))
                    if packet.pts == last:
                        break
                picker.take(stream.decode(None))
            except (av.FFmpegError, EOFError):
                return None
        return picker.result(wanted)

    def _pick_in_order(self, path: str, indices: np.ndarray | None, threads: int) -> tuple[list[np.ndarray], int]:
        """RGB frames at positions `indices` of the decoded sequence, and how many frames decoded.

        It stops after the last index, or at the end of what decodes (then the count is all of it);
        with `indices` None it only counts.
        """
        import av

        wanted = np.bincount(indices) if indices is not None else None
        frames: list[np.ndarray] = []
        decoded = 0
        with av.open(path) as container:
            stream = self._open(container, threads)
            for packet in chain(good_packets(container, stream), [None]):  # None flushes the decoder
                try:
                    decoded_frames = stream.decode(packet)
                except (av.FFmpegError, EOFError):
                    continue  # undecodable data: the frames that decode still count
                for frame in decoded_frames:
                    if wanted is not None and wanted[decoded]:
                        frames.extend([frame.to_ndarray(format="rgb24")] * int(wanted[decoded]))
                    decoded += 1
                    if wanted is not None and decoded == len(wanted):
                        return frames, decoded
        return frames, decoded


def _feed_mask(packets: Packets, needed: set[int]) -> np.ndarray:
    """Which packets (decode order) the frames with timestamps `needed` depend on.

    A group of pictures (GOP) runs from a keyframe to the next one. A frame can only reference frames
    decoded before it, so a GOP is fed up to its last needed packet, and not at all if it holds none.
    An open GOP's leading pictures (after its keyframe in decode order, before it in presentation
    order) reference the GOP before, so that one is fed whole whenever the open GOP is fed at all.
    """
    n = len(packets.pts)
    starts = np.flatnonzero(packets.key)
    if not starts.size or starts[0] != 0:
        starts = np.concatenate([[0], starts])  # packets before the first keyframe form a GOP of their own
    ends = np.append(starts[1:], n)
    hit = np.isin(packets.pts, np.fromiter(needed, np.int64, len(needed)))
    fed = np.zeros(n, dtype=bool)
    whole = False  # the GOP after this one needs all of it
    for start, end in zip(starts[::-1], ends[::-1], strict=True):
        hits = np.flatnonzero(hit[start:end])
        stop = end if whole else start + int(hits[-1]) + 1 if hits.size else start
        fed[start:stop] = True
        whole = stop > start and bool(packets.key[start]) and _has_leading(packets.pts[start:end])
    return fed


def _has_leading(gop: np.ndarray) -> bool:
    """Whether packets after the keyframe come before it in presentation order (an open GOP)."""
    return bool((gop[1:] < gop[0]).any())


def _restart(stream, picker: _Picker) -> None:
    """Drain the decoder (its reordered frames are kept), then reset it for a GOP after a gap."""
    picker.take(stream.decode(None))
    stream.codec_context.flush_buffers()


class _Picker:
    """The wanted frames out of what the decoder returns, in RGB."""

    def __init__(self, needed: set[int]):
        self.needed = needed
        self.found: dict[int, np.ndarray] = {}
        self.key: int | None = None  # the keyframe that must come out next, after a gap
        self.broken = False

    def expect_key(self, pts: int) -> None:
        self.key = pts

    def take(self, frames) -> None:
        for frame in frames:
            if self.key is not None:
                # After a gap only a keyframe without leading pictures may come out first; anything else
                # means the container's keyframe flag lied, and skipped packets may have been needed.
                self.broken |= frame.pts != self.key or not frame.key_frame
                self.key = None
            if frame.pts in self.needed and frame.pts not in self.found:
                self.found[frame.pts] = frame.to_ndarray(format="rgb24")

    def result(self, wanted: np.ndarray) -> list[np.ndarray] | None:
        if self.broken or len(self.found) != len(self.needed):
            return None
        return [self.found[stamp] for stamp in wanted.tolist()]


class DecordDecoder:
    """decord's `get_batch`, which seeks to the keyframe before each sampled frame."""

    name = "decord"

    def __init__(self, threads: int = 0):
        self.threads = threads

    def decode(self, path: str, count: int) -> DecodedClip:
        import decord

        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=self.threads)
            n = len(reader)
            if n == 0:
                raise DecodeError("the video stream has no frames")
            indices = sample_indices(n, count)
            frames = reader.get_batch(list(indices)).asnumpy()
            first = reader[0].shape
            probe = Probe(n, float(reader.get_avg_fps()), first[1], first[0], "")
            return DecodedClip(frames, indices, probe)
        except DecodeError:
            raise
        except Exception as error:
            raise DecodeError(error_line(error)) from error


CPU_DECODERS: dict[str, Callable[..., Decoder]] = {"pyav": PyAVDecoder, "decord": DecordDecoder}  # made (threads=N)
GPU_DECODERS = ["nvdec", "dali"]  # in ingest.gpu_decoders; their libraries are imported only where a GPU is used
# `auto` takes the first that works here: a GPU decoder where there is a GPU, else the fastest CPU one.
DECODERS = [*GPU_DECODERS, *CPU_DECODERS]
MODULES = {"pyav": "av", "decord": "decord", "nvdec": "PyNvVideoCodec", "dali": "nvidia.dali"}


def stand_in(name: str, make: Callable[[], GpuDecoder], gpu: bool = True) -> None:
    """Decode as decoder `name` with `make()`, which needs no GPU: as a GPU decoder, in the GPU decoding process
    where nvdec and dali run, or (not `gpu`) as a CPU decoder, in the forked workers. How a machine without a GPU
    tests that a decoder that crashes its process, or never returns, costs rows, not the build."""
    STAND_INS[name] = make
    DECODERS.append(name)
    if gpu:
        GPU_DECODERS.append(name)
    else:
        CPU_DECODERS[name] = lambda threads=0: make()


def unavailable(name: str) -> str | None:
    """Why decoder `name` cannot run here, or None when it can; a GPU decoder is started once to tell."""
    if name in STAND_INS:
        return None
    if name in GPU_DECODERS and not torch.cuda.is_available():
        return f"{name} decodes on an NVIDIA GPU, and torch sees none here"
    if not _installed(MODULES[name]):
        extra = " (pip install 'clipcache[gpu]')" if name in GPU_DECODERS else ""
        return f"{name} is not installed{extra}"
    if name in GPU_DECODERS:
        return gpu_unavailable(name)
    return None


def available(name: str) -> bool:
    return unavailable(name) is None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (`nvidia`) is missing
        return False


def choose(name: str) -> tuple[str, str]:
    """The decoder `name` stands for, and a line saying why: for `auto`, the first of DECODERS that works."""
    if name == "auto":
        gpu = torch.cuda.is_available()
        passed = [] if gpu else ["no NVIDIA GPU here for nvdec or dali"]
        for candidate in DECODERS if gpu else CPU_DECODERS:
            why = unavailable(candidate)
            if why is None:
                return candidate, f"decoder auto: {candidate}" + (f" ({'; '.join(passed)})" if passed else "")
            passed.append(why)
        raise DecodeError(f"no decoder works here: {'; '.join(passed)}")
    if name not in DECODERS:
        raise DecodeError(f"unknown decoder {name!r}: choose from auto, {', '.join(DECODERS)}")
    why = unavailable(name)
    if why is not None:
        raise DecodeError(why)
    return name, f"decoder {name}"


def resolve(name: str) -> str:
    return choose(name)[0]


def make_decoder(name: str, threads: int = 0) -> Decoder:
    """A decoder for one video at a time; `threads` is the CPU decoders' thread count."""
    name = resolve(name)
    if name in GPU_DECODERS:
        return make_gpu_decoder(name)
    return CPU_DECODERS[name](threads=threads)
