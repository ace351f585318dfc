"""Per-video-frame audio windows over whisper hidden states, as MuseTalk's ``get_whisper_chunk``.

Given the stacked encoder states of a whole track (``[steps, L, d]`` at 50 steps/s):

* keep the first ``floor(n_samples / 16000 * 50)`` steps (the rest is the last piece's padding);
* pad with zeros: ``2 * ceil(m)`` steps on the left, ``6 * ceil(m)`` on the right, ``m = 50 / fps``;
* frame ``i`` takes the 10 steps starting at ``floor(i * m)`` of the padded sequence and flattens
  them to ``10 * L`` tokens (token = step * L + layer). At 25 fps frame ``i`` covers original
  steps ``2i-4 ... 2i+5``, i.e. 80 ms before to 120 ms after the frame's start.

Two deliberate differences from the reference, both invisible at integer frame rates:

* **frame rate**: the reference truncates fps to an integer (29.97 -> 29), which drifts the audio
  by ~3 % against the video (2 s over a minute). Here ``m`` is computed from the exact rational
  fps, so windows stay in sync; for integer fps the indices are identical to the reference's.
* **frame count**: the caller decides it (lipserve renders ``ceil(duration * fps)`` frames, the
  reference ``floor``). Frames past the reference's last one keep sliding over the zero padding,
  which is extended when needed, so every requested frame gets a full window.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from actors.errors import InvalidParameterError

STEPS_PER_SECOND = 50
SAMPLE_RATE = 16000
PAD_LEFT = 2  # the reference's audio_padding_length_left / _right
PAD_RIGHT = 2
WINDOW_STEPS = 2 * (PAD_LEFT + PAD_RIGHT + 1)  # 10


def steps_per_frame(fps: Fraction | float | int) -> Fraction:
    fps = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
    if fps <= 0:
        raise InvalidParameterError(f"MuseTalk needs a positive frame rate, got {fps}")
    return Fraction(STEPS_PER_SECOND) / fps


def reference_frame_count(n_samples: int, fps: Fraction | float | int) -> int:
    """The reference's number of output frames, ``floor(n_samples / 16000 * fps)`` (exact fps)."""
    return math.floor(Fraction(int(n_samples), SAMPLE_RATE) * Fraction(fps))


def frame_windows(states: np.ndarray, n_samples: int, fps: Fraction | float | int, n_frames: int) -> np.ndarray:
    """``states`` float[steps, L, d] of a whole track -> ``float32[n_frames, 10*L, d]`` windows."""
    states = np.asarray(states, dtype=np.float32)
    if states.ndim != 3:
        raise InvalidParameterError(f"whisper states must be [steps, layers, d], got {states.shape}")
    n_frames = int(n_frames)
    if n_frames < 0:
        raise InvalidParameterError(f"n_frames must be >= 0, got {n_frames}")
    m = steps_per_frame(fps)
    _, n_layers, d = states.shape
    if n_frames == 0:
        return np.zeros((0, WINDOW_STEPS * n_layers, d), np.float32)
    keep = min(len(states), (int(n_samples) * STEPS_PER_SECOND) // SAMPLE_RATE)
    pad = math.ceil(m)
    left = pad * PAD_LEFT
    last_start = math.floor((n_frames - 1) * m)
    total = max(left + keep + pad * 3 * PAD_RIGHT, last_start + WINDOW_STEPS)
    padded = np.zeros((total, n_layers, d), np.float32)
    padded[left : left + keep] = states[:keep]
    starts = np.array([math.floor(i * m) for i in range(n_frames)], dtype=np.int64)
    idx = starts[:, None] + np.arange(WINDOW_STEPS)[None, :]  # [n_frames, 10]
    return np.ascontiguousarray(padded[idx].reshape(n_frames, WINDOW_STEPS * n_layers, d))
