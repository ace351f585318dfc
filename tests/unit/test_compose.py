"""Crop boxes, the lower-face mask and compositing."""

from __future__ import annotations

import av
import numpy as np
import pytest

from actors.compose import MIN_EXACT_BOX, composite, crop_box, extract_crop, lower_face_mask, paste_source_window
from actors.errors import InvalidParameterError
from tests.media import ASSETS


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    with av.open(str(ASSETS / "demo_template.mp4")) as c:
        for f in c.decode(video=0):
            return f.to_ndarray(format="bgr24")


FACE = (156.0, 85.0, 314.0, 243.0)  # the astronaut's face in the first template frame (Haar)


# ---------------------------------------------------------------------------------------------
# crop_box / extract_crop


def test_crop_box_pads_like_wav2lip_and_clips():
    assert crop_box((100, 50, 200, 150), 640, 480) == (100, 50, 200, 160)
    assert crop_box((100.4, 50.6, 199.6, 150.2), 640, 480, pads=(0, 0, 0, 0)) == (100, 50, 200, 151)
    assert crop_box((10, 5, 200, 475), 640, 480, pads=(20, 10, 30, 5)) == (0, 0, 205, 480)
    # Relative pads scale with the face: 10 % of a 200 px tall face below the chin.
    assert crop_box((100, 100, 300, 300), 640, 480, pads=(0, 0.1, 0.05, 0.05), relative=True) == (90, 100, 310, 320)
    with pytest.raises(InvalidParameterError):
        crop_box((700, 10, 800, 100), 640, 480)
    with pytest.raises(InvalidParameterError):
        crop_box((10, 10, 100), 640, 480)


def test_extract_crop(frame):
    box = crop_box(FACE, frame.shape[1], frame.shape[0])
    crop = extract_crop(frame, box, 96)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    x1, y1, x2, y2 = box
    assert abs(float(crop.mean()) - float(frame[y1:y2, x1:x2].mean())) < 2.0


# ---------------------------------------------------------------------------------------------
# lower_face_mask


