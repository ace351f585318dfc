"""Per-backend crop geometry: the padded box is exactly the old compose path; MuseTalk's crops a
non-square nose-anchored box and pastes only below its blend square's middle; the avatar cache is
keyed by the geometry."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from actors.avatar import AvatarCache, AvatarParams
from actors.compose import composite, crop_box, extract_crop
from actors.crop_geometry import CropGeometry, MuseTalkGeometry, PaddedBoxGeometry
from actors.errors import InvalidParameterError
from actors.face.musetalk_blend import blend_square
from actors.generators import musetalk_crop
from actors.generators.mouth_warp import MouthWarpGenerator
from tests.media import synthetic_frames, write_video

FRAME = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
FACE = (100.0, 60.0, 200.0, 190.0)


def test_padded_box_is_the_compose_path_exactly():
    g = PaddedBoxGeometry(96)
    assert isinstance(g, CropGeometry) and MouthWarpGenerator().crop_geometry == PaddedBoxGeometry(160)
    box = g.crop_box(FACE, 320, 240)
    assert box == crop_box(FACE, 320, 240, (0, 10, 0, 0))
    np.testing.assert_array_equal(g.extract(FRAME, box), extract_crop(FRAME, box, 96))
    gen = np.full((96, 96, 3), 200, np.uint8)
    np.testing.assert_array_equal(g.paste(FRAME, box, gen), composite(FRAME, box, gen, color_match=True))
    with pytest.raises(InvalidParameterError):
        PaddedBoxGeometry(8)


def test_musetalk_geometry_crop_and_paste():
    g = MuseTalkGeometry()
    box = g.crop_box(FACE, 320, 240)
    assert box == musetalk_crop.crop_box_from_face_box(FACE, 240)
    assert box[2] - box[0] != box[3] - box[1]  # not square
    crop = g.extract(FRAME, box)
    np.testing.assert_array_equal(crop, musetalk_crop.extract_crop(FRAME, box))
    out = g.paste(FRAME, box, np.full((256, 256, 3), 255, np.uint8))
    (sx1, sy1, sx2, sy2), s = blend_square(box)
    changed = np.argwhere((out != FRAME).any(axis=2))
    assert len(changed)
    r = int(0.05 * 2 * s // 2 * 2) // 2  # the feather's blur radius (reaches above the cut)
    assert changed[:, 0].min() >= sy1 + s - r  # only the lower half of the blend square changes
    assert changed[:, 0].max() < box[3] and box[0] <= changed[:, 1].min() and changed[:, 1].max() < box[2]
    # A face at the right edge: the box is clipped to the frame, the paste still fits.
    edge = g.crop_box((260.0, 60.0, 340.0, 190.0), 320, 240)
    assert edge[2] == 320 and g.paste(FRAME, edge, crop).shape == FRAME.shape
    assert pickle.loads(pickle.dumps(g)) == g  # travels to the writer processes
    with pytest.raises(InvalidParameterError):
        MuseTalkGeometry(crop_size=128)


def test_avatar_cache_is_keyed_by_geometry(tmp_path):
    video = write_video(tmp_path / "t.mp4", synthetic_frames(6, 160, 120), 25)
    cache = AvatarCache(tmp_path / "cache")
    box = (40, 20, 120, 110)
    assert AvatarParams(box=box).fingerprint() == AvatarParams(box=box, geometry=PaddedBoxGeometry()).fingerprint()
    padded = cache.get_or_build(video, AvatarParams(box=box))
    muse = cache.get_or_build(video, AvatarParams(box=box, geometry=MuseTalkGeometry()))
    assert padded.key != muse.key
    assert padded.crops().shape == (6, 160, 160, 3) and muse.crops().shape == (6, 256, 256, 3)
    assert muse.geometry == MuseTalkGeometry() and cache.get_or_build(video, AvatarParams(box=box)).geometry == PaddedBoxGeometry()
    np.testing.assert_array_equal(muse.boxes()[0], MuseTalkGeometry().crop_box(box, 160, 120))
