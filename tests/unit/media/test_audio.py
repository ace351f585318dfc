"""Tests of actors/media/audio.py and actors/generators/mel.py: decoding, the Wav2Lip mel front-end, frame/mel windows and typed errors."""

from __future__ import annotations

import wave
from fractions import Fraction

import numpy as np
import pytest

from actors.generators import mel as audio
from actors.media import audio as media_audio
from actors.generators.mel import mel_window_start, mel_windows, wav2lip_mel
from actors.media.audio import SAMPLE_RATE, decode_audio, num_output_frames
from actors.errors import (
    EmptyAudioError,
    ErrorCode,
    MediaTooLongError,
    NoAudioStreamError,
    UnreadableFileError,
)
from actors.limits import MediaLimits
from tests.media import speech_like, synthetic_frames, write_audio, write_video

NTSC = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return speech_like(2.0, seed=1)


def _best_corr(a: np.ndarray, b: np.ndarray, max_lag: int = 0) -> float:
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".m4a", ".ogg", ".flac"])
def test_decode_formats(tmp_path, source, suffix):
    path = write_audio(tmp_path / f"a{suffix}", source)
    y = decode_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert np.isfinite(y).all()
    n = len(source)
    # within 1 % plus a codec frame or two of priming / padding
    assert abs(len(y) - n) <= 0.01 * n + 2048, (suffix, len(y), n)
    if suffix in (".wav", ".flac"):
        assert _best_corr(y, source) > 0.999
    else:  # lossy: still clearly the same signal (allow a small alignment lag)
        assert _best_corr(y, source, max_lag=64) > 0.8


def test_decode_mp4_audio_track(tmp_path, source):
    path = write_video(tmp_path / "v.mp4", synthetic_frames(50, 64, 48), fps=25, audio=source)
    y = decode_audio(path)
    assert y.dtype == np.float32
    n = len(source)
    assert abs(len(y) - n) <= 0.01 * n + 2048, (len(y), n)
    assert _best_corr(y, source, max_lag=64) > 0.8


