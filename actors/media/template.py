"""The template video: probing and streaming upright BGR frames.

Plain Python over PyAV (no Ray, no ffmpeg CLI).

Rotation convention: ``TemplateInfo.rotation`` is the *clockwise* angle (0/90/180/270) by which a
player turns the stored picture for display, i.e. the same meaning as the legacy MP4 ``rotate``
tag. It is read from the display-matrix side data FFmpeg attaches to decoded frames
(``VideoFrame.rotation``, which is counter-clockwise, hence the sign flip), falling back to a
``rotate`` entry in the stream metadata. Frames from :func:`iter_frames` are turned upright, so
their shape is ``(height, width, 3)`` with the *display* width/height of :class:`TemplateInfo`.

Colours: frames are converted to BGR without bias (``actors/media/color.py``). With
``keep_yuv420p`` the frames that are 8-bit yuv420p in BT.601 limited range (the format the
segments are encoded in) are not converted at all: they come as upright I420 arrays
(``actors/media/i420.py``, shape ``(height * 3 // 2, width)``); every other frame still comes as BGR.

Frame indices count decoded frames from the start of the stream (frame ``k`` is the ``k``-th
frame a full decode yields). After a seek, the index of the first decoded frame is derived from its
pts relative to the stream's first pts (``round((pts - first_pts) * time_base * fps)``); the
following frames count on from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from actors.errors import (
    InvalidParameterError,
    MediaTooLargeError,
    MediaTooLongError,
    NoVideoStreamError,
    UnreadableFileError,
    decode_failure,
)
from actors.limits import MediaLimits
from actors.media.color import is_bt601_limited_i420, rotate_upright, snap_rotation, yuv_to_bgr
from actors.media.i420 import rotate_i420
from actors.media.open import declared_duration_s, open_media

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


def _header_size(stream) -> tuple[int, int]:
    return int(stream.codec_context.width), int(stream.codec_context.height)


def _check_frame_size(frame, header: tuple[int, int], index: int | None, path: str) -> None:
    """Every decoded frame, not just the header: a stream whose frames grow after the header (a
    work and memory bomb that passes the probe) is refused."""
    size = (int(frame.width), int(frame.height))
    if size != header:
        at = f"frame {index}" if index is not None else "a frame"
        err = MediaTooLargeError if size[0] * size[1] > header[0] * header[1] else UnreadableFileError
        raise err(f"{path}: {at} is {size[0]}x{size[1]}, but the video stream declares "
                  f"{header[0]}x{header[1]} (frame sizes must not change)", path=path)


def _stream_fps(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and 0 < rate <= _MAX_SANE_FPS:
            return Fraction(rate)
    return DEFAULT_FPS


def _rotation_of(frame, stream) -> int:
    """Clockwise display rotation of a decoded frame (display matrix), else stream 'rotate' tag."""
    try:
        ccw = frame.rotation if frame is not None else 0
    except Exception:  # pragma: no cover
        ccw = 0
    if ccw:
        return snap_rotation(-ccw)
    tag = stream.metadata.get("rotate") if stream is not None else None
    if tag:
        try:
            return snap_rotation(float(tag))
        except ValueError:
            return 0
    return 0




def _first_frame(container, stream, path: str):
    try:
        for frame in container.decode(stream):
            return frame
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"cannot decode video of {path}: {exc}", path=path) from exc
    return None


def _count_packets(path: str) -> int:
    container = open_media(path)
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
    container = open_media(path)
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
        if fps > limits.max_fps:
            raise InvalidParameterError(
                f"{path}: video runs at {float(fps):.2f} fps, over the limit of {limits.max_fps:g} fps", path=path)
        header_duration = declared_duration_s(container, stream)
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


def _set_decode_threads(stream, threads: int) -> None:
    """0: FFmpeg's frame/slice threading with its own thread count; 1: no threads; n: n threads."""
    if threads == 1:
        stream.thread_type = "NONE"
        stream.codec_context.thread_count = 1
    else:
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(0, int(threads))


