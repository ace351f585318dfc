"""CropGeometry.paste_region and paste(..., window=...): a paste reads and changes nothing outside
its region, and a paste into a part of the frame holding the region gives exactly the pixels of a
paste into the whole frame (what the segment writer relies on to convert only that part)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.errors import InvalidParameterError
from actors.crop_geometry import MuseTalkGeometry, PaddedBoxGeometry
from actors.face.musetalk_blend import blend_mask, blend_square
from actors.media.i420 import even_rect

FW, FH = 320, 240
RNG = np.random.default_rng(0)
FRAME = RNG.integers(0, 256, (FH, FW, 3), dtype=np.uint8)
FACES = [(100.0, 60.0, 200.0, 190.0), (3.0, 40.0, 90.0, 150.0), (250.0, 120.0, 330.0, 250.0),
         (131.0, 17.0, 187.0, 101.0)]


def _generated(size: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return np.clip(g.astype(np.int16) // 2 + 100, 0, 255).astype(np.uint8)


class _RandomParser:
    """A stand-in for the BiSeNet parser: a random blob mask over the whole square."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def mask(self, pixels: np.ndarray, mode: str) -> np.ndarray:
        m = (self.rng.random(pixels.shape[:2]) > 0.3).astype(np.uint8) * 255
        return m


def _cases():
    for i, face in enumerate(FACES):
        yield "padded", PaddedBoxGeometry(96), face, None
        yield "musetalk", MuseTalkGeometry(), face, None
        g = MuseTalkGeometry(parsing_dir="models")  # parsed masks: the wider region (no weights loaded here)
        box = g.crop_box(face, FW, FH)
        alpha = blend_mask(FRAME, box, _RandomParser(i), "jaw", g.blur_ratio)  # what make_masker stores
        yield "musetalk-parsed", g, face, np.rint(alpha * 255.0).astype(np.uint8)


@pytest.mark.parametrize("name,geometry,face,mask", list(_cases()))
def test_paste_stays_in_its_region_and_a_window_paste_is_exact(name, geometry, face, mask):
    box = geometry.crop_box(face, FW, FH)
    gen = _generated(geometry.crop_size, 1)
    full = geometry.paste(FRAME, box, gen, mask=mask)
    x1, y1, x2, y2 = geometry.paste_region(box, FW, FH)
    assert 0 <= x1 < x2 <= FW and 0 <= y1 < y2 <= FH
    changed = np.argwhere((full != FRAME).any(axis=2))
    assert len(changed) > 100
    assert changed[:, 0].min() >= y1 and changed[:, 0].max() < y2
    assert changed[:, 1].min() >= x1 and changed[:, 1].max() < x2
    if name != "musetalk-parsed":  # with a parsed mask the region is a bound, not tight
        assert changed[:, 0].min() <= y1 + 2 and changed[:, 1].min() <= x1 + 2
    # Windows: the region grown to even coordinates (what the writer converts), and a larger one.
    ex1, ey1, ex2, ey2 = even_rect((x1, y1, x2, y2), FW, FH)
    for wx1, wy1, wx2, wy2 in [(ex1, ey1, ex2, ey2), (max(0, x1 - 7), max(0, y1 - 5), min(FW, x2 + 3), FH)]:
        part = np.ascontiguousarray(FRAME[wy1:wy2, wx1:wx2])
        got = geometry.paste(part, box, gen, mask=mask, inplace=True, window=(wx1, wy1, FW, FH))
        np.testing.assert_array_equal(got, full[wy1:wy2, wx1:wx2])


def test_window_paste_outside_pixels_matter_not():
    # The pixels outside the region are neither read nor written: garbage there changes nothing.
    for geometry in (PaddedBoxGeometry(96), MuseTalkGeometry()):
        box = geometry.crop_box(FACES[0], FW, FH)
        gen = _generated(geometry.crop_size, 2)
        x1, y1, x2, y2 = geometry.paste_region(box, FW, FH)
        noisy = RNG.integers(0, 256, FRAME.shape, dtype=np.uint8)
        noisy[y1:y2, x1:x2] = FRAME[y1:y2, x1:x2]
        a = geometry.paste(FRAME, box, gen)[y1:y2, x1:x2]
        b = geometry.paste(noisy, box, gen)[y1:y2, x1:x2]
        np.testing.assert_array_equal(a, b)


def test_musetalk_region_clips_the_blend_square_to_the_frame():
    g = MuseTalkGeometry()
    box = g.crop_box(FACES[2], FW, FH)  # at the right/bottom edge: the square leaves the frame
    (sx1, sy1, sx2, sy2), s = blend_square(box)
    assert sx2 > FW or sy2 > FH
    x1, y1, x2, y2 = g.paste_region(box, FW, FH)
    assert sx1 <= x1 and sy1 + s - 20 <= y1 and x2 <= FW and y2 <= FH  # the lower half only


def test_a_window_without_the_region_is_refused():
    g = PaddedBoxGeometry(96)
    box = g.crop_box(FACES[0], FW, FH)
    x1, y1, x2, y2 = g.paste_region(box, FW, FH)
    part = np.ascontiguousarray(FRAME[y1 + 4:y2, x1:x2])
    with pytest.raises(InvalidParameterError, match="window"):
        g.paste(part, box, _generated(96, 3), window=(x1, y1 + 4, FW, FH))