def test_decode_resamples_to_16k(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = decode_audio(write_audio(tmp_path / "t44.wav", tone, sr=sr))
    assert abs(len(y) - SAMPLE_RATE) <= 64
    spec = np.abs(np.fft.rfft(y[:SAMPLE_RATE // 2] * np.hanning(SAMPLE_RATE // 2)))
    peak_hz = np.argmax(spec) * SAMPLE_RATE / (SAMPLE_RATE // 2)
    assert abs(peak_hz - 440) < 4


# ------------------------------------------------------------------------------------------------
# mel
# ------------------------------------------------------------------------------------------------

def _reference_mel(y: np.ndarray) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    from scipy.signal import lfilter

    emph = lfilter([1, -0.97], [1], y.astype(np.float64))
    d = librosa.stft(y=emph, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect")
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    s = np.dot(basis, np.abs(d))
    s = 20 * np.log10(np.maximum(1e-5, s)) - 20
    return np.clip(8 * ((s + 100) / 100) - 4, -4, 4)


@pytest.mark.parametrize("n", [16000 * 3, 16000 * 3 + 137, 5000])
def test_mel_matches_librosa_reference(n):
    y = speech_like(n / 16000, seed=3)[:n]
    assert len(y) == n
    got = wav2lip_mel(y)
    ref = _reference_mel(y)
    assert got.dtype == np.float32
    assert got.shape == (80, 1 + n // 200) == ref.shape
    assert np.abs(got - ref).max() < 1e-3


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    assert np.allclose(audio.mel_filterbank(), ref, atol=1e-7)


def test_mel_silence_and_nan_are_finite():
    silence = np.zeros(16000, np.float32)
    m = wav2lip_mel(silence)
    assert m.shape == (80, 81) and np.isfinite(m).all()
    assert np.all(m == -4.0)
    bad = speech_like(0.5)
    bad[100:200] = np.nan
    assert np.isfinite(wav2lip_mel(bad)).all()


@pytest.mark.parametrize("n", [0, 1, 2, 199, 200, 400, 401, 799])
def test_mel_very_short_input(n):
    m = wav2lip_mel(np.full(n, 0.1, np.float32))
    assert m.shape == (80, 1 + n // 200)
    assert np.isfinite(m).all()


def test_mel_is_fast():
    import time

    y = speech_like(60.0)
    t0 = time.perf_counter()
    m = wav2lip_mel(y)
    assert m.shape == (80, 1 + len(y) // 200)
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------------
# frames <-> mel windows
# ------------------------------------------------------------------------------------------------

def test_num_output_frames():
    for s in (1, 2, 5, 60):
        assert num_output_frames(s * 16000, Fraction(25)) == 25 * s
        assert num_output_frames(s * 16000 + 1, Fraction(25)) == 25 * s + 1
    # 30000/1001 fps: 1001 s of audio is exactly 30000 frames (no float error)
    assert num_output_frames(1001 * 16000, NTSC) == 30000
    assert num_output_frames(1001 * 16000 - 1, NTSC) == 30000
    assert num_output_frames(1001 * 16000 + 1, NTSC) == 30001
    assert num_output_frames(16000, NTSC) == 30  # 29.97 -> 30
    assert num_output_frames(0, Fraction(25)) == 1
    assert num_output_frames(1, Fraction(25)) == 1


def test_mel_window_start():
    fps = Fraction(25)
    T = 1 + 2 * 16000 // 200  # 161 mel columns for 2 s
    assert mel_window_start(0, fps, T) == 0
    assert mel_window_start(1, fps, T) == 3  # int(3.2)
    assert mel_window_start(5, fps, T) == 16
    assert mel_window_start(10, fps, T) == 32
    # tail clamps to T - 16
    assert mel_window_start(49, fps, T) == 145 == T - 16
    assert mel_window_start(46, fps, T) == 145  # int(147.2) -> clamped
    assert mel_window_start(45, fps, T) == 144
    # short mel: never negative
    assert mel_window_start(3, fps, 10) == 0
    # NTSC: exact floor of i * 80 * 1001 / 30000
    assert mel_window_start(3, NTSC, 10_000) == 8  # 8.008
    assert mel_window_start(30000, NTSC, 10**6) == 80080


def test_mel_windows_shape_and_tail():
    y = speech_like(2.0, seed=5)
    mel = wav2lip_mel(y)
    T = mel.shape[1]
    fps = Fraction(25)
    n_out = num_output_frames(len(y), fps)
    assert n_out == 50
    w = mel_windows(mel, fps, range(n_out))
    assert w.shape == (50, 80, 16) and w.dtype == np.float32
    assert np.array_equal(w[0], mel[:, 0:16])
    assert np.array_equal(w[7], mel[:, 22:38])  # int(7*3.2)=22
    # the last frames all use the clamped final window
    for i in range(46, 50):
        assert np.array_equal(w[i], mel[:, T - 16:])
    # arbitrary index order / subsets
    sub = mel_windows(mel, fps, [49, 0, 7])
    assert np.array_equal(sub, w[[49, 0, 7]])
    assert mel_windows(mel, fps, []).shape == (0, 80, 16)


def test_mel_windows_short_audio_is_edge_padded():
    y = speech_like(0.1, seed=2)  # 1600 samples -> 9 mel columns
    mel = wav2lip_mel(y)
    assert mel.shape == (80, 9)
    fps = Fraction(25)
    n_out = num_output_frames(len(y), fps)
    assert n_out == 3
    w = mel_windows(mel, fps, range(n_out))
    assert w.shape == (3, 80, 16)
    for i in range(n_out):
        assert np.array_equal(w[i, :, :9], mel)
        assert np.array_equal(w[i, :, 9:], np.repeat(mel[:, -1:], 7, axis=1))


# ------------------------------------------------------------------------------------------------
# typed errors
# ------------------------------------------------------------------------------------------------

def _check(err, path, code):
    msg = str(err.value)
    assert msg and path.name in msg
    assert err.value.code == code
    assert err.value.to_dict()["message"] == msg


def test_missing_file(tmp_path):
    p = tmp_path / "does_not_exist.wav"
    with pytest.raises(UnreadableFileError) as err:
        decode_audio(p)
    _check(err, p, ErrorCode.UNREADABLE_FILE)


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.mp3"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableFileError) as err:
        decode_audio(p)
    _check(err, p, ErrorCode.UNREADABLE_FILE)


def test_video_only_mp4(tmp_path):
    p = write_video(tmp_path / "silent_video.mp4", synthetic_frames(10, 64, 48), fps=25)
    with pytest.raises(NoAudioStreamError) as err:
        decode_audio(p)
    _check(err, p, ErrorCode.NO_AUDIO_STREAM)


def test_zero_length_wav(tmp_path):
    p = tmp_path / "empty.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    with pytest.raises(EmptyAudioError) as err:
        decode_audio(p)
    _check(err, p, ErrorCode.EMPTY_AUDIO)


def test_near_silent_audio_is_fine(tmp_path):
    p = write_audio(tmp_path / "quiet.wav", np.zeros(8000, np.float32))
    y = decode_audio(p)
    assert len(y) == 8000 and np.all(y == 0)


def test_too_long(tmp_path, source):
    p = write_audio(tmp_path / "long.wav", source)
    with pytest.raises(MediaTooLongError) as err:
        decode_audio(p, MediaLimits(max_duration_s=0.5))
    _check(err, p, ErrorCode.MEDIA_TOO_LONG)
    # within the limit it decodes
    assert len(decode_audio(p, MediaLimits(max_duration_s=3.0))) == len(source)


def test_too_long_detected_while_decoding(tmp_path, source, monkeypatch):
    """A header without (or with a lying) duration is still stopped by the running sample count."""
    p = write_audio(tmp_path / "noheader.ogg", source)
    monkeypatch.setattr(media_audio, "declared_duration_s", lambda container, stream: None)
    with pytest.raises(MediaTooLongError) as err:
        decode_audio(p, MediaLimits(max_duration_s=0.5))
    _check(err, p, ErrorCode.MEDIA_TOO_LONG)
    assert "while decoding" in str(err.value)


def test_probe_audio_checks_without_decoding_everything(tmp_path):
    from actors.media.audio import probe_audio
    from actors.limits import MediaLimits

    good = write_audio(tmp_path / "ok.wav", speech_like(1.0))
    probe_audio(good)  # no error
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    garbage = tmp_path / "junk.mp3"
    garbage.write_bytes(b"not audio" * 100)
    cases = [(empty, EmptyAudioError), (garbage, UnreadableFileError), (tmp_path / "none.wav", UnreadableFileError)]
    for path, err in cases:
        with pytest.raises(err) as info:
            probe_audio(path)
        assert path.name in str(info.value)
    with pytest.raises(MediaTooLongError):
        probe_audio(good, MediaLimits(max_duration_s=0.5))
