"""The Wav2Lip mel front-end, shared by the Wav2Lip and the default (mouth-warp) generators.

:func:`wav2lip_mel` reproduces Wav2Lip's front-end exactly (pre-emphasis 0.97, STFT n_fft 800 / hop 200
/ periodic Hann 800, centred with reflect padding, magnitude, 80 Slaney mel bands 55-7600 Hz with Slaney
area normalisation, ``20*log10(max(1e-5, x)) - 20``, ``clip(8*((S+100)/100)-4, -4, 4)``), giving
``(80, 1 + N // 200)`` -- 80 mel columns per second. Digital silence and NaN input are guarded: the output
is always finite.

Frame <-> mel windows: each output video frame ``i`` gets a 16-column (200 ms) mel window that *starts at
the frame's time*, ``int(i * 80 / fps)`` (Wav2Lip's inference convention; training centres the window
instead). Unlike the reference inference loop, which stops at the first window that would run past the end
(yielding ``25*s - 3`` frames for ``s`` whole seconds at 25 fps), the output covers the whole audio
(``ceil(duration * fps)`` frames, ``actors/plan.py``) and windows near the tail are clamped to the last full
window ``mel[:, T-16:]``. A mel shorter than 16 columns is edge-padded to 16 first.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Iterable

import numpy as np

from actors.errors import InvalidParameterError
from actors.media.audio import SAMPLE_RATE, as_fps

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

# --------------------------------------------------------------------------------------------------
# Mel spectrogram (Wav2Lip front-end)
# --------------------------------------------------------------------------------------------------

def hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
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


def mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
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
    mel_pts = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2)
    hz_pts = mel_to_hz_slaney(mel_pts)
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

def mel_window_start(i: int, fps: Fraction, T: int) -> int:
    """First mel column of frame ``i``'s window: ``floor(i * 80 / fps)`` clamped to ``[0, max(0, T - 16)]``."""
    f = as_fps(fps)
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
    f = as_fps(fps)
    idx = [int(i) for i in frame_indices]
    if not idx:
        return np.zeros((0, N_MELS, MEL_STEP), np.float32)
    starts = np.fromiter((mel_window_start(i, f, T) for i in idx), dtype=np.int64, count=len(idx))
    cols = starts[:, None] + np.arange(MEL_STEP)[None, :]  # (n, 16)
    out = mel[:, cols]  # (80, n, 16)
    return np.ascontiguousarray(out.transpose(1, 0, 2), dtype=np.float32)


def mel_features(samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
    """The per-frame features of the mel-driven backends: ``float32[n_frames, 80, 16]``."""
    return mel_windows(wav2lip_mel(samples_16k), fps, range(int(n_frames)))
