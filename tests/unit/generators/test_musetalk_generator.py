"""MuseTalkGenerator on reduced random weights: protocol, shapes, determinism, cached latents, crop geometry."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest

from actors.errors import InvalidParameterError, ModelLoadError
from actors.generators import musetalk_crop as crop
from actors.generators.base import Generator
from actors.generators.musetalk import MuseTalkGenerator
from actors.models.musetalk.random_weights import write_random_models


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_random_models(tmp_path_factory.mktemp("musetalk_reduced"), reduced=True)


@pytest.fixture(scope="module")
def gen(models_dir):
    return MuseTalkGenerator(models_dir, batch_size=3)


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (256, 256), interpolation=cv2.INTER_CUBIC)
    return np.stack([np.roll(base, k * 7, axis=1) for k in range(7)])


@pytest.fixture(scope="module")
def features(gen):
    rng = np.random.default_rng(1)
    return gen.prepare_audio((rng.standard_normal(16000) * 0.2).astype(np.float32), Fraction(25), 25)


def test_protocol_and_shapes(gen, faces, features):
    assert isinstance(gen, Generator) and gen.name == "musetalk" and gen.crop_size == 256
    assert features.shape == (25, 50, gen.feature_shape[1]) and features.dtype == np.float32
    out = gen.generate(faces, features[:7])
    assert out.shape == (7, 256, 256, 3) and out.dtype == np.uint8
    assert gen.generate(faces[:0], features[:0]).shape == (0, 256, 256, 3)
    lat = gen.encode_faces(faces[:2])
    assert lat.shape == (2, 8, 32, 32) and lat.dtype == np.float32


def test_output_is_deterministic_across_calls_and_loads(gen, models_dir, faces, features):
    a = gen.generate(faces, features[:7])
    np.testing.assert_array_equal(a, gen.generate(faces, features[:7]))
    np.testing.assert_array_equal(a, MuseTalkGenerator(models_dir, batch_size=3).generate(faces, features[:7]))


def test_cached_latent_path_equals_plain_path(gen, faces, features):
    plain = gen.generate(faces, features[:7])
    latents = gen.encode_faces(faces)
    np.testing.assert_array_equal(gen.generate_from_latents(latents, features[:7]), plain)
    # latents cached frame by frame (as an avatar cache would) agree up to float rounding
    one_by_one = np.concatenate([gen.encode_faces(faces[i : i + 1]) for i in range(len(faces))])
    np.testing.assert_allclose(one_by_one, latents, rtol=0, atol=1e-4)
    assert np.abs(gen.generate_from_latents(one_by_one, features[:7]).astype(int) - plain).max() <= 1


def test_latents_are_masked_lower_half_plus_reference(gen, faces):
    lat = gen.encode_faces(faces[:1])
    changed = faces[:1].copy()
    changed[:, 128:] = 255 - changed[:, 128:]
    lat2 = gen.encode_faces(changed)
    # channels 0-3 encode the crop with rows 128..255 blanked, so changing those rows leaves them alone
    np.testing.assert_allclose(lat2[:, :4], lat[:, :4], atol=1e-5)
    assert np.abs(lat2[:, 4:] - lat[:, 4:]).max() > 1e-3


def test_audio_changes_the_output(gen, faces, features):
    a = gen.generate(faces[:1], features[:1])
    b = gen.generate(faces[:1], np.zeros_like(features[:1]))
    assert (a != b).any()


def test_bad_inputs(gen, faces, features, tmp_path):
    with pytest.raises(InvalidParameterError):
        gen.generate(faces[:, :128], features[:7])
    with pytest.raises(InvalidParameterError):
        gen.generate(faces, features[:6])
    with pytest.raises(InvalidParameterError):
        gen.generate(faces, features[:7, :, :5])
    with pytest.raises(InvalidParameterError):
        gen.generate_from_latents(np.zeros((1, 4, 32, 32), np.float32), features[:1])
    with pytest.raises(InvalidParameterError):
        MuseTalkGenerator(tmp_path, batch_size=0)
    with pytest.raises(ModelLoadError, match="musetalkV15/musetalk.json") as info:
        MuseTalkGenerator(tmp_path)
    assert str(tmp_path) not in str(info.value)


def test_landmark_crop_box_follows_the_reference():
    pts = np.zeros((68, 2))
    pts[:, 0] = np.linspace(100, 200, 68)
    pts[:, 1] = np.linspace(150, 260, 68)
    pts[29] = (150, 200)
    box = crop.crop_box_from_landmarks(pts, frame_h=400)
    assert box == (100, 140, 200, 270)  # y1 = 200 - (260 - 200); y2 = 260 + 10
    assert crop.crop_box_from_landmarks(pts, frame_h=265)[3] == 265  # margin capped at the frame
    pts_high = pts.copy()
    pts_high[29, 1] = 190
    assert crop.crop_box_from_landmarks(pts_high, frame_h=400)[1] == 120
    pts_top = pts.copy()
    pts_top[:, 1] -= 140  # y1 would be negative -> 0
    assert crop.crop_box_from_landmarks(pts_top, frame_h=400)[1] == 0
    bad = pts.copy()
    bad[:, 0] -= 150
    with pytest.raises(InvalidParameterError):
        crop.crop_box_from_landmarks(bad, frame_h=400)


def test_box_approximation_and_non_square_lanczos_crop():
    box = crop.crop_box_from_face_box((100, 100, 200, 220), frame_h=480)
    y_c = 100 + crop.NOSE_MID_FRACTION * 120
    assert box == (100, int(y_c - (220 - y_c)), 200, 230)
    frame = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    c = crop.extract_crop(frame, box)
    assert c.shape == (256, 256, 3)
    x1, y1, x2, y2 = box
    np.testing.assert_array_equal(c, cv2.resize(frame[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4))
    assert crop.resize_to_box(c, box).shape == (y2 - y1, x2 - x1, 3)


def test_half_precision_path_runs_and_stays_close(models_dir, gen, faces, features):
    import torch

    half = MuseTalkGenerator(models_dir, dtype="fp16")
    assert next(half.models.unet.parameters()).dtype == torch.float16
    assert next(half.models.audio.encoder.parameters()).dtype == torch.float16
    feats16 = half.prepare_audio(np.zeros(16000, np.float32), Fraction(25), 3)
    assert feats16.dtype == np.float32 and np.isfinite(feats16).all()
    out = half.generate(faces[:2], features[:2])
    ref = gen.generate(faces[:2], features[:2])
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - ref).mean() < 4
