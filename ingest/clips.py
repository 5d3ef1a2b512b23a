"""One video in, one clip out: the work a build's decoding processes do.

Kept apart from `ingest.build` so that worker processes import only what decoding needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from ingest.decoders import GPU_DECODERS, available, make_decoder
from ingest.decoding import DecodedClip, DecodeError, Probe, error_line
from ingest.faces import FACE_DEFAULTS, NO_FACE, FaceCrops, FaceSettings
from ingest.frames import make_clip

# The decoder that tries a video its decoder failed on: PyAV's careful path for a GPU decoder's refusals (and for
# the videos a GPU decoder's process died with) and for decord's (decord refuses truncated faststart MP4 files that
# PyAV decodes), decord for PyAV's.
FALLBACK = "pyav"
CPU_FALLBACKS = {"pyav": "decord", "decord": "pyav"}
FELL_BACK_TO = "fell back to "  # an ok row's error starts so: the first decoder's reason, kept in the store
FELL_BACK = f"{FELL_BACK_TO}{FALLBACK}: "


@dataclass(frozen=True)
class RowJob:
    row: int
    path: str
    decoder: str
    threads: int
    frames: int
    size: int
    resize: str
    face: FaceSettings = FACE_DEFAULTS
    whole: bool = False  # also send back the middle sampled frame uncropped, where a face was cropped out


@dataclass
class RowOutcome:
    row: int
    clip: np.ndarray | None
    indices: np.ndarray | None
    probe: Probe
    error: str = ""
    decoder: str = ""  # the decoder that produced the clip
    face: FaceCrops | None = None  # `--resize face`: the crop windows (none detected: squashed)
    whole: np.ndarray | None = None  # (H, W, 3) the middle sampled frame uncropped, where the job asked for it

    @property
    def fell_back(self) -> bool:
        """The job's decoder failed on this video and its fallback decoded it."""
        return self.clip is not None and self.error.startswith(FELL_BACK_TO)


def decode_row(job: RowJob) -> RowOutcome:
    """Decode, sample and resize one video, with the other CPU decoder where the job's fails; any failure
    becomes the row's reason, never an exception."""
    return settled(_decode(job), job)


def settled(outcome: RowOutcome, job: RowJob) -> RowOutcome:
    """A row's last word, on every decoder's path: a failure tried once more by the fallback decoder, then
    `--no-face fail` applied."""
    return without_face(fall_back(outcome, job), job)


def _decode(job: RowJob) -> RowOutcome:
    try:
        decoded = make_decoder(job.decoder, job.threads).decode(job.path, job.frames)
        clip, face = make_clip(decoded.frames, decoded.indices, job.size, job.resize, job.face)
        indices = decoded.indices.astype(np.int32)
        whole = None
        if job.whole and face is not None and face.detected:  # one frame, copied: it is sent back whole
            whole = np.array(decoded.frames[len(decoded.frames) // 2])
        return RowOutcome(job.row, clip.numpy(), indices, decoded.probe, decoder=job.decoder, face=face, whole=whole)
    except Exception as error:
        return failed_row(job.row, error)


def without_face(outcome: RowOutcome, job: RowJob) -> RowOutcome:
    """Under `--no-face fail`, a face clip in whose sampled frames no face was found fails, its probe kept.

    Decided after the fallback, which is for videos that do not decode, not for videos without a face.
    """
    if outcome.face is None or outcome.face.detected or job.face.no_face != "fail":
        return outcome
    return replace(outcome, clip=None, indices=None, error=NO_FACE, decoder="", face=None)


def failed_row(row: int, error: Exception, source: str = "") -> RowOutcome:
    """A row that did not decode, its reason on one line: a DecodeError's message, else the exception's type too."""
    reason = error_line(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error_line(error)}"
    return RowOutcome(row, None, None, Probe(), f"{source}{reason}"[:200])


def too_long(seconds: float) -> str:
    """Why a video whose decoding was ended has no clip."""
    return f"decoding took longer than --video-timeout {seconds:g} s"


def timed_out(job: RowJob, seconds: float) -> RowOutcome:
    """The failed row of a video whose decoding did not end within `seconds`."""
    return RowOutcome(job.row, None, None, Probe(), too_long(seconds))


def gpu_rows(jobs: list[RowJob], in_flight: int) -> Iterator[RowOutcome]:
    """Outcomes of `jobs` (one GPU decoder, named in the jobs), `in_flight` videos at a time, PyAV retrying
    the videos the GPU decoder fails on, one decoder thread each. Nothing of the GPU path raises past this."""
    from ingest.gpu_decoders import gpu_results

    for job, result in gpu_results(jobs, in_flight):
        yield settled(_gpu_outcome(job, result), replace(job, threads=1))


def _gpu_outcome(job: RowJob, result: DecodedClip | DecodeError) -> RowOutcome:
    if isinstance(result, DecodeError):
        return failed_row(job.row, result, source=f"{job.decoder}: ")
    indices = result.indices.astype(np.int32)
    return RowOutcome(job.row, result.frames, indices, result.probe, decoder=job.decoder, face=result.face)


def fall_back(outcome: RowOutcome, job: RowJob) -> RowOutcome:
    """A failed `outcome` of `job` tried once more with its decoder's fallback, where that one is installed.

    A row the fallback saves keeps the first decoder's reason after "fell back to NAME: ", and the row's
    decoder says which one made the clip, so that a build (and its store) counts the fallbacks: a GPU build
    whose every row fell back must not look like a GPU build. A row both fail on gives both reasons.
    """
    other = fallback_of(job.decoder)
    if outcome.clip is not None or other is None or not available(other):
        return outcome
    return _retried(outcome.error, other, _decode(replace(job, decoder=other)))


def fallback_of(decoder: str) -> str | None:
    """The decoder that tries the videos `decoder` fails on."""
    return FALLBACK if decoder in GPU_DECODERS else CPU_FALLBACKS.get(decoder)


def after_gpu_crash(retry: RowOutcome, job: RowJob, reason: str) -> RowOutcome:
    """`retry`, the CPU workers' outcome of a video that GPU `job` may have been decoding when the GPU decoder's
    process died: a fallback like any other, `reason` (why the GPU gave no clip) kept as the GPU's failure."""
    return _retried(f"{job.decoder}: {reason}", retry.decoder or FALLBACK, retry)


def _retried(first: str, other: str, retry: RowOutcome) -> RowOutcome:
    """`retry`, by decoder `other`, of a video whose first decoder failed for reason `first`."""
    saved = retry.clip is not None
    reason = f"{FELL_BACK_TO}{other}: {first}" if saved else f"{first}; {other}: {retry.error}"
    return replace(retry, error=reason[:200])
