"""Tests of actors/generators/mouth_warp.py: the weight-free default generator.

The mouth must move with the speech (correlation with the audio envelope, lag 0 +- 1 frame), stay
shut in silence (byte-identical output), never touch the upper half, move smoothly, and be a pure
function of each frame's crop and mel window (no state across calls).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from actors.generators.mel import mel_windows, wav2lip_mel
from actors.media.audio import SAMPLE_RATE, num_output_frames
from actors.errors import InvalidParameterError
from actors.generators.mouth_warp import MouthWarpGenerator, openness_from_mels
from tests.media import ASSETS, speech_like

S = 160
FPS = Fraction(25)
SECONDS = 6.0


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------

def _synthetic_face(s: int = S) -> np.ndarray:
    """A drawn face crop: skin ellipse, eyes, nose, lips with a dark lip line at ~72 % height."""
    img = np.full((s, s, 3), (90, 110, 120), np.uint8)
    cv2.ellipse(img, (s // 2, int(s * 0.5)), (int(s * 0.36), int(s * 0.48)), 0, 0, 360, (120, 150, 200), -1,
                cv2.LINE_AA)
    for ex in (0.35, 0.65):
        cv2.ellipse(img, (int(s * ex), int(s * 0.40)), (int(s * 0.07), int(s * 0.03)), 0, 0, 360,
                    (250, 250, 250), -1, cv2.LINE_AA)
        cv2.circle(img, (int(s * ex), int(s * 0.40)), int(s * 0.025), (40, 30, 30), -1, cv2.LINE_AA)
    cv2.line(img, (s // 2, int(s * 0.45)), (s // 2 - 6, int(s * 0.6)), (100, 125, 175), 2, cv2.LINE_AA)
    cv2.ellipse(img, (s // 2, int(s * 0.705)), (int(s * 0.14), int(s * 0.03)), 0, 180, 360, (90, 90, 170), -1,
                cv2.LINE_AA)
    cv2.ellipse(img, (s // 2, int(s * 0.725)), (int(s * 0.14), int(s * 0.04)), 0, 0, 180, (95, 100, 180), -1,
                cv2.LINE_AA)
    cv2.line(img, (s // 2 - int(s * 0.14), int(s * 0.72)), (s // 2 + int(s * 0.14), int(s * 0.72)),
             (50, 50, 110), 2, cv2.LINE_AA)
    return img


def _template_face(path: Path, s: int = S) -> np.ndarray | None:
    """First frame of the demo template: the detected face box padded 10 px at the bottom (as the
    pipeline crops it), or a centred square if no face is found; None if the file is unreadable."""
    try:
        import av

        with av.open(str(path)) as container:
            frame = next(container.decode(video=0)).to_ndarray(format="bgr24")
    except Exception:
        return None
    h, w = frame.shape[:2]
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    boxes = cascade.detectMultiScale(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), 1.1, 5) if not cascade.empty() else ()
    if len(boxes):
        x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
        crop = frame[y:min(h, y + bh + 10), x:x + bw]
    else:
        side = min(h, w)
        crop = frame[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    path = ASSETS / "demo_template.mp4"
    crop = _template_face(path) if path.exists() else None
    return crop if crop is not None else _synthetic_face()


@pytest.fixture(scope="module")
def speech():
    samples = speech_like(SECONDS)
    n = num_output_frames(len(samples), FPS)
    windows = mel_windows(wav2lip_mel(samples), FPS, range(n))
    spf = SAMPLE_RATE / float(FPS)
    env = np.array([np.sqrt(np.mean(samples[int(round(i * spf)):int(round((i + 1) * spf))] ** 2))
                    for i in range(n)])
    return samples, windows, env


@pytest.fixture(scope="module")
def rendered(face, speech):
    _, windows, _ = speech
    gen = MouthWarpGenerator(S)
    faces = np.repeat(face[None], len(windows), axis=0)
    out = gen.generate(faces, windows)
    return faces, out


def _mouth_motion(out: np.ndarray, faces: np.ndarray) -> np.ndarray:
    region = (slice(None), slice(int(S * 0.55), int(S * 0.95)), slice(int(S * 0.25), int(S * 0.75)))
    return np.abs(out[region].astype(np.float32) - faces[region].astype(np.float32)).mean(axis=(1, 2, 3))


def _lagged_r(motion: np.ndarray, env: np.ndarray, lag: int) -> float:
    """Pearson r between motion[i + lag] and env[i] (positive lag: the mouth trails the sound)."""
    if lag >= 0:
        a, b = motion[lag:], env[:len(env) - lag]
    else:
        a, b = motion[:lag], env[-lag:]
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------

def test_protocol_attributes():
    from actors.generators.base import Generator

    gen = MouthWarpGenerator()
    assert gen.name == "mouth_warp" and gen.crop_size == 160
    assert isinstance(gen, Generator)
    assert MouthWarpGenerator(96).crop_size == 96


def test_output_shape_dtype_and_empty_batch(face, speech):
    _, windows, _ = speech
    gen = MouthWarpGenerator(S)
    out = gen.generate(np.repeat(face[None], 4, 0), windows[20:24])
    assert out.shape == (4, S, S, 3) and out.dtype == np.uint8
    empty = gen.generate(np.zeros((0, S, S, 3), np.uint8), np.zeros((0, 80, 16), np.float32))
    assert empty.shape == (0, S, S, 3) and empty.dtype == np.uint8


def test_rejects_bad_shapes(face):
    gen = MouthWarpGenerator(S)
    with pytest.raises(InvalidParameterError):
        gen.generate(face, np.zeros((1, 80, 16), np.float32))                    # missing batch axis
    with pytest.raises(InvalidParameterError):
        gen.generate(face[None], np.zeros((2, 80, 16), np.float32))              # batch mismatch
    with pytest.raises(InvalidParameterError):
        gen.generate(face[None].astype(np.float32), np.zeros((1, 80, 16), np.float32))


def test_motion_follows_speech_at_lag_zero(rendered, speech):
    _, _, env = speech
    faces, out = rendered
    motion = _mouth_motion(out, faces)
    rs = {lag: _lagged_r(motion, env, lag) for lag in range(-3, 4)}
    best = max(rs, key=rs.get)
    assert rs[0] >= 0.5, rs
    assert abs(best) <= 1, rs
    assert rs[best] >= 0.5, rs


def test_mouth_opens_for_speech_and_closes_in_pauses(rendered, speech):
    _, windows, env = speech
    faces, out = rendered
    motion = _mouth_motion(out, faces)
    loud = env > np.percentile(env, 75)
    quiet = env < 0.01                                 # pauses (only the noise floor)
    assert loud.sum() > 10 and quiet.sum() > 10
    assert motion[loud].mean() > 5.0                   # clearly visible (grey levels, mouth region mean)
    # Pauses shorter than the look-ahead still see a bit of the next syllable; most are shut.
    assert np.median(motion[quiet]) == 0.0
    openness, _ = openness_from_mels(windows)
    assert openness.min() >= 0.0 and openness.max() <= 1.0 and openness[loud].mean() > 0.7


def test_silence_returns_input_unchanged(face):
    gen = MouthWarpGenerator(S)
    faces = np.repeat(face[None], 3, 0)
    digital = np.full((3, 80, 16), -4.0, np.float32)
    assert np.array_equal(gen.generate(faces, digital), faces)
    rng = np.random.default_rng(3)
    hiss = (1e-4 * rng.standard_normal(SAMPLE_RATE)).astype(np.float32)   # a very quiet room
    windows = mel_windows(wav2lip_mel(hiss), FPS, range(3))
    assert np.array_equal(gen.generate(faces, windows), faces)


def test_upper_half_never_changes(rendered, speech):
    _, windows, _ = speech
    faces, out = rendered
    openness, _ = openness_from_mels(windows)
    loud = openness > 0.7
    assert loud.sum() > 10
    assert np.array_equal(out[:, : S // 2], faces[:, : S // 2])
    assert np.all(np.any(out[loud] != faces[loud], axis=(1, 2, 3)))
    # Maximum loudness too.
    gen = MouthWarpGenerator(S)
    blast = gen.generate(faces[:1], np.full((1, 80, 16), 4.0, np.float32))
    assert np.array_equal(blast[0, : S // 2], faces[0, : S // 2])
    assert not np.array_equal(blast[0], faces[0])


def test_motion_is_temporally_smooth(rendered, speech):
    """No frame-to-frame jitter: the mouth moves about as smoothly as the sound's own envelope
    (syllables of 120-350 ms at 25 fps), and a typical step is a small part of the range."""
    _, _, env = speech
    faces, out = rendered
    motion = _mouth_motion(out, faces)
    span = motion.max() - motion.min()
    step = np.abs(np.diff(motion)).mean()
    env_roughness = np.abs(np.diff(env)).mean() / (env.max() - env.min())
    assert span > 5.0
    assert step < 0.25 * span, (step, span)
    assert step / span < 1.3 * env_roughness, (step / span, env_roughness)


def test_stateless_and_order_independent(face, speech, rendered):
    _, windows, _ = speech
    _, reference = rendered
    gen = MouthWarpGenerator(S)
    rng = np.random.default_rng(7)
    order = rng.permutation(len(windows))
    out = np.empty_like(reference)
    pos = 0
    while pos < len(order):                     # uneven batch sizes, shuffled frames, fresh and reused
        size = int(rng.integers(1, 9))
        idx = order[pos:pos + size]
        out[idx] = gen.generate(np.repeat(face[None], len(idx), 0), windows[idx])
        pos += size
    assert np.array_equal(out, reference)
    again = MouthWarpGenerator(S).generate(np.repeat(face[None], 5, 0), windows[30:35])
    assert np.array_equal(again, reference[30:35])


def test_nan_in_mels_is_safe(face):
    gen = MouthWarpGenerator(S)
    mels = np.full((2, 80, 16), np.nan, np.float32)
    mels[1, :, :4] = 2.0
    out = gen.generate(np.repeat(face[None], 2, 0), mels)
    assert np.array_equal(out[0], face)
    assert out.shape == (2, S, S, 3)


def test_synthetic_face_also_moves(speech):
    """The fallback face (and any crop without a template) gets the same behaviour."""
    _, windows, env = speech
    face = _synthetic_face()
    faces = np.repeat(face[None], len(windows), 0)
    out = MouthWarpGenerator(S).generate(faces, windows)
    motion = _mouth_motion(out, faces)
    assert _lagged_r(motion, env, 0) >= 0.5
    assert np.array_equal(out[:, : S // 2], faces[:, : S // 2])
