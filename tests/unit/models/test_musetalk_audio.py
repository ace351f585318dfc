"""MuseTalk audio path: whisper pieces anchored at t=0, per-frame windows, edges and fps handling."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from actors.models.musetalk.audio_windows import WINDOW_STEPS, frame_windows, reference_frame_count
from actors.models.musetalk.whisper import PIECE_SAMPLES, load_whisper
from actors.models.musetalk.random_weights import write_random_models

SR = 16000


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_random_models(tmp_path_factory.mktemp("musetalk_reduced"), reduced=True)


@pytest.fixture(scope="module")
def whisper(models_dir):
    return load_whisper(models_dir)


def _coded_states(n_steps: int, n_layers: int = 5, d: int = 3) -> np.ndarray:
    """states[t, l, :] = t + 1 + l / 10, so a window's values say which steps it holds (0 = padding)."""
    t = np.arange(n_steps, dtype=np.float32)[:, None, None] + 1
    layer = np.arange(n_layers, dtype=np.float32)[None, :, None] / 10
    return np.broadcast_to(t + layer, (n_steps, n_layers, d)).copy()


def _steps_of(window: np.ndarray, n_layers: int = 5) -> list[int]:
    """Original step index of each of a window's 10 steps (-1 for zero padding)."""
    per_step = window.reshape(WINDOW_STEPS, n_layers, -1)[:, 0, 0]
    return [int(round(v)) - 1 if v else -1 for v in per_step]


def test_25fps_windows_cover_steps_2i_minus_4_to_2i_plus_5_with_zero_padding_at_both_ends():
    n_samples = int(3.0 * SR)  # 150 whisper steps, 75 frames
    states = _coded_states(1500)  # a padded 30 s piece: steps >= 150 must be dropped
    win = frame_windows(states, n_samples, Fraction(25), 75)
    assert win.shape == (75, 50, 3) and win.dtype == np.float32
    for i in (0, 1, 2, 37, 72, 73, 74):
        expected = [s if 0 <= s < 150 else -1 for s in range(2 * i - 4, 2 * i + 6)]
        assert _steps_of(win[i]) == expected, i
    # token order: step-major, layer-minor (token = step * 5 + layer)
    assert np.allclose(win[10, :5, 0], 2 * 10 - 4 + 1 + np.arange(5) / 10)


def test_frames_past_the_reference_count_continue_over_zero_padding():
    n_samples = int(2.04 * SR)  # 2.04 s * 25 fps = 51 -> reference 51 frames; ask for far more
    assert reference_frame_count(n_samples, 25) == 51
    states = _coded_states(1500)
    win = frame_windows(states, n_samples, Fraction(25), 60)
    assert win.shape[0] == 60
    keep = 102
    assert _steps_of(win[50]) == [s if s < keep else -1 for s in range(96, 106)]
    assert not win[58:].any()  # windows entirely past the audio are all padding


def test_integer_fps_matches_the_reference_indexing_and_fractional_fps_stays_in_sync():
    n_samples = 10 * SR
    states = _coded_states(1500)
    for fps in (24, 30, 50):
        m = 50 / int(fps)
        win = frame_windows(states, n_samples, Fraction(fps), reference_frame_count(n_samples, fps))
        pad = math.ceil(m) * 2
        for i in (0, 7, len(win) - 1):
            start = math.floor(i * m) - pad  # the reference's float indexing
            assert start == math.floor(i * Fraction(50, fps)) - pad
            assert _steps_of(win[i])[0] == (start if start >= 0 else -1)
    ntsc = Fraction(30000, 1001)
    n = reference_frame_count(n_samples, ntsc)
    assert n == 299
    win = frame_windows(states, n_samples, ntsc, n)
    # frame 298 starts at 9.943 s -> step floor(298 * 50 / 29.97) - 4 = 493 (truncated fps would give 509)
    assert _steps_of(win[298])[0] == math.floor(298 * Fraction(50) / ntsc) - 4 == 493


def test_zero_frames_and_bad_input():
    assert frame_windows(_coded_states(10), SR, Fraction(25), 0).shape == (0, 50, 3)
    from actors.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):
        frame_windows(_coded_states(10), SR, Fraction(0), 3)
    with pytest.raises(InvalidParameterError):
        frame_windows(np.zeros((10, 3)), SR, Fraction(25), 3)


def test_whisper_pieces_are_anchored_at_zero_and_encoded_separately(whisper):
    rng = np.random.default_rng(0)
    samples = (rng.standard_normal(PIECE_SAMPLES + SR) * 0.1).astype(np.float32)  # 31 s
    states = whisper.hidden_states(samples)
    assert states.shape == (3000, 5, whisper.d_model) and states.dtype == np.float32
    first = whisper.hidden_states(samples[:PIECE_SAMPLES])
    second = whisper.hidden_states(samples[PIECE_SAMPLES:])
    np.testing.assert_array_equal(states[:1500], first)
    np.testing.assert_array_equal(states[1500:], second)
    # layer axis = all encoder hidden states; the last is the encoder output (after its LayerNorm)
    feats = whisper.extractor(samples[:PIECE_SAMPLES], sampling_rate=SR, return_tensors="np").input_features
    with torch.inference_mode():
        last = whisper.encoder(torch.from_numpy(feats)).last_hidden_state[0].numpy()
    np.testing.assert_allclose(states[:1500, -1], last, rtol=1e-5, atol=1e-5)


def test_windows_across_the_30s_piece_boundary(whisper):
    from actors.generators.musetalk import MuseTalkGenerator  # noqa: F401  (import check only)

    rng = np.random.default_rng(1)
    n_samples = int(31.02 * SR)  # floor frames 775, lipserve's ceil rule: 776
    samples = (rng.standard_normal(n_samples) * 0.1).astype(np.float32)
    states = whisper.hidden_states(samples)
    win = frame_windows(states, n_samples, Fraction(25), 776)
    assert win.shape == (776, 50, whisper.d_model)
    # frame 750 covers steps 1496..1505: four from piece 0, six from piece 1
    expected = states[1496:1506].reshape(50, -1)
    np.testing.assert_array_equal(win[750], expected)
    # the last frame (775, past the reference's 775 frames) covers steps 1546..1555; 1551+ are padding
    last = win[775].reshape(10, 5, -1)
    np.testing.assert_array_equal(last[:5], states[1546:1551])
    assert not last[5:].any()
    # the first frame starts with 4 steps of left padding
    first = win[0].reshape(10, 5, -1)
    assert not first[:4].any()
    np.testing.assert_array_equal(first[4:], states[:6])
