"""Segment writer: template frames + generated face crops -> one encoded, independent segment.

This is the core of ``WriterActor``. It decodes the template frames a segment needs itself (full
frames never travel between processes: only the small generated crops do), pastes the crops back
with the avatar's crop geometry (the backend's own blend mask), and encodes a closed-GOP H.264
segment. Writing the same segment twice produces the same file, atomically replaced, so a retried
call is harmless.

Paste in YUV (``yuv_paste``, the default): template frames that are 8-bit yuv420p BT.601 limited
range - the segments' own format - are decoded to I420 planes and never converted as a whole. Only
the rectangle the paste can touch (``CropGeometry.paste_region``, grown to even coordinates so it
covers whole chroma blocks) is converted to BGR, pasted (``paste(..., window=...)``), converted back
with the encoder's maths and written into the planes, which go to the encoder as they are. Every
other pixel keeps the template's decoded samples exactly (the BGR path's yuv -> bgr -> yuv round
trip moved them by up to a level); the pasted pixels are those of the BGR path (see
``actors/media/i420.py`` for why a sub-rectangle converts like the whole frame). Other templates
(full range, BT.709, 4:4:4, 10-bit, odd sizes) take the BGR path, frame by frame.

``stop`` (``actors/stop_token.py``; anything with ``check(stage)``) is checked before every frame
decoded or encoded: a stopped attempt's call ends within one frame with ``CancelledError`` and
leaves no file (the atomic write removes its temp file).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from fractions import Fraction
from typing import Iterator, Protocol

import numpy as np

from actors.avatar import Avatar
from actors.errors import InvalidParameterError
from actors.media.audio_track import write_audio_track
from actors.media.encode import encode_segment
from actors.media.frame_cursor import FrameCursor
from actors.media.i420 import even_rect, frame_size, region_to_bgr, write_region
from actors.media.join import join_segments


class Stop(Protocol):
    def check(self, stage: str) -> None: ...  # raises CancelledError once the attempt is stopped


class _NeverStop:
    def check(self, stage: str) -> None:
        return None


NEVER = _NeverStop()
_STAGE = "write"


def _contiguous_blocks(indices: np.ndarray) -> list[tuple[int, int]]:
    """Sorted distinct indices -> [(start, stop)) runs of consecutive values."""
    uniq = np.unique(indices)
    if uniq.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(uniq) > 1)
    starts = np.concatenate([[uniq[0]], uniq[breaks + 1]])
    ends = np.concatenate([uniq[breaks], [uniq[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def even_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p needs even dimensions: drop a trailing odd row/column."""
    return width - width % 2, height - height % 2


# x264 settings of the segments: "ultrafast" plus sub-pel motion estimation (subme=1, which halves
# ultrafast's bytes) and the deblocking filter. On the 576x768 presenter clip at CRF 18 it measured
# ~25 % less encode CPU than "superfast" (~2.5 vs ~3.4 ms per frame), 0.95x the bytes, a higher PSNR
# against the encoder's input (48.1 vs 47.4 dB) and the same SSIM (0.9921); on the 480x480 demo clip
# 1.09x the bytes, +0.75 dB PSNR, -0.0004 SSIM (bench/bench_writer.py --x264). "superfast" had
# replaced "veryfast" for 40 % less CPU (bench/README.md). Paste + encode run beside the generator
# on the same cores, so their CPU time is what limits the pipeline on a CPU machine.
DEFAULT_PRESET = "ultrafast"
DEFAULT_X264_PARAMS = "subme=1:deblock=0,0"


def paste_i420(geometry, frame: np.ndarray, box, generated: np.ndarray, *, color_match: bool,
               mask: np.ndarray | None, inplace: bool) -> np.ndarray:
    """``geometry.paste`` into an I420 frame, converting only the rectangle the paste touches."""
    w, h = frame_size(frame)
    x1, y1, x2, y2 = even_rect(geometry.paste_region(box, w, h), w, h)
    if x2 <= x1 or y2 <= y1:  # the paste changes nothing
        return frame
    part = geometry.paste(region_to_bgr(frame, (x1, y1, x2, y2)), box, generated, color_match=color_match,
                          mask=mask, inplace=True, window=(x1, y1, w, h))
    out = frame if inplace else frame.copy()
    write_region(out, (x1, y1, x2, y2), part)
    return out


def writer_threads(cpus: float) -> int:
    """Decoder and x264 threads for a writer that owns ``cpus`` CPUs: one thread each below two CPUs.
    Measured on the 2-core box with the generator busy: x264 on one thread spends 2.55 ms of CPU per
    576x768 frame against 2.8 ms with its automatic threads (frame threading has its own cost), and
    a writer beside a CPU generator has no idle core to gain wall time from more threads."""
    return max(1, int(cpus)) if cpus < 2 else 0