def _upright(frame, rotation: int, keep_yuv420p: bool) -> np.ndarray:
    if keep_yuv420p and is_bt601_limited_i420(frame):
        return rotate_i420(frame.to_ndarray(), rotation)
    return rotate_upright(yuv_to_bgr(frame), rotation)


def _upright_range(indexed, stream, start: int, stop: int | None,
                   keep_yuv420p: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, frame)`` pairs -> upright frames with ``start <= index < stop``. The rotation is
    read from the first decoded frame (its display matrix), before any are skipped."""
    rotation = None
    for index, frame in indexed:
        if stop is not None and index >= stop:
            return
        if rotation is None:
            rotation = _rotation_of(frame, stream)
        if index >= start:
            yield index, _upright(frame, rotation, keep_yuv420p)


def _decode_sequential(path: str, start: int, stop: int | None, keep_yuv420p: bool,
                       threads: int) -> Iterator[tuple[int, np.ndarray]]:
    container = open_media(path)
    try:
        stream = _video_stream(container, path)
        _set_decode_threads(stream, threads)
        header = _header_size(stream)

        def indexed():
            for index, frame in enumerate(container.decode(stream)):
                _check_frame_size(frame, header, index, path)
                yield index, frame

        yield from _upright_range(indexed(), stream, start, stop, keep_yuv420p)
    except (av.FFmpegError, OSError) as exc:
        raise decode_failure(exc, f"cannot decode video of {path}: {exc}", path) from exc
    finally:
        container.close()


def _stream_first_pts(path: str) -> int | None:
    container = open_media(path)
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


def _decode_after_seek(path: str, start: int, stop: int | None, first_pts: int, backoff_s: float,
                       keep_yuv420p: bool, threads: int) -> Iterator[tuple[int, np.ndarray]]:
    container = open_media(path)
    try:
        stream = _video_stream(container, path)
        _set_decode_threads(stream, threads)
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
        header = _header_size(stream)

        def indexed():
            # The first decoded frame's pts says where the seek landed; the rest count on from it.
            index = None
            for frame in container.decode(stream):
                _check_frame_size(frame, header, index, path)
                if index is None:
                    if frame.pts is None:
                        raise _SeekMissed()
                    index = int(round((frame.pts - first_pts) * tb * fps))
                    if index > start or index < 0:
                        raise _SeekMissed()
                else:
                    index += 1
                yield index, frame
            if index is None:  # the seek landed at or past the end (seen with MPEG-TS): not trustworthy
                raise _SeekMissed()

        yield from _upright_range(indexed(), stream, start, stop, keep_yuv420p)
    except (av.FFmpegError, OSError) as exc:
        raise decode_failure(exc, f"cannot decode video of {path}: {exc}", path) from exc
    finally:
        container.close()


def iter_frames(path, start: int = 0, stop: int | None = None, *, keep_yuv420p: bool = False,
                decode_threads: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for frames ``start <= index < stop``: upright BGR uint8 HxWx3, or,
    with ``keep_yuv420p``, an upright I420 ``(H * 3 // 2, W)`` array for every frame that is 8-bit
    yuv420p BT.601 limited range (tell them apart by ``ndim``: 2 for I420, 3 for BGR).

    Streams (one decoded frame in memory at a time). ``decode_threads``: 0 lets FFmpeg thread the
    decoder (its default count), 1 decodes on the calling thread only (less CPU in total where
    the cores are busy anyway), n uses n threads. For ``start > 0`` it seeks to the key frame at or
    before the target and decodes forward, skipping frames before ``start``; if the seek cannot be
    trusted it falls back to decoding from the beginning.
    """
    path = str(path)
    if int(decode_threads) < 0:
        raise InvalidParameterError(f"decode_threads must be >= 0, got {decode_threads}", path=path)
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
                    yield from _decode_after_seek(path, start, stop, first_pts, backoff_s,
                                                  keep_yuv420p, int(decode_threads))
                    return
                except _SeekMissed:
                    continue
    yield from _decode_sequential(path, start, stop, keep_yuv420p, int(decode_threads))


