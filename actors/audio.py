"""Audio front-end: decode any audio to 16 kHz mono float32, the Wav2Lip mel, and per-frame mel windows.

Decoding
    :func:`decode_audio` reads any audio PyAV can open (wav, mp3, m4a/aac, ogg/opus, flac, the audio track
    of an MP4/MOV, ...), resamples it to 16 kHz mono float32 with ``av.AudioResampler`` and decodes
    streaming (packets are never held; float32 chunks are concatenated at the end). Failures are the typed
    errors of :mod:`actors.errors`, each naming the file and the reason. Duration limits are checked twice:
    against the container's declared duration before decoding, and against the decoded sample count while
    decoding, so a header that lies cannot make us hold an unbounded amount of audio.

Mel spectrogram
    :func:`wav2lip_mel` reproduces Wav2Lip's front-end exactly (pre-emphasis 0.97, STFT n_fft 800 / hop 200
    / periodic Hann 800, centred with reflect padding, magnitude, 80 Slaney mel bands 55-7600 Hz with Slaney
    area normalisation, ``20*log10(max(1e-5, x)) - 20``, ``clip(8*((S+100)/100)-4, -4, 4)``), giving
    ``(80, 1 + N // 200)`` -- 80 mel columns per second. Digital silence and NaN input are guarded: the output
    is always finite.

Frame <-> mel windows
    Each output video frame ``i`` gets a 16-column (200 ms) mel window that *starts at the frame's time*,
    ``int(i * 80 / fps)`` (Wav2Lip's inference convention; training centres the window instead). Unlike the
    reference inference loop, which stops at the first window that would run past the end (yielding
    ``25*s - 3`` frames for ``s`` whole seconds at 25 fps), the output covers the whole audio:
    :func:`num_output_frames` is ``ceil(duration * fps)`` and windows near the tail are clamped to the last
    full window ``mel[:, T-16:]``. A mel shorter than 16 columns is edge-padded to 16 first.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction
from functools import lru_cache
from typing import Iterable

import av
import numpy as np

from actors.errors import (
    EmptyAudioError,
    InvalidParameterError,
    MediaTooLongError,
    NoAudioStreamError,
    UnreadableFileError,
    decode_failure,
)
from actors.limits import MediaLimits

SAMPLE_RATE = 16000

# Wav2Lip mel parameters (see docs / shared reference).
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_STEP = 16  # mel columns per video frame window (200 ms)
MELS_PER_SECOND = SAMPLE_RATE // HOP  # 80

# Slack over the duration limit for codec priming / padding and approximate headers.
_DURATION_SLACK_S = 0.1


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------

def _declared_duration(container, stream) -> float | None:
    """The duration the file claims, in seconds (stream first, then container), or None if unknown."""
    try:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
    except Exception:  # pragma: no cover - defensive: odd streams without a time base
        pass
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _open_audio(path, limits: MediaLimits):
    """Open ``path`` and pick its audio stream, checking what the headers can tell: the file
    exists, is media, has audio, and its declared duration is within the limit."""
    p = str(path)
    name = os.fspath(path)
    if not os.path.exists(p):
        raise UnreadableFileError(f"{name}: file does not exist", path=p)
    if os.path.isdir(p):
        raise UnreadableFileError(f"{name}: is a directory, not a media file", path=p)
    try:
        container = av.open(p, mode="r")
    except av.error.FFmpegError as exc:
        raise UnreadableFileError(f"{name}: not a readable media file ({_reason(exc)})", path=p) from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"{name}: cannot open ({_reason(exc)})", path=p) from exc
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise NoAudioStreamError(
                f"{name}: no audio stream (streams present: {', '.join(kinds)})", path=p)
        stream = container.streams.best("audio") or container.streams.audio[0]
        max_s = float(limits.max_duration_s)
        declared = _declared_duration(container, stream)
        if declared is not None and declared > max_s + _DURATION_SLACK_S:
            raise MediaTooLongError(
                f"{name}: audio is {declared:.2f} s long, over the limit of {max_s:g} s", path=p)
    except BaseException:
        container.close()
        raise
    return container, stream


def probe_audio(path, limits: MediaLimits | None = None) -> None:
    """Cheap submission-time check: the header checks of :func:`decode_audio` plus decoding up to
    the first samples (so empty or undecodable audio is caught) without decoding the whole file.
    A header without a duration is checked against the limit only when the job decodes it."""
    p, name = str(path), os.fspath(path)
    container, stream = _open_audio(path, limits or MediaLimits())
    with container:
        try:
            for frame in container.decode(stream):
                if frame.samples > 0:
                    return
        except av.error.FFmpegError as exc:
            raise decode_failure(exc, f"{name}: audio could not be decoded ({_reason(exc)})", p) from exc
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
            raise decode_failure(exc, f"{name}: audio could not be decoded ({_reason(exc)})", p) from exc

    if total == 0:
        raise EmptyAudioError(f"{name}: the audio stream holds no samples", path=p)
    samples = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if not np.all(np.isfinite(samples)):
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Mel spectrogram (Wav2Lip front-end)
# --------------------------------------------------------------------------------------------------

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    lin = f / f_sp
    with np.errstate(divide="ignore", invalid="ignore"):
        log = min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3.0
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    lin = m * f_sp
    log = min_log_hz * np.exp(logstep * (m - min_log_mel))
    return np.where(m >= min_log_mel, log, lin)


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """Triangular Slaney-scale mel filters with Slaney area normalisation, ``(n_mels, 1 + n_fft // 2)``."""
    fft_freqs = np.linspace(0.0, sr / 2.0, 1 + n_fft // 2)
    mel_pts = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    widths = np.diff(hz_pts)
    offsets = hz_pts[:, None] - fft_freqs[None, :]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=2)
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (as scipy.signal.get_window('hann', n, fftbins=True))."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.setflags(write=False)
    return w


def wav2lip_mel(samples_16k) -> np.ndarray:
    """Wav2Lip's normalised log-mel spectrogram of 16 kHz mono samples: float32 ``(80, 1 + N // 200)``."""
    y = np.asarray(samples_16k, dtype=np.float64).reshape(-1)
    n = y.size
    n_frames = 1 + n // HOP
    if n and not np.all(np.isfinite(y)):
        y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)

    # Pre-emphasis: y[k] - 0.97 * y[k-1] (same as lfilter([1, -0.97], [1], y)).
    if n:
        emph = np.empty_like(y)
        emph[0] = y[0]
        emph[1:] = y[1:] - PREEMPHASIS * y[:-1]
    else:
        emph = y

    # Reflect padding needs at least n_fft//2 + 1 samples; zero-extend shorter input first.
    pad = N_FFT // 2
    if emph.size < pad + 1:
        emph = np.concatenate([emph, np.zeros(pad + 1 - emph.size)])
    padded = np.pad(emph, pad, mode="reflect")

    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    spec = np.abs(np.fft.rfft(frames * _hann(WIN), axis=1))  # (T, 401)
    mel = mel_filterbank() @ spec.T  # (80, T)

    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    out = np.clip(norm, -MAX_ABS_VALUE, MAX_ABS_VALUE)
    out = np.nan_to_num(out, nan=-MAX_ABS_VALUE)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Video frames <-> mel windows
