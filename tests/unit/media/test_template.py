"""actors/media/template.py (+ color.py, plan.source_index_map): probing, streaming/seeking decode, rotation, index maps, typed errors."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import actors.media.color as color
import actors.media.template as template
from actors.errors import (
    InvalidParameterError,
    MediaTooLargeError,
    MediaTooLongError,
    NoVideoStreamError,
    UnreadableFileError,
)
from actors.limits import MediaLimits
from actors.media.color import rotate_upright
from actors.media.template import TemplateInfo, iter_frames, probe_template
from actors.plan import source_index_map
from tests.media import speech_like, synthetic_frames, write_audio, write_template, write_video

W, H = 64, 48


def _write(path: Path, frames, fps=25, gop: int | None = None, pts0: int = 0, fmt: str | None = None,
           display_matrix=None, display_rotation: int | None = None) -> Path:
    """Like tests.media.write_video, plus GOP size, a first pts offset and a display matrix."""
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if gop is not None:
            vs.codec_context.gop_size = gop
        if display_matrix is not None:
            vs.set_display_matrix(display_matrix)
        if display_rotation is not None:
            vs.set_display_rotation(display_rotation)
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts = pts0 + i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path


# --------------------------------------------------------------------------------------------
# probe


def test_probe_fields_25fps(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(30, W, H), fps=25)
    info = probe_template(p)
    assert isinstance(info, TemplateInfo)
    assert info.path == str(p)
    assert (info.width, info.height) == (W, H)
    assert info.fps == Fraction(25) and isinstance(info.fps, Fraction)
    assert info.n_frames == 30
    assert info.rotation == 0
    assert info.duration_s == pytest.approx(1.2, abs=1e-6)
    with pytest.raises(Exception):
        info.n_frames = 3  # frozen


def test_probe_fields_ntsc(tmp_path):
    fps = Fraction(30000, 1001)
    p = write_video(tmp_path / "v.mp4", synthetic_frames(20, W, H), fps=fps)
    info = probe_template(p)
    assert info.fps == fps
    assert info.n_frames == 20
    assert info.duration_s == pytest.approx(20 * 1001 / 30000, abs=1e-6)


def test_probe_counts_frames_when_container_does_not_say(tmp_path):
    p = _write(tmp_path / "v.mkv", synthetic_frames(37, W, H), fps=25)
    with av.open(str(p)) as c:
        assert c.streams.video[0].frames == 0  # Matroska has no frame count: it must be counted
    info = probe_template(p)
    assert info.n_frames == 37
    assert info.fps == 25
    assert info.duration_s == pytest.approx(37 / 25)


def test_probe_video_with_audio_track(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(12, W, H), audio=speech_like(0.5))
    assert probe_template(p).n_frames == 12


# --------------------------------------------------------------------------------------------
# iter_frames


def _mae(a, b) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def test_iter_frames_full_decode_order_and_format(tmp_path):
    src = list(synthetic_frames(24, W, H))
    p = write_video(tmp_path / "v.mp4", src)
    got = list(iter_frames(p))
    assert [i for i, _ in got] == list(range(24))
    for i, frame in got:
        assert frame.dtype == np.uint8 and frame.shape == (H, W, 3) and frame.flags["C_CONTIGUOUS"]
        # Each decoded frame is closest to its own source frame (order is right, colours BGR).
        errs = [_mae(frame, s) for s in src]
        assert int(np.argmin(errs)) == i
        assert errs[i] < 10.0  # 4:2:0 + default CRF on hard synthetic edges
        # BGR order: the synthetic source has a constant 128 in channel 2 (red) outside the bar.
        assert abs(float(np.median(frame[H // 4:, :, 2])) - 128) < 6


def _no_fallback(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("seek path fell back to decoding from the start")
    monkeypatch.setattr(template, "_decode_sequential", boom)


@pytest.mark.parametrize("name,kwargs", [
    ("gop8.mp4", {"gop": 8}),
    ("gop8_ntsc.mp4", {"gop": 8, "fps": Fraction(30000, 1001)}),
    ("offset.mp4", {"gop": 8, "pts0": 50}),
    ("offset.mkv", {"gop": 8, "pts0": 50}),
    ("one_gop.mp4", {}),
])
def test_seek_matches_full_decode(tmp_path, monkeypatch, name, kwargs):
    p = _write(tmp_path / name, synthetic_frames(60, W, H), **kwargs)
    full = [f for _, f in iter_frames(p)]
    assert len(full) == 60
    _no_fallback(monkeypatch)  # these containers seek precisely: the seek path must do the work
    for start in (1, 8, 17, 23, 40, 59):
        got = list(iter_frames(p, start=start, stop=start + 5))
        assert [i for i, _ in got] == list(range(start, min(60, start + 5)))
        for i, frame in got:
            assert np.array_equal(frame, full[i]), (name, start, i)
    got = list(iter_frames(p, start=17))
    assert [i for i, _ in got] == list(range(17, 60))


def test_seek_on_imprecise_container_still_exact(tmp_path):
    # MPEG-TS seeks land after the target (or past the end); iter_frames must still be exact.
    p = _write(tmp_path / "v.ts", synthetic_frames(60, W, H), gop=8, pts0=50, fmt="mpegts")
    full = [f for _, f in iter_frames(p)]
    for start in (1, 17, 40, 59):
        got = list(iter_frames(p, start=start, stop=start + 4))
        assert [i for i, _ in got] == list(range(start, min(60, start + 4)))
        assert all(np.array_equal(f, full[i]) for i, f in got)


def test_iter_frames_ranges(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(10, W, H))
    assert [i for i, _ in iter_frames(p, 0, 3)] == [0, 1, 2]
    assert [i for i, _ in iter_frames(p, 8)] == [8, 9]
    assert list(iter_frames(p, 10)) == []
    assert list(iter_frames(p, 50, 60)) == []
    assert list(iter_frames(p, 5, 5)) == []
    with pytest.raises(InvalidParameterError):
        list(iter_frames(p, -1))


def test_iter_frames_is_lazy_and_closable(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(30, W, H))
    gen = iter_frames(p)
    i, frame = next(gen)
    assert i == 0 and frame.shape == (H, W, 3)
    gen.close()  # closes the container without decoding the rest


# --------------------------------------------------------------------------------------------
# rotation


def _marked_frames(n: int):
    """Frames with a red square in the stored top-left corner and a green one at the top-right."""
    for img in synthetic_frames(n, W, H):
        img = img.copy()
        img[:, :] = (128, 128, 128)
        img[:12, :12] = (0, 0, 255)  # BGR red, top-left
        img[:12, -12:] = (0, 255, 0)  # green, top-right
        yield img


def _corner(img, which: str) -> np.ndarray:
    h, w = img.shape[:2]
    ys = slice(2, 8) if which[0] == "t" else slice(h - 8, h - 2)
    xs = slice(2, 8) if which[1] == "l" else slice(w - 8, w - 2)
    return img[ys, xs].reshape(-1, 3).mean(axis=0)


def _is(color, bgr) -> bool:
    return bool(np.all(np.abs(np.asarray(color) - np.asarray(bgr)) < 40))


RED, GREEN, GREY = (0, 0, 255), (0, 255, 0), (128, 128, 128)


def test_rotation_90_from_iso_display_matrix(tmp_path):
    # The MP4 'tkhd' matrix players apply for a "rotate 90 clockwise" phone video
    # (a=0, b=1, c=-1, d=0, tx=height): (x, y) -> (height - y, x). The stored top-left corner
    # therefore shows at the top-right, the stored top-right at the bottom-right.
    one, w_ = 1 << 16, 1 << 30
    matrix = [0, one, 0, -one, 0, 0, H * one, 0, w_]
    p = _write(tmp_path / "r90.mp4", _marked_frames(6), display_matrix=matrix)
    info = probe_template(p)
    assert info.rotation == 90
    assert (info.width, info.height) == (H, W)  # display size is portrait
    frames = list(iter_frames(p))
    assert len(frames) == 6
    img = frames[0][1]
    assert img.shape == (W, H, 3) and img.flags["C_CONTIGUOUS"]
    assert _is(_corner(img, "tr"), RED)
    assert _is(_corner(img, "br"), GREEN)
    assert _is(_corner(img, "tl"), GREY) and _is(_corner(img, "bl"), GREY)
    # Seeking keeps the orientation.
    seek = list(iter_frames(p, start=3))
    assert [i for i, _ in seek] == [3, 4, 5] and seek[0][1].shape == (W, H, 3)


@pytest.mark.parametrize("ccw,expected_rotation,red_at,green_at", [
    (-90, 90, "tr", "br"),
    (180, 180, "br", "bl"),
    (90, 270, "bl", "tl"),
    (0, 0, "tl", "tr"),
])
def test_rotation_via_pyav_display_rotation(tmp_path, ccw, expected_rotation, red_at, green_at):
    # PyAV's set_display_rotation takes a counter-clockwise angle; rotation is reported clockwise.
    p = _write(tmp_path / "r.mp4", _marked_frames(4), display_rotation=ccw)
    info = probe_template(p)
    assert info.rotation == expected_rotation
    portrait = expected_rotation in (90, 270)
    assert (info.width, info.height) == ((H, W) if portrait else (W, H))
    img = next(iter_frames(p))[1]
    assert img.shape == (info.height, info.width, 3)
    assert _is(_corner(img, red_at), RED)
    assert _is(_corner(img, green_at), GREEN)


def test_rotate_upright_on_arrays():
    a = np.arange(6).reshape(2, 3)
    # 90 clockwise: the first row becomes the last column.
    assert rotate_upright(a, 90).tolist() == [[3, 0], [4, 1], [5, 2]]
    assert rotate_upright(a, 180).tolist() == [[5, 4, 3], [2, 1, 0]]
    assert rotate_upright(a, 270).tolist() == [[2, 5], [1, 4], [0, 3]]
    assert rotate_upright(a, 0) is a
    assert rotate_upright(a, -90).tolist() == rotate_upright(a, 270).tolist()


# --------------------------------------------------------------------------------------------
# source_index_map


def test_loop_map():
    assert source_index_map(7, 3, "loop").tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert source_index_map(4, 1, "loop").tolist() == [0, 0, 0, 0]
    assert source_index_map(2, 5, "loop").tolist() == [0, 1]
    assert source_index_map(0, 5, "loop").tolist() == []


def test_pingpong_map():
    m = source_index_map(12, 5)  # default mode is pingpong
    assert m.dtype == np.int64
    assert m.tolist() == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]
    assert source_index_map(5, 2, "pingpong").tolist() == [0, 1, 0, 1, 0]
    assert source_index_map(4, 1, "pingpong").tolist() == [0, 0, 0, 0]
    assert source_index_map(3, 5, "pingpong").tolist() == [0, 1, 2]
    assert source_index_map(5, 5, "pingpong").tolist() == [0, 1, 2, 3, 4]
    assert source_index_map(6, 5, "pingpong").tolist() == [0, 1, 2, 3, 4, 3]
    # No index ever leaves the template, and neighbours differ by at most one frame.
    big = source_index_map(1000, 7, "pingpong")
    assert big.min() == 0 and big.max() == 6
    assert np.all(np.abs(np.diff(big)) == 1)


def test_index_map_invalid():
    with pytest.raises(InvalidParameterError):
        source_index_map(5, 3, "bounce")
    with pytest.raises(InvalidParameterError):
        source_index_map(5, 0)
    with pytest.raises(InvalidParameterError):
        source_index_map(-1, 3)


# --------------------------------------------------------------------------------------------
# typed errors


def test_missing_file(tmp_path):
    p = tmp_path / "nope.mp4"
    with pytest.raises(UnreadableFileError) as e:
        probe_template(p)
    assert str(p) in str(e.value)
    with pytest.raises(UnreadableFileError):
        list(iter_frames(p))


def test_garbage_bytes(tmp_path):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableFileError) as e:
        probe_template(p)
    assert str(p) in str(e.value)
    with pytest.raises(UnreadableFileError):
        list(iter_frames(p))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError):
        probe_template(empty)


def test_audio_only_file_as_video(tmp_path):
    p = write_audio(tmp_path / "speech.wav", speech_like(0.5))
    with pytest.raises(NoVideoStreamError) as e:
        probe_template(p)
    assert str(p) in str(e.value) and "no video" in str(e.value)
    with pytest.raises(NoVideoStreamError):
        list(iter_frames(p))


def test_too_large(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(5, W, H))
    with pytest.raises(MediaTooLargeError) as e:
        probe_template(p, MediaLimits(max_width=32, max_height=32))
    assert str(p) in str(e.value) and "64x48" in str(e.value)
    with pytest.raises(MediaTooLargeError):
        probe_template(p, MediaLimits(max_pixels=W * H - 1))
    assert probe_template(p, MediaLimits(max_pixels=W * H)).n_frames == 5


def test_too_long(tmp_path):
    p = write_video(tmp_path / "v.mp4", synthetic_frames(30, W, H))  # 1.2 s
    with pytest.raises(MediaTooLongError) as e:
        probe_template(p, MediaLimits(max_duration_s=1.0))
    assert str(p) in str(e.value)
    mkv = _write(tmp_path / "v.mkv", synthetic_frames(30, W, H))
    with pytest.raises(MediaTooLongError):
        probe_template(mkv, MediaLimits(max_duration_s=1.0))
    assert probe_template(p, MediaLimits(max_duration_s=1.25)).n_frames == 30


def test_errors_are_input_errors(tmp_path):
    with pytest.raises(UnreadableFileError) as e:
        probe_template(tmp_path / "nope.mp4")
    d = e.value.to_dict()
    assert d["code"] == "unreadable_file" and d["retryable"] is False and d["message"]
    assert not os.path.exists(tmp_path / "nope.mp4")


# --------------------------------------------------------------------------------------------
# YUV -> BGR: unbiased, with the frame's own matrix and range


def _ref_bgr(i420: np.ndarray, kr: float, kb: float, full: bool) -> np.ndarray:
    """Float reference decode of a yuv420p array (chroma repeated 2x2), clipped to 0..255."""
    h, w = i420.shape[0] * 2 // 3, i420.shape[1]
    flat = i420.reshape(-1).astype(np.float64)
    q = (h // 2) * (w // 2)
    up = lambda p: np.repeat(np.repeat(p.reshape(h // 2, w // 2), 2, 0), 2, 1)  # noqa: E731
    y, cb, cr = flat[:h * w].reshape(h, w), up(flat[h * w:h * w + q]), up(flat[h * w + q:])
    if full:
        y, cb, cr = y, cb - 128, cr - 128
    else:
        y, cb, cr = (y - 16) * 255 / 219, (cb - 128) * 255 / 224, (cr - 128) * 255 / 224
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([b, g, r], -1), 0, 255)


BT601, BT709 = (0.299, 0.114), (0.2126, 0.0722)


@pytest.mark.parametrize("fmt,colorspace,color_range,matrix,full", [
    ("yuv420p", 2, 0, BT601, False),  # untagged: BT.601 limited, as FFmpeg assumes
    ("yuv420p", 6, 1, BT601, False),  # smpte170m/tv: what actors.media.encode writes
    ("yuv420p", 5, 1, BT601, False),  # bt470bg
    ("yuv420p", 1, 1, BT709, False),  # HD phone video
    ("yuv420p", 1, 2, BT709, True),
    ("yuv420p", 6, 2, BT601, True),
    ("yuvj420p", 2, 0, BT601, True),
])
def test_yuv_to_bgr_matches_reference(fmt, colorspace, color_range, matrix, full):
    rng = np.random.default_rng(7)
    h, w = 32, 48
    i420 = np.empty((h * 3 // 2, w), np.uint8)
    i420[:h] = rng.integers(16, 236, (h, w)) if not full else rng.integers(0, 256, (h, w))
    i420[h:] = rng.integers(16, 241, (h // 2, w)) if not full else rng.integers(0, 256, (h // 2, w))
    frame = av.VideoFrame.from_ndarray(i420, format=fmt)
    frame.colorspace, frame.color_range = colorspace, color_range
    got = color.yuv_to_bgr(frame)
    assert got.dtype == np.uint8 and got.shape == (h, w, 3) and got.flags["C_CONTIGUOUS"]
    err = got - _ref_bgr(i420, *matrix, full)
    assert np.abs(err.mean(axis=(0, 1))).max() < 0.05, err.mean(axis=(0, 1))
    assert np.abs(err).max() < 0.75, np.abs(err).max()  # rounded to nearest (fixed-point slack)


def test_yuv_to_bgr_sub_black_luma_with_colour():
    # OpenCV's I420 conversion clamps Y < 16 before the matrix; such frames must still be exact.
    h, w = 16, 16
    i420 = np.empty((h * 3 // 2, w), np.uint8)
    i420[:h] = 8
    i420[h:h + h // 4] = 128
    i420[h + h // 4:] = 230  # strong red
    frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    got = color.yuv_to_bgr(frame)
    ref = _ref_bgr(i420, *BT601, False)
    assert np.abs(got - ref).max() < 0.75, (got[0, 0], ref[0, 0])


@pytest.mark.parametrize("fmt", ["yuv444p", "nv12", "yuv422p"])
def test_yuv_to_bgr_swscale_fallback_is_unbiased(fmt):
    # Other pixel formats go through swscale with accurate rounding: flat greys stay put.
    greys = np.arange(16, 236, 7)
    bgr = np.repeat(np.repeat(greys.astype(np.uint8)[None, :, None], 8, 0), 2, 1)
    bgr = np.repeat(bgr, 3, 2)[:, :64]  # 8 x 64 x 3, each grey twice
    ref_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
    frame = ref_frame.reformat(format=fmt, interpolation="BILINEAR")
    got = color.yuv_to_bgr(frame)
    assert np.abs(got.astype(np.float64) - bgr).mean() < 0.6
    assert abs(float((got.astype(np.float64) - bgr).mean())) < 0.3


def test_iter_frames_honours_bt709_tag(tmp_path):
    colours = [(40, 160, 200), (200, 60, 90), (128, 128, 128), (20, 30, 230)]
    frames = [np.full((H, W, 3), c, np.uint8) for c in colours]
    p = write_template(tmp_path / "bt709.mp4", frames, colorspace=1, color_range=1, crf=12)
    with av.open(str(p)) as c:
        assert int(next(c.decode(video=0)).colorspace) == 1
    decoded = [f for _, f in iter_frames(p)]
    for c, f in zip(colours, decoded):
        mean = f.reshape(-1, 3).mean(axis=0)
        assert np.all(np.abs(mean - c) <= 1.5), (c, mean)
    # Decoded with the BT.601 matrix instead (tag dropped), the saturated red would be far off.
    i420 = np.ascontiguousarray(av.VideoFrame.from_ndarray(frames[3], format="bgr24").reformat(
        format="yuv420p", dst_colorspace="itu709", dst_color_range=1).to_ndarray())
    wrong = av.VideoFrame.from_ndarray(i420, format="yuv420p")
    assert np.abs(color.yuv_to_bgr(wrong)[0, 0].astype(int) - colours[3]).max() > 10


def test_iter_frames_flat_greys_unbiased(tmp_path):
    greys = list(range(16, 236, 5)) + [235]
    frames = [np.full((H, W, 3), g, np.uint8) for g in greys]
    p = write_template(tmp_path / "greys.mp4", frames, colorspace=6, color_range=1, crf=12)
    decoded = [f for _, f in iter_frames(p)]
    errors = [float(f.mean()) - g for f, g in zip(decoded, greys)]
    assert max(abs(e) for e in errors) <= 1.0, errors  # luma has 220 steps for 256 levels
    # The decode alone must add no bias (swscale's fast path lost ~0.5 level here).
    assert abs(float(np.mean(errors))) < 0.2, np.mean(errors)
