"""actors/media/i420.py (sub-rectangle conversions, plane rotation), iter_frames(keep_yuv420p) and
encode_segment with yuv420p input."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from actors.errors import InvalidParameterError
from actors.media import i420 as yuv
from actors.media.color import i420_to_bgr, rotate_upright
from actors.media.encode import bgr_to_i420, encode_segment
from actors.media.template import iter_frames
from tests.media import synthetic_frames, write_video

W, H = 64, 48


def _random_i420(h: int, w: int, lo: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = rng.integers(lo, 236, (h, w))
    out[h:] = rng.integers(16, 241, (h // 2, w))
    return out


def test_region_to_bgr_is_the_full_frame_conversion_cut_out():
    i420 = _random_i420(H, W)
    full = i420_to_bgr(i420)
    for rect in [(0, 0, W, H), (10, 6, 40, 30), (2, 2, 4, 4), (W - 8, H - 10, W, H)]:
        x1, y1, x2, y2 = rect
        np.testing.assert_array_equal(yuv.region_to_bgr(i420, rect), full[y1:y2, x1:x2])
    # Sub-black luma takes the exact matrix path; a region without it may take OpenCV's: <= 1 level.
    dark = _random_i420(H, W, lo=0, seed=1)
    got = yuv.region_to_bgr(dark, (10, 6, 40, 30)).astype(int)
    assert np.abs(got - i420_to_bgr(dark)[6:30, 10:40]).max() <= 1


def test_write_region_gives_the_full_frame_conversion_of_the_same_pixels():
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    i420 = bgr_to_i420(bgr)
    x1, y1, x2, y2 = rect = (12, 8, 42, 34)
    edited = bgr.copy()
    edited[y1:y2, x1:x2] = rng.integers(0, 256, (y2 - y1, x2 - x1, 3), dtype=np.uint8)
    yuv.write_region(i420, rect, edited[y1:y2, x1:x2])
    np.testing.assert_array_equal(i420, bgr_to_i420(edited))
    with pytest.raises(ValueError):
        yuv.write_region(i420, (11, 8, 42, 34), edited[8:34, 11:42])  # odd corner: not whole blocks
    with pytest.raises(ValueError):
        yuv.write_region(i420, rect, edited[:10, :10])


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotate_i420_matches_rotating_the_bgr_frame(rotation):
    i420 = _random_i420(H, W, seed=3)
    turned = yuv.rotate_i420(i420, rotation)
    assert yuv.frame_size(turned) == ((W, H) if rotation in (0, 180) else (H, W))
    np.testing.assert_array_equal(i420_to_bgr(turned), rotate_upright(i420_to_bgr(i420), rotation))


def test_even_rect_grows_to_whole_chroma_blocks_and_clips():
    assert yuv.even_rect((3, 5, 9, 10), 64, 48) == (2, 4, 10, 10)
    assert yuv.even_rect((-3, -1, 70, 49), 64, 48) == (0, 0, 64, 48)
    x1, y1, x2, y2 = yuv.even_rect((5, 5, 5, 9), 64, 48)
    assert x2 <= x1  # an empty rectangle stays empty (the writer then skips the paste)


def test_iter_frames_keeps_yuv420p_planes_exactly(tmp_path):
    path = write_video(tmp_path / "t.mp4", synthetic_frames(8, W, H))
    with av.open(str(path)) as c:
        raw = [f.to_ndarray() for f in c.decode(video=0)]
    bgr = dict(iter_frames(path))
    for threads in (0, 1):
        kept = dict(iter_frames(path, keep_yuv420p=True, decode_threads=threads))
        assert sorted(kept) == list(range(8))
        for i, f in kept.items():
            assert f.shape == (H * 3 // 2, W)
            np.testing.assert_array_equal(f, raw[i])
            np.testing.assert_array_equal(i420_to_bgr(f), bgr[i])  # the same colours as the BGR path
    seek = list(iter_frames(path, start=5, keep_yuv420p=True))
    assert [i for i, _ in seek] == [5, 6, 7] and np.array_equal(seek[0][1], raw[5])
    with pytest.raises(InvalidParameterError, match="decode_threads"):
        next(iter_frames(path, decode_threads=-1))


def test_encode_segment_takes_i420_arrays_and_video_frames_without_conversion(tmp_path):
    frames = [_random_i420(H, W, lo=0, seed=s) for s in range(4)]  # sub-black luma too
    bgr = np.random.default_rng(9).integers(0, 256, (H, W, 3), dtype=np.uint8)
    vf = av.VideoFrame.from_ndarray(frames[3], format="yuv420p")
    p = tmp_path / "seg.mp4"
    # crf 0 is lossless: what comes back is exactly what went in.
    assert encode_segment([frames[0], frames[1], bgr, vf], p, Fraction(25), W, H, crf=0) == 4
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert s.codec_context.format.name == "yuv420p"
        decoded = [f for f in c.decode(s)]
    assert int(decoded[0].colorspace) == 6 and int(decoded[0].color_range) == 1  # BT.601, limited
    got = [f.to_ndarray() for f in decoded]
    np.testing.assert_array_equal(got[0], frames[0])
    np.testing.assert_array_equal(got[1], frames[1])
    np.testing.assert_array_equal(got[2], bgr_to_i420(bgr))  # BGR input still converted
    np.testing.assert_array_equal(got[3], frames[3])
    for bad in (np.zeros((H * 3 // 2, W + 2), np.uint8), np.zeros((H, W), np.uint8),
                av.VideoFrame.from_ndarray(np.zeros((H, W, 3), np.uint8), format="bgr24")):
        with pytest.raises(InvalidParameterError, match="yuv420p"):
            encode_segment([bad], tmp_path / "bad.mp4", Fraction(25), W, H)
    assert not (tmp_path / "bad.mp4").exists()