# --------------------------------------------------------------------------------------------------

def _as_fps(fps) -> Fraction:
    f = fps if isinstance(fps, Fraction) else Fraction(fps)
    if f <= 0:
        raise InvalidParameterError(f"fps must be positive, got {fps!r}")
    return f


def num_output_frames(n_samples: int, fps: Fraction) -> int:
    """Video frames needed to cover ``n_samples`` of 16 kHz audio: ``ceil(n_samples * fps / 16000)``, >= 1."""
    f = _as_fps(fps)
    n = max(0, int(n_samples))
    q = Fraction(n) * f / SAMPLE_RATE
    return max(1, math.ceil(q))


def mel_window_start(i: int, fps: Fraction, T: int) -> int:
    """First mel column of frame ``i``'s window: ``floor(i * 80 / fps)`` clamped to ``[0, max(0, T - 16)]``."""
    f = _as_fps(fps)
    start = math.floor(Fraction(int(i)) * MELS_PER_SECOND / f)
    return max(0, min(start, max(0, int(T) - MEL_STEP)))


def mel_windows(mel: np.ndarray, fps: Fraction, frame_indices: Iterable[int]) -> np.ndarray:
    """Stack the 16-column mel windows of the given frames: float32 ``(len(frame_indices), 80, 16)``."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] == 0:
        raise InvalidParameterError(f"mel must have shape (80, T>0), got {mel.shape}")
    if mel.shape[1] < MEL_STEP:
        mel = np.pad(mel, ((0, 0), (0, MEL_STEP - mel.shape[1])), mode="edge")
    T = mel.shape[1]
    f = _as_fps(fps)
    idx = [int(i) for i in frame_indices]
    if not idx:
        return np.zeros((0, N_MELS, MEL_STEP), np.float32)
    starts = np.fromiter((mel_window_start(i, f, T) for i in idx), dtype=np.int64, count=len(idx))
    cols = starts[:, None] + np.arange(MEL_STEP)[None, :]  # (n, 16)
    out = mel[:, cols]  # (80, n, 16)
    return np.ascontiguousarray(out.transpose(1, 0, 2), dtype=np.float32)