@pytest.mark.parametrize("h,w", [(96, 96), (160, 160), (171, 143), (20, 20)])
def test_mask_shape_support_and_smoothness(h, w):
    m = lower_face_mask(h, w)
    assert m.shape == (h, w) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() <= 1.0
    assert np.all(m[: h // 2] == 0.0)  # nothing of the upper half (eyes, nose bridge)
    assert np.all(m[:, 0] == 0) and np.all(m[:, -1] == 0) and np.all(m[-1] == 0)  # not at the edges
    if h >= 96:
        # Fully on over the mouth (~70 % down, centred), a feathered rim, no steps.
        assert m[int(0.72 * h), w // 2] == pytest.approx(1.0)
        assert m[int(0.72 * h) - 3: int(0.72 * h) + 3, w // 2 - 5: w // 2 + 5].min() > 0.99
        assert 0.2 * h * w * 0.08 < (m > 0).sum() < 0.25 * h * w
        step = max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max())
        assert step < 16.0 / min(h, w)  # the feather spans more than ~1/10 of the crop
        assert ((m > 0.05) & (m < 0.95)).sum() > 0.3 * (m > 0).sum()  # a real feather, not a hard edge


def test_mask_is_symmetric():
    m = lower_face_mask(100, 100)
    np.testing.assert_allclose(m, m[:, ::-1], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# composite


def _box_and_mask(frame):
    box = crop_box(FACE, frame.shape[1], frame.shape[0])
    x1, y1, x2, y2 = box
    return box, lower_face_mask(y2 - y1, x2 - x1)


def test_composite_keeps_pixels_outside_the_mask(frame):
    box, mask = _box_and_mask(frame)
    x1, y1, x2, y2 = box
    rng = np.random.default_rng(1)
    generated = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    before = frame.copy()
    out = composite(frame, box, generated)
    assert out is not frame and out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(frame, before)  # the input is not modified
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = mask == 0
    np.testing.assert_array_equal(out[outside], frame[outside])
    core = np.zeros(frame.shape[:2], bool)
    core[y1:y2, x1:x2] = mask > 0.9
    changed = np.any(out != frame, axis=2)
    assert changed[core].mean() > 0.9
    assert not changed[outside].any()


def test_composite_with_float_box_and_no_colour_match(frame):
    box = (150.3, 90.7, 300.2, 260.9)
    generated = np.full((96, 96, 3), (0, 255, 0), np.uint8)
    out = composite(frame, box, generated, color_match=False)
    x1, y1, x2, y2 = 150, 91, 300, 261
    mask = lower_face_mask(y2 - y1, x2 - x1)
    region = out[y1:y2, x1:x2]
    # Where the mask is fully on, the crop is pasted as is.
    full = mask >= 0.999
    assert full.any()
    assert np.all(np.abs(region[full].astype(int) - [0, 255, 0]) <= 1)
    keep = np.ones(frame.shape[:2], bool)
    keep[y1:y2, x1:x2] = mask == 0
    np.testing.assert_array_equal(out[keep], frame[keep])


def test_colour_match_moves_the_mean_toward_the_original(frame):
    box, mask = _box_and_mask(frame)
    x1, y1, x2, y2 = box
    original = frame[y1:y2, x1:x2].astype(np.float64)
    # A "generated" crop: the real face crop with a strong blue cast and less contrast.
    crop = extract_crop(frame, box, 96).astype(np.float64)
    tinted = np.clip(crop * 0.6 + np.array([90, 10, -20]), 0, 255).astype(np.uint8)
    sel = mask > 0.5
    target = original[sel].mean(axis=0)

    def err(out):
        got = out[y1:y2, x1:x2].astype(np.float64)[sel].mean(axis=0)
        return np.abs(got - target).sum()

    plain = composite(frame, box, tinted, color_match=False)
    matched = composite(frame, box, tinted, color_match=True)
    assert err(matched) < 0.25 * err(plain)
    assert err(matched) < 6.0
    # An explicit reference crop (e.g. what the generator saw) works the same way.
    via_ref = composite(frame, box, tinted, original_crop=extract_crop(frame, box, 96))
    assert err(via_ref) < 0.25 * err(plain)


def test_composite_near_the_frame_edge():
    frame = np.full((120, 160, 3), 100, np.uint8)
    box = crop_box((-20, 60, 90, 170), 160, 120)  # clipped on the left and the bottom
    out = composite(frame, box, np.full((96, 96, 3), 200, np.uint8), color_match=False)
    assert out.shape == frame.shape
    assert out.max() > 100


def test_composite_rejects_bad_inputs(frame):
    with pytest.raises(InvalidParameterError):
        composite(frame, (0, 0, 1, 1), np.zeros((96, 96, 3), np.uint8))
    with pytest.raises(InvalidParameterError):
        composite(frame, FACE, np.zeros((96, 96), np.uint8))


@pytest.mark.parametrize("crop", [96, 256])
def test_composite_reads_only_the_paste_source_window(crop):
    """Whatever the crop holds outside paste_source_window, the pasted frame is byte-identical, for
    box sizes from MIN_EXACT_BOX px (downscaled crops) to 700 px (upscaled), square or not."""
    rng = np.random.default_rng(crop)
    r0, r1, c0, c1 = paste_source_window(crop)
    assert (r1 - r0) * (c1 - c0) < 0.4 * crop * crop
    frame = rng.integers(0, 256, (760, 760, 3), np.uint8)
    generated = rng.integers(0, 256, (crop, crop, 3), np.uint8)
    sizes = list(range(MIN_EXACT_BOX, 130, 3)) + list(range(130, 701, 29))
    for k, bh in enumerate(sizes):
        for bw in sizes[k % 4::4]:
            box = (17, 23, 17 + bw, 23 + bh)
            scrambled = rng.integers(0, 256, generated.shape, np.uint8)
            scrambled[r0:r1, c0:c1] = generated[r0:r1, c0:c1]
            for color_match in (True, False):
                want = composite(frame, box, generated, color_match=color_match)
                got = composite(frame, box, scrambled, color_match=color_match)
                assert np.array_equal(want, got), (bw, bh, color_match)