class SegmentWriter:
    """``decode_threads`` / ``encode_threads``: the template decoder's and x264's threads (0: their
    automatic count; 1: the writer's own thread only; :func:`writer_threads` sizes them). ``yuv_paste``: paste in YUV (see the module docstring); False keeps
    every frame on the BGR path. ``x264_params``: extra x264 options on top of ``preset`` (None: ``DEFAULT_X264_PARAMS``
    with the default preset, none with another)."""

    def __init__(self, codec: str = "libx264", crf: int = 18, preset: str = DEFAULT_PRESET, color_match: bool = True,
                 decode_threads: int = 0, yuv_paste: bool = True, x264_params: str | None = None,
                 encode_threads: int = 0):
        if int(decode_threads) < 0 or int(encode_threads) < 0:
            raise InvalidParameterError(f"decode_threads and encode_threads must be >= 0, got "
                                        f"{decode_threads}, {encode_threads}")
        self.encode_threads = int(encode_threads)
        self.codec = codec
        self.crf = crf
        self.preset = preset
        # The default params belong to the default preset: another preset gets none unless asked.
        self.x264_params = (DEFAULT_X264_PARAMS if preset == DEFAULT_PRESET else "") if x264_params is None else x264_params
        self.color_match = color_match
        # One open decoder, continued from segment to segment (see actors/media/frame_cursor.py).
        self.yuv_paste = yuv_paste
        self._cursor = FrameCursor(keep_yuv420p=yuv_paste, decode_threads=int(decode_threads))
        self._cursor_lock = threading.Lock()

    def _template_frames(self, avatar: Avatar, sources: np.ndarray, stop: Stop) -> dict[int, np.ndarray]:
        # A segment needs at most len(sources) distinct template frames (ping-pong and loop revisit
        # them), so memory is bounded by the segment length, never by the clip length.
        needed = set(sources.tolist())
        frames: dict[int, np.ndarray] = {}
        cached = avatar.frames_i420() if self.yuv_paste else None
        if cached is not None:  # decoded once, at avatar build: copy out (the paste writes into them)
            for i in sorted(needed):
                stop.check(_STAGE)
                frames[i] = np.array(cached[i])
            return frames
        with self._cursor_lock:
            for start, stop_at in _contiguous_blocks(sources):
                for i, frame in self._cursor.frames(avatar.info.path, start, stop_at):
                    stop.check(_STAGE)
                    if i in needed:
                        frames[i] = frame
        missing = needed - frames.keys()
        if missing:
            raise InvalidParameterError(
                f"template decoded fewer frames than announced (missing {sorted(missing)[:5]})",
                path=str(avatar.info.path),
            )
        return frames

    def _composited(self, avatar: Avatar, sources: np.ndarray, present: np.ndarray,
                    generated: np.ndarray, stop: Stop) -> Iterator[np.ndarray]:
        frames = self._template_frames(avatar, sources, stop)
        uses_left = Counter(sources.tolist())
        boxes = avatar.boxes()
        masks = avatar.paste_masks()  # None unless the geometry's masks depend on the frame
        w, h = even_size(avatar.info.width, avatar.info.height)
        k = 0
        for src, has_face in zip(sources.tolist(), present.tolist()):
            stop.check(_STAGE)
            frame = frames[src]
            uses_left[src] -= 1
            if has_face:
                # The decoded frame is ours: paste into it unless a later frame of this segment
                # shows the same template frame again (ping-pong / loop turns).
                kw = dict(color_match=self.color_match, mask=None if masks is None else masks[src],
                          inplace=uses_left[src] == 0)
                if frame.ndim == 2:
                    frame = paste_i420(avatar.geometry, frame, boxes[src], generated[k], **kw)
                else:
                    frame = avatar.geometry.paste(frame, boxes[src], generated[k], **kw)
                k += 1
            # I420 frames have even sizes (odd ones take the BGR path): they fit as they are.
            yield frame if frame.ndim == 2 or frame.shape[:2] == (h, w) else np.ascontiguousarray(frame[:h, :w])

    def write_segment(self, avatar: Avatar, sources: np.ndarray, present: np.ndarray,
                      generated: np.ndarray, out_path: str | os.PathLike, stop: Stop = NEVER) -> int:
        """Encode one segment. ``generated`` holds one crop per True in ``present``, in order."""
        sources = np.asarray(sources)
        present = np.asarray(present, bool)
        if int(present.sum()) != len(generated):
            raise InvalidParameterError(
                f"segment {os.fspath(out_path)}: {int(present.sum())} frames with a face but {len(generated)} generated crops"
            )
        w, h = even_size(avatar.info.width, avatar.info.height)
        stop.check(_STAGE)
        return encode_segment(self._composited(avatar, sources, present, generated, stop), out_path,
                              avatar.info.fps, w, h, codec=self.codec, crf=self.crf, preset=self.preset,
                              x264_params=self.x264_params, threads=self.encode_threads)

    def encode_audio_track(self, audio_path: str, track_path: str | os.PathLike, stop: Stop = NEVER) -> str:
        """The job's AAC track (``actors/media/audio_track.py``); kept if an earlier attempt wrote it."""
        stop.check("finalize")  # about 9 ms per second of audio: checked once, before it starts
        return write_audio_track(audio_path, track_path)

    def finalize(self, segment_paths: list[str], audio_track: str, out_path: str, fps: Fraction,
                 stop: Stop = NEVER) -> None:
        """Join the segments and the job's AAC track, both without re-encoding."""
        stop.check("finalize")  # a stream copy: short, so checked once, before it starts
        join_segments(segment_paths, audio_track, out_path, fps, copy_audio=True)
