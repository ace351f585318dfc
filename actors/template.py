"""The template video: probing, streaming upright BGR frames, and the source-frame index map.

Plain Python over PyAV (no Ray, no ffmpeg CLI).

Rotation convention: ``TemplateInfo.rotation`` is the *clockwise* angle (0/90/180/270) by which a
player turns the stored picture for display, i.e. the same meaning as the legacy MP4 ``rotate``
tag. It is read from the display-matrix side data FFmpeg attaches to decoded frames
(``VideoFrame.rotation``, which is counter-clockwise, hence the sign flip), falling back to a
``rotate`` entry in the stream metadata. Frames from :func:`iter_frames` are turned upright, so
their shape is ``(height, width, 3)`` with the *display* width/height of :class:`TemplateInfo`.

Colours: decoded frames are converted to BGR with every sample rounded to nearest (unbiased), see
:func:`yuv_to_bgr`. 8-bit yuv420p in BT.601 limited range (what :mod:`actors.writer` produces, and
what FFmpeg assumes for untagged video) goes through OpenCV's ``COLOR_YUV2BGR_I420``; BT.709 and/or
full-range 8-bit 4:2:0 (or a frame with sub-black luma) through the matching matrix
(``cv2.transform``, rounded); anything else through
swscale with ``ACCURATE_RND | FULL_CHR_H_INT``. swscale's default (fast) path, used before, is biased
(about -0.5 to -1.5 levels per conversion), which made each decode/encode generation darker.

Frame indices count decoded frames from the start of the stream (frame ``k`` is the ``k``-th
frame a full decode yields). After a seek, the index of the first decoded frame is derived from its
pts relative to the stream's first pts (``round((pts - first_pts) * time_base * fps)``); the
following frames count on from there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation

from actors.errors import (
    InvalidParameterError,
    MediaTooLargeError,
    MediaTooLongError,
    NoVideoStreamError,
    UnreadableFileError,
    decode_failure,
)
from actors.limits import MediaLimits

DEFAULT_FPS = Fraction(25)
_MAX_SANE_FPS = 1000


@dataclass(frozen=True)
class TemplateInfo:
    path: str
    width: int  # display width (after rotation)
    height: int  # display height (after rotation)
    fps: Fraction
    n_frames: int
    rotation: int  # clockwise display rotation: 0, 90, 180 or 270
    duration_s: float


# --------------------------------------------------------------------------------------------
# helpers


def _open(path: str):
    if not os.path.exists(path):
        raise UnreadableFileError(f"file does not exist: {path}", path=path)
    if os.path.isdir(path):
        raise UnreadableFileError(f"is a directory, not a media file: {path}", path=path)
    try:
        return av.open(path, "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"cannot open {path} as media: {exc}", path=path) from exc


def _video_stream(container, path: str):
    for stream in container.streams.video:
        try:
            attached = bool(stream.disposition & av.stream.Disposition.attached_pic)
        except Exception:  # pragma: no cover - very old PyAV
            attached = False
        if not attached:
            return stream
    kinds = sorted({s.type for s in container.streams}) or ["none"]
    raise NoVideoStreamError(
        f"{path} has no video stream (streams found: {', '.join(kinds)})", path=path)


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and 0 < rate <= _MAX_SANE_FPS:
            return Fraction(rate)
    return DEFAULT_FPS


def _snap_rotation(degrees: float) -> int:
    """Normalise any angle to the nearest of 0/90/180/270."""
    if degrees is None or (isinstance(degrees, float) and math.isnan(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) % 4 * 90


def _rotation_of(frame, stream) -> int:
    """Clockwise display rotation of a decoded frame (display matrix), else stream 'rotate' tag."""
    try:
        ccw = frame.rotation if frame is not None else 0
    except Exception:  # pragma: no cover
        ccw = 0
    if ccw:
        return _snap_rotation(-ccw)
    tag = stream.metadata.get("rotate") if stream is not None else None
    if tag:
        try:
            return _snap_rotation(float(tag))
        except ValueError:
            return 0
    return 0


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture upright, given the clockwise display rotation (0/90/180/270).

    ``np.rot90(img, k)`` turns an image counter-clockwise by ``90*k`` degrees, so a clockwise turn of
    ``rotation`` degrees is ``k = -rotation/90``. Returns a C-contiguous array.
    """
    rotation = _snap_rotation(rotation)
    if rotation == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, k=(-rotation // 90) % 4))


# AVColorSpace / AVColorRange values (libavutil/pixfmt.h).
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_UNSPECIFIED = 2
_AVCOL_SPC_BT470BG = 5
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_UNSPECIFIED = 0
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
# (Kr, Kb) of the matrices handled without swscale; an untagged stream is BT.601, as in swscale.
_MATRIX_KR_KB = {
    _AVCOL_SPC_UNSPECIFIED: (0.299, 0.114),
    _AVCOL_SPC_BT470BG: (0.299, 0.114),
    _AVCOL_SPC_SMPTE170M: (0.299, 0.114),
    _AVCOL_SPC_BT709: (0.2126, 0.0722),
}
# swscale's default yuv -> rgb path truncates; these flags make it round to nearest (and interpolate
# chroma), so the fallback is unbiased too.
_SWS_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def _yuv_to_bgr_matrix(kr: float, kb: float, full_range: bool) -> np.ndarray:
    """3x4 float32 matrix mapping (Y, Cb, Cr, 1) to (B, G, R) for ``cv2.transform``."""
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    y0 = 0.0 if full_range else 16.0
    # R = Y' + 2(1-Kr) Cr', B = Y' + 2(1-Kb) Cb', G = (Y' - Kr R - Kb B) / Kg
    rows = np.array([
        [ys, 2.0 * (1.0 - kb) * cs, 0.0],                                            # B
        [ys, -2.0 * kb * (1.0 - kb) / kg * cs, -2.0 * kr * (1.0 - kr) / kg * cs],    # G
        [ys, 0.0, 2.0 * (1.0 - kr) * cs],                                            # R
    ])
    offset = -(rows @ np.array([y0, 128.0, 128.0]))
    # cv2.transform evaluates 8-bit 3x3 transforms in 10-bit fixed point. Use coefficients that are
    # exact multiples of 1/1024 (so the float and fixed-point paths agree), and fold their rounding
    # error into the offset at mid-grey, so the quantisation leaves no bias (error <= ~0.05 level).
    q = np.round(rows * 1024.0) / 1024.0
    mid = np.array([(y0 + (255.0 if full_range else 235.0)) / 2.0, 128.0, 128.0])
    offset = np.round((offset + (rows - q) @ mid) * 1024.0) / 1024.0
    return np.hstack([q, offset[:, None]]).astype(np.float32)


_YUV_TO_BGR = {(cs, full): _yuv_to_bgr_matrix(kr, kb, full)
               for cs, (kr, kb) in _MATRIX_KR_KB.items() for full in (False, True)}


def _i420_matrix_to_bgr(i420: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """yuv420p ``(h*3/2, w)`` -> BGR with ``matrix`` (see :func:`_yuv_to_bgr_matrix`), rounded.

    Chroma is upsampled by sample repetition, as OpenCV's ``COLOR_YUV2BGR_I420`` does.
    """
    h, w = i420.shape[0] * 2 // 3, i420.shape[1]
    flat = i420.reshape(-1)
    q = (h // 2) * (w // 2)
    u = flat[h * w:h * w + q].reshape(h // 2, w // 2)
    v = flat[h * w + q:h * w + 2 * q].reshape(h // 2, w // 2)
    yuv = cv2.merge([i420[:h],
                     cv2.resize(u, (w, h), interpolation=cv2.INTER_NEAREST),
                     cv2.resize(v, (w, h), interpolation=cv2.INTER_NEAREST)])
    return cv2.transform(yuv, matrix)


def yuv_to_bgr(frame) -> np.ndarray:
    """A decoded video frame as BGR uint8 ``h x w x 3``, every sample rounded to nearest.

    8-bit 4:2:0 with even size in BT.601 / BT.709 (or untagged = BT.601), limited or full range, is
    converted here with the frame's matrix and range; any other frame by swscale with accurate
    rounding (``src_color_range`` from the frame, the matrix from the frame's colorspace tag).
    """
    fmt = frame.format.name
    try:
        color_range = int(frame.color_range)
        colorspace = int(frame.colorspace)
    except Exception:  # pragma: no cover
        color_range, colorspace = _AVCOL_RANGE_UNSPECIFIED, _AVCOL_SPC_UNSPECIFIED
    if (fmt in ("yuv420p", "yuvj420p") and colorspace in _MATRIX_KR_KB
            and frame.width % 2 == 0 and frame.height % 2 == 0 and frame.width > 0 and frame.height > 0):
        full = fmt == "yuvj420p" or color_range == _AVCOL_RANGE_JPEG
        i420 = frame.to_ndarray()
        if (not full and _MATRIX_KR_KB[colorspace] == (0.299, 0.114)
                and int(i420[:frame.height].min()) >= 16):
            # BT.601 limited: OpenCV's own conversion (fastest). It clamps Y below 16 up to 16
            # before the matrix, which is wrong for sub-black pixels with colour: those frames take
            # the exact matrix path below.
            return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
        return _i420_matrix_to_bgr(i420, _YUV_TO_BGR[(colorspace, full)])
    kwargs = {"interpolation": _SWS_ACCURATE}
    if color_range:
        kwargs["src_color_range"] = color_range
    try:
        return frame.to_ndarray(format="bgr24", **kwargs)
    except Exception:  # pragma: no cover - odd colour tags swscale refuses
        return frame.to_ndarray(format="bgr24", interpolation=_SWS_ACCURATE)


_to_bgr = yuv_to_bgr


def _header_duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


def _first_frame(container, stream, path: str):
    try:
        for frame in container.decode(stream):
            return frame
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"cannot decode video of {path}: {exc}", path=path) from exc
    return None


def _count_packets(path: str) -> int:
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        n = 0
        for packet in container.demux(stream):
            if packet.size > 0 and not packet.is_corrupt:
                n += 1
        return n
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"cannot read packets of {path}: {exc}", path=path) from exc
    finally:
        container.close()


# --------------------------------------------------------------------------------------------
# public API


def probe_template(path, limits: MediaLimits | None = None) -> TemplateInfo:
    """Read the template's geometry, rate, exact frame count and rotation; enforce ``limits``.

    Decodes only the first frame (for the display matrix and to prove the stream decodes). When the
    container does not state a frame count, frames are counted by demuxing packets (no decoding).
    """
    path = str(path)
    limits = limits or MediaLimits()
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        coded_w, coded_h = int(stream.codec_context.width), int(stream.codec_context.height)
        if coded_w <= 0 or coded_h <= 0:
            raise UnreadableFileError(f"{path}: video stream has no picture size", path=path)
        fps = _stream_fps(stream)
        # Size limits are orientation-agnostic: compare the larger/smaller sides both ways.
        if (max(coded_w, coded_h) > max(limits.max_width, limits.max_height)
                or min(coded_w, coded_h) > min(limits.max_width, limits.max_height)
                or coded_w * coded_h > limits.max_pixels):
            raise MediaTooLargeError(
                f"{path}: video is {coded_w}x{coded_h}, over the limit of "
                f"{limits.max_width}x{limits.max_height} / {limits.max_pixels} pixels", path=path)
        header_duration = _header_duration_s(container, stream)
        if header_duration is not None and header_duration > limits.max_duration_s:
            raise MediaTooLongError(
                f"{path}: video lasts {header_duration:.1f} s, over the limit of "
                f"{limits.max_duration_s:.1f} s", path=path)
        n_frames = int(stream.frames or 0)
        stream.thread_type = "AUTO"
        first = _first_frame(container, stream, path)
        if first is None:
            raise UnreadableFileError(f"{path}: video stream has no decodable frames", path=path)
        rotation = _rotation_of(first, stream)
        width, height = int(first.width), int(first.height)
    finally:
        container.close()

    if n_frames <= 0:
        n_frames = _count_packets(path)
    if n_frames <= 0:  # pragma: no cover - we decoded one frame, so there is at least one packet
        raise UnreadableFileError(f"{path}: video stream has no frames", path=path)
    duration_s = float(n_frames / fps)
    if duration_s > limits.max_duration_s:
        raise MediaTooLongError(
            f"{path}: video lasts {duration_s:.1f} s ({n_frames} frames at {float(fps):.3f} fps), "
            f"over the limit of {limits.max_duration_s:.1f} s", path=path)
    if rotation in (90, 270):
        width, height = height, width
    return TemplateInfo(path=path, width=width, height=height, fps=fps, n_frames=n_frames,
                        rotation=rotation, duration_s=duration_s)


def _decode_sequential(path: str, start: int, stop: int | None) -> Iterator[tuple[int, np.ndarray]]:
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        rotation = None
        index = -1
        for frame in container.decode(stream):
            index += 1
            if stop is not None and index >= stop:
                break
            if rotation is None:
                rotation = _rotation_of(frame, stream)
            if index < start:
                continue
            yield index, rotate_upright(_to_bgr(frame), rotation)
    except (av.FFmpegError, OSError) as exc:
        raise decode_failure(exc, f"cannot decode video of {path}: {exc}", path) from exc
    finally:
        container.close()


def _stream_first_pts(path: str) -> int | None:
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        if stream.start_time is not None:
            return int(stream.start_time)
        frame = _first_frame(container, stream, path)
        return None if frame is None or frame.pts is None else int(frame.pts)
    finally:
        container.close()


_SEEK_BACKOFFS_S = (0.0, 2.0, 10.0)


class _SeekMissed(Exception):
    """The seek landed after the requested frame (or timestamps are unusable): decode from 0."""


def _decode_after_seek(path: str, start: int, stop: int | None, first_pts: int,
                       backoff_s: float) -> Iterator[tuple[int, np.ndarray]]:
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream)
        tb = stream.time_base
        if tb is None or tb <= 0:
            raise _SeekMissed()
        target_s = max(Fraction(0), Fraction(start) / fps - Fraction(backoff_s))
        target = first_pts + int(math.floor(target_s / tb))
        try:
            container.seek(target, backward=True, any_frame=False, stream=stream)
        except (av.FFmpegError, OSError) as exc:
            raise _SeekMissed() from exc
        rotation = None
        index = None
        for frame in container.decode(stream):
            if index is None:
                if frame.pts is None:
                    raise _SeekMissed()
                index = int(round((frame.pts - first_pts) * tb * fps))
                if index > start or index < 0:
                    raise _SeekMissed()
            else:
                index += 1
            if stop is not None and index >= stop:
                break
            if rotation is None:
                rotation = _rotation_of(frame, stream)
            if index < start:
                continue
            yield index, rotate_upright(_to_bgr(frame), rotation)
        if index is None:  # the seek landed at or past the end (seen with MPEG-TS): not trustworthy
            raise _SeekMissed()
    except (av.FFmpegError, OSError) as exc:
        raise decode_failure(exc, f"cannot decode video of {path}: {exc}", path) from exc
    finally:
        container.close()


def iter_frames(path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for frames ``start <= index < stop``: upright BGR uint8 HxWx3.

    Streams (one decoded frame in memory at a time, threaded decoding). For ``start > 0`` it seeks to
    the key frame at or before the target and decodes forward, skipping frames before ``start``;
    if the seek cannot be trusted it falls back to decoding from the beginning.
    """
    path = str(path)
    if start < 0 or (stop is not None and stop < 0):
        raise InvalidParameterError(f"{path}: frame range must be non-negative (start={start}, stop={stop})",
                                    path=path)
    if stop is not None and stop <= start:
        return
    if start > 0:
        first_pts = _stream_first_pts(path)
        if first_pts is not None:
            # Some demuxers (MPEG-TS) seek imprecisely and may land after the target: retry from
            # further back before giving up and decoding from the start. _SeekMissed is only ever
            # raised before the first frame is yielded, so a retry never repeats a frame.
            for backoff_s in _SEEK_BACKOFFS_S:
                try:
                    yield from _decode_after_seek(path, start, stop, first_pts, backoff_s)
                    return
                except _SeekMissed:
                    continue
    yield from _decode_sequential(path, start, stop)


_MODES = ("pingpong", "loop")


def source_index_map(n_out: int, n_src: int, mode: str = "pingpong") -> np.ndarray:
    """Which template frame each output frame uses.

    ``loop``: ``i % n``. ``pingpong``: ``0,1,…,n-1,n-2,…,1,0,1,…`` (period ``2n-2``; ``n == 1`` gives
    all zeros).
    """
    if mode not in _MODES:
        raise InvalidParameterError(f"unknown template mode {mode!r}; expected one of {', '.join(_MODES)}")
    if n_out < 0:
        raise InvalidParameterError(f"number of output frames must be >= 0, got {n_out}")
    if n_src <= 0:
        raise InvalidParameterError(f"template must have at least one frame, got {n_src}")
    i = np.arange(int(n_out), dtype=np.int64)
    if n_src == 1:
        return np.zeros(int(n_out), dtype=np.int64)
    if mode == "loop":
        return i % n_src
    period = 2 * n_src - 2
    r = i % period
    return np.where(r < n_src, r, period - r).astype(np.int64)


__all__ = ["TemplateInfo", "probe_template", "iter_frames", "source_index_map", "rotate_upright",
           "yuv_to_bgr", "DEFAULT_FPS"]
