"""The demux pass: a video's packets read (not decoded) to count its frames and learn their timestamps and keyframes.

Every decoder, CPU or GPU, counts frames this way (`probe_video`), so that all of them sample the same frame
numbers; PyAV's decoder also uses the packets to decode only what the sampled frames need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.decoding import DecodeError, Probe, error_line


@dataclass(frozen=True)
class Packets:
    """A video stream's packets in decode order, as the demux pass saw them."""

    pts: np.ndarray  # (n,) int64, all different
    key: np.ndarray  # (n,) bool: the container marks the packet as a keyframe


def read_packets(path: str) -> tuple[Probe, Packets | None]:
    """Stream facts with the frame count from the packets present, and the packets' timestamps and
    keyframe flags (None where some packet has no timestamp or two share one)."""
    import av

    with av.open(path) as container:
        stream = video_stream(container)
        packets = [(packet.pts, packet.is_keyframe) for packet in good_packets(container, stream)]
        context = stream.codec_context
        fps = float(stream.average_rate or 0)
        probe = Probe(len(packets), fps, context.width, context.height, context.name)
    stamps = [stamp for stamp, _ in packets]
    if None in stamps or len(set(stamps)) != len(stamps):
        return probe, None
    return probe, Packets(np.array(stamps, dtype=np.int64), np.array([key for _, key in packets], dtype=bool))


def probe_video(path: str) -> Probe:
    """A video's facts, its frame count counted from the packets present (demuxed, not decoded)."""
    try:
        probe, _ = read_packets(path)
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(error_line(error)) from error
    if probe.frames == 0:
        raise DecodeError("the video stream has no frames")
    return probe


def good_packets(container, stream):
    """The stream's whole packets: one cut short or damaged holds no frame, and a read error ends it."""
    import av

    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_corrupt:
                yield packet
    except (av.FFmpegError, EOFError):
        return


def video_stream(container):
    if not container.streams.video:
        raise DecodeError("the file has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width:
        raise DecodeError("the video stream has no codec parameters (truncated or damaged file?)")
    return stream
