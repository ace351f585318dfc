"""The avatar keeps its decoded template frames (I420) when they fit the budget, and a segment
written from them is byte-identical to one written from a fresh decode; templates the YUV path does
not keep, and templates over the budget, are decoded every time."""

from __future__ import annotations

import numpy as np
import pytest

from actors.avatar import FRAMES_FILE, AvatarCache, AvatarParams
from actors.crop_geometry import PaddedBoxGeometry
from actors.media.template import iter_frames
from actors.segment_writer import SegmentWriter
from tests.media import write_template
from tests.unit.test_segment_writer_yuv import BOX, PRESENT, SOURCES, _generated, smooth_frames

GEOMETRY = PaddedBoxGeometry(96)


def _avatar(root, video, budget):
    return AvatarCache(root, frame_cache_bytes=budget).get_or_build(
        video, AvatarParams(crop_size=96, box=BOX, geometry=GEOMETRY))


@pytest.mark.parametrize("rotation", [None, 90])
def test_cached_frames_are_the_decoded_ones_and_write_the_same_segment(tmp_path, rotation):
    video = write_template(tmp_path / "t.mp4", smooth_frames(12), colorspace=6, color_range=1, yuv_noise=3,
                           rotation=rotation)
    cached = _avatar(tmp_path / "with", video, 2**30)
    plain = _avatar(tmp_path / "without", video, 0)
    assert plain.frames_i420() is None
    frames = cached.frames_i420()
    assert frames is not None and frames.shape == (12, cached.info.height * 3 // 2, cached.info.width)
    for i, frame in iter_frames(video, keep_yuv420p=True):
        np.testing.assert_array_equal(frames[i], frame)
    np.testing.assert_array_equal(np.asarray(cached.crops()), np.asarray(plain.crops()))  # same crops either way
    generated = _generated(cached, SOURCES[PRESENT])
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    SegmentWriter(crf=0).write_segment(cached, SOURCES, PRESENT, generated, a)
    SegmentWriter(crf=0).write_segment(plain, SOURCES, PRESENT, generated, b)
    assert a.read_bytes() == b.read_bytes()
    assert not frames.flags.writeable  # the cache is read-only: the paste works on copies
    np.testing.assert_array_equal(cached.frames_i420()[3], frames[3])


def test_over_budget_or_not_yuv420p_limited_templates_are_not_cached(tmp_path):
    video = write_template(tmp_path / "t.mp4", smooth_frames(6), colorspace=6, color_range=1)
    frame_bytes = 128 * 160 * 3 // 2
    assert _avatar(tmp_path / "small", video, 6 * frame_bytes - 1).frames_i420() is None
    assert _avatar(tmp_path / "fits", video, 6 * frame_bytes).frames_i420() is not None
    full_range = write_template(tmp_path / "j.mp4", smooth_frames(6), pix_fmt="yuvj420p")
    avatar = _avatar(tmp_path / "j", full_range, 2**30)
    assert avatar.frames_i420() is None and not (tmp_path / "j" / avatar.key / FRAMES_FILE).exists()
