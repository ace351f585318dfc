"""Audio decoding: any accepted audio to 16 kHz mono float32, streaming, with typed errors.

:func:`decode_audio` reads any audio the service accepts (wav, mp3, m4a/aac, ogg/opus, flac, the audio
track of an MP4/MOV, ...; see ``actors/media/open.py``), resamples it to 16 kHz mono float32 with
``av.AudioResampler`` and decodes streaming (packets are never held; float32 chunks are concatenated at
the end). Failures are the typed errors of :mod:`actors.errors`, each naming the file and the reason.
Duration limits are checked twice: against the container's declared duration before decoding, and
against the decoded sample count while decoding, so a header that lies cannot make us hold an
unbounded amount of audio. Each generator turns the samples into its own features
(``actors/generators/``).
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np

from actors.errors import (
    EmptyAudioError,
    InvalidParameterError,
    MediaTooLongError,
    NoAudioStreamError,
    decode_failure,
)
from actors.limits import MediaLimits
from actors.media.open import declared_duration_s, open_media, reason

SAMPLE_RATE = 16000


# Slack over the duration limit for codec priming / padding and approximate headers.
_DURATION_SLACK_S = 0.1


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------

def _open_audio(path, limits: MediaLimits):
    """Open ``path`` and pick its audio stream, checking what the headers can tell: the file
    exists, is media, has audio, and its declared duration is within the limit."""
    p = name = os.fspath(path)
    container = open_media(p)
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoAudioStreamError(
                f"{name}: no audio stream (streams present: {', '.join(kinds)})", path=p)
        stream = container.streams.best("audio") or container.streams.audio[0]
        max_s = float(limits.max_duration_s)
        declared = declared_duration_s(container, stream)
        if declared is not None and declared > max_s + _DURATION_SLACK_S:
            raise MediaTooLongError(
                f"{name}: audio is {declared:.2f} s long, over the limit of {max_s:g} s", path=p)
    except BaseException:
        container.close()
        raise
    return container, stream


def probe_audio(path, limits: MediaLimits | None = None) -> float | None:
    """Cheap submission-time check: the header checks of :func:`decode_audio` plus decoding up to
    the first samples (so empty or undecodable audio is caught) without decoding the whole file.
    A header without a duration is checked against the limit only when the job decodes it.
    Returns the declared duration in seconds (None when the header has none)."""
    p, name = str(path), os.fspath(path)
    container, stream = _open_audio(path, limits or MediaLimits())
    with container:
        declared = declared_duration_s(container, stream)
        try:
            for frame in container.decode(stream):
                if frame.samples > 0:
                    return declared
        except av.error.FFmpegError as exc:
            raise decode_failure(exc, f"{name}: audio could not be decoded ({reason(exc)})", p) from exc
    raise EmptyAudioError(f"{name}: the audio stream holds no samples", path=p)


def decode_audio(path, limits: MediaLimits | None = None) -> np.ndarray:
    """Decode the (best) audio stream of ``path`` to float32 mono samples at 16 kHz.

    Raises UnreadableFileError, NoAudioStreamError, EmptyAudioError or MediaTooLongError.
    """
    limits = limits or MediaLimits()
    p, name = str(path), os.fspath(path)
    max_s = float(limits.max_duration_s)
    max_samples = int(math.ceil((max_s + _DURATION_SLACK_S) * SAMPLE_RATE))
    container, stream = _open_audio(path, limits)
    with container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0

        def take(frames) -> None:
            nonlocal total
            for rf in frames:
                arr = rf.to_ndarray()
                if arr.size == 0:
                    continue
                arr = np.asarray(arr, dtype=np.float32).reshape(-1)
                chunks.append(arr)
                total += arr.size
                if total > max_samples:
                    raise MediaTooLongError(
                        f"{name}: audio runs past {total / SAMPLE_RATE:.2f} s while decoding, over the "
                        f"limit of {max_s:g} s", path=p)

        try:
            for frame in container.decode(stream):
                take(resampler.resample(frame))
            take(resampler.resample(None))  # flush what the resampler buffered
        except av.error.FFmpegError as exc:
            raise decode_failure(exc, f"{name}: audio could not be decoded ({reason(exc)})", p) from exc

    if total == 0:
        raise EmptyAudioError(f"{name}: the audio stream holds no samples", path=p)
    samples = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if not np.all(np.isfinite(samples)):
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(samples, dtype=np.float32)


# Output frames of a job: the audio decides how long the video is.

def as_fps(fps) -> Fraction:
    f = fps if isinstance(fps, Fraction) else Fraction(fps)
    if f <= 0:
        raise InvalidParameterError(f"fps must be positive, got {fps!r}")
    return f


def num_output_frames(n_samples: int, fps: Fraction) -> int:
    """Video frames needed to cover ``n_samples`` of 16 kHz audio: ``ceil(n_samples * fps / 16000)``, >= 1."""
    f = as_fps(fps)
    n = max(0, int(n_samples))
    q = Fraction(n) * f / SAMPLE_RATE
    return max(1, math.ceil(q))
