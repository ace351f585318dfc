"""SegmentWriter's paste in YUV against the BGR path it replaces: the pasted region within a level,
every other pixel exactly the template's decoded YUV; rotated templates, and templates the YUV path
must not keep (full range, 4:4:4, 10-bit, BT.709), still render with the right colours.

Segments are written at CRF 0 (lossless), so the decoded output is exactly what the writer made.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from actors.avatar import AvatarCache, AvatarParams
from actors.crop_geometry import MuseTalkGeometry, PaddedBoxGeometry
from actors.media.i420 import even_rect, planes
from actors.media.template import iter_frames
from actors.segment_writer import SegmentWriter
from tests.media import write_template

W, H = 160, 128
BOX = (40, 20, 120, 110)


def smooth_frames(n: int, w: int = W, h: int = H) -> list[np.ndarray]:
    """Smooth moving colour fields (every channel well inside 16..235 after conversion)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        img = np.empty((h, w, 3), np.float32)
        img[..., 0] = 60 + 90 * xx / w + 10 * np.sin(i / 3)
        img[..., 1] = 70 + 80 * yy / h
        img[..., 2] = 90 + 60 * np.cos((xx + 3 * i) / 23.0) * np.sin(yy / 17.0)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _avatar(tmp_path: Path, video: Path, geometry):
    return AvatarCache(tmp_path / "cache").get_or_build(
        video, AvatarParams(crop_size=geometry.crop_size, box=BOX, geometry=geometry))


def _generated(avatar, rows: np.ndarray) -> np.ndarray:
    crops = np.asarray(avatar.crops())[rows].astype(np.int16)
    noise = np.random.default_rng(0).integers(-8, 9, crops.shape, dtype=np.int16)
    return np.clip(crops + 25 + noise, 0, 255).astype(np.uint8)  # brighter: the paste is visible


def _write(tmp_path: Path, name: str, avatar, sources, present, generated, **kw) -> list[np.ndarray]:
    out = tmp_path / f"{name}.mp4"
    assert SegmentWriter(crf=0, **kw).write_segment(avatar, sources, present, generated, out) == len(sources)
    with av.open(str(out)) as c:
        frames = [f for f in c.decode(video=0)]
    assert all(f.format.name == "yuv420p" for f in frames)
    return [f.to_ndarray() for f in frames]


# A ping-pong turn (frames 5..2 shown again) with one frame without a face.
SOURCES = np.array([0, 1, 2, 3, 4, 5, 5, 4, 3, 2, 11, 10])
PRESENT = np.array([True] * 7 + [False] + [True] * 4)


def _check_against_bgr_path(tmp_path, video, geometry):
    avatar = _avatar(tmp_path, video, geometry)
    generated = _generated(avatar, SOURCES[PRESENT])
    new = _write(tmp_path, "yuv", avatar, SOURCES, PRESENT, generated)
    old = _write(tmp_path, "bgr", avatar, SOURCES, PRESENT, generated, yuv_paste=False)
    template = dict(iter_frames(video, keep_yuv420p=True))
    assert all(f.ndim == 2 for f in template.values())  # yuv420p BT.601 limited: kept as planes
    w, h = avatar.info.width, avatar.info.height
    boxes = avatar.boxes()
    round_trip_moved = 0
    for k, src in enumerate(SOURCES.tolist()):
        assert new[k].shape == (h * 3 // 2, w)
        if not PRESENT[k]:
            np.testing.assert_array_equal(new[k], template[src])
            continue
        x1, y1, x2, y2 = even_rect(geometry.paste_region(boxes[src], w, h), w, h)
        for plane, (n_p, o_p, t_p) in enumerate(zip(planes(new[k]), planes(old[k]), planes(template[src]))):
            s = 1 if plane == 0 else 2
            inside = np.zeros(t_p.shape, bool)
            inside[y1 // s:y2 // s, x1 // s:x2 // s] = True
            np.testing.assert_array_equal(n_p[~inside], t_p[~inside])  # untouched: the template's YUV
            assert np.abs(n_p[inside].astype(int) - o_p[inside]).max() <= 1  # pasted: as the BGR path
            round_trip_moved += int(np.count_nonzero(o_p[~inside] != t_p[~inside]))
        assert (planes(new[k])[0][y1:y2, x1:x2] != planes(template[src])[0][y1:y2, x1:x2]).any()
    return round_trip_moved


@pytest.mark.parametrize("geometry", [PaddedBoxGeometry(96), MuseTalkGeometry()], ids=["padded", "musetalk"])
def test_yuv_paste_matches_the_bgr_path_and_keeps_the_rest_exact(tmp_path, geometry):
    video = write_template(tmp_path / "t.mp4", smooth_frames(12), colorspace=6, color_range=1, yuv_noise=3)
    moved = _check_against_bgr_path(tmp_path, video, geometry)
    assert moved > 0  # the BGR path's yuv -> bgr -> yuv round trip did move pixels it never pasted


def test_rotated_template_pastes_upright_in_yuv(tmp_path):
    frames = [np.ascontiguousarray(np.rot90(f)) for f in smooth_frames(12, W, H)]  # stored 128 x 160
    video = write_template(tmp_path / "rot.mp4", frames, rotation=90, yuv_noise=3)  # untagged: BT.601 limited
    avatar = _avatar(tmp_path, video, PaddedBoxGeometry(96))
    assert (avatar.info.rotation, avatar.info.width, avatar.info.height) == (90, W, H)
    _check_against_bgr_path(tmp_path, video, PaddedBoxGeometry(96))


@pytest.mark.parametrize("pix_fmt,colorspace,color_range", [
    ("yuvj420p", None, None),  # JPEG (full) range
    ("yuv420p", 6, 2),  # full range by tag
    ("yuv420p", 1, 1),  # BT.709 limited
    ("yuv444p", None, None),
    ("yuv420p10le", None, None),
])
def test_other_templates_take_the_bgr_path_with_correct_colours(tmp_path, pix_fmt, colorspace, color_range):
    video = write_template(tmp_path / "t.mp4", smooth_frames(12), pix_fmt, colorspace, color_range)
    template = dict(iter_frames(video, keep_yuv420p=True))
    assert all(f.ndim == 3 for f in template.values())  # not kept: converted to BGR as before
    geometry = PaddedBoxGeometry(96)
    avatar = _avatar(tmp_path, video, geometry)
    generated = _generated(avatar, SOURCES[PRESENT])
    new = _write(tmp_path, "yuv", avatar, SOURCES, PRESENT, generated)
    old = _write(tmp_path, "bgr", avatar, SOURCES, PRESENT, generated, yuv_paste=False)
    for a, b in zip(new, old):
        np.testing.assert_array_equal(a, b)
    # Colours: the output, decoded, matches the template's decoded colours away from the paste.
    out_bgr = [f for _, f in iter_frames(tmp_path / "yuv.mp4")]
    x1, y1, x2, y2 = even_rect(geometry.paste_region(avatar.boxes()[0], W, H), W, H)
    keep = np.ones((H, W), bool)
    keep[y1:y2, x1:x2] = False
    for k, src in enumerate(SOURCES.tolist()):
        diff = out_bgr[k][keep].astype(float) - template[src][keep]
        assert np.abs(diff.mean(axis=0)).max() < 0.5, diff.mean(axis=0)
        assert np.abs(diff).mean() < 1.0, np.abs(diff).mean()
