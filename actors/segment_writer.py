"""Segment writer: template frames + generated face crops -> one encoded, independent segment.

This is the core of ``WriterActor``. It decodes the template frames a segment needs itself (full
frames never travel between processes: only the small generated crops do), pastes the crops back
with the avatar's crop geometry (the backend's own blend mask), and encodes a closed-GOP H.264
segment. Writing the same segment twice produces the same file, atomically replaced, so a retried
call is harmless.

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
from actors.media.encode import encode_segment
from actors.media.frame_cursor import FrameCursor
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


# x264 preset of the segments. "superfast" measured 40 % less CPU per 576x768 frame than
# "veryfast" at CRF 18 with a higher PSNR against the source (48.3 vs 47.3 dB) and about 1.8x the
# bytes (~1.7 Mbit/s at 576x768 25 fps); see bench/README.md. Paste + encode run beside the
# generator on the same cores, so their CPU time is what limits the pipeline on a CPU machine.
DEFAULT_PRESET = "superfast"


class SegmentWriter:
    def __init__(self, codec: str = "libx264", crf: int = 18, preset: str = DEFAULT_PRESET, color_match: bool = True):
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.color_match = color_match
        # One open decoder, continued from segment to segment (see actors/media/frame_cursor.py).
        self._cursor = FrameCursor()
        self._cursor_lock = threading.Lock()

    def _template_frames(self, avatar: Avatar, sources: np.ndarray, stop: Stop) -> dict[int, np.ndarray]:
        # A segment needs at most len(sources) distinct template frames (ping-pong and loop revisit
        # them), so memory is bounded by the segment length, never by the clip length.
        needed = set(sources.tolist())
        frames: dict[int, np.ndarray] = {}
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
                frame = avatar.geometry.paste(frame, boxes[src], generated[k], color_match=self.color_match,
                                              mask=None if masks is None else masks[src],
                                              inplace=uses_left[src] == 0)
                k += 1
            yield frame if frame.shape[:2] == (h, w) else np.ascontiguousarray(frame[:h, :w])

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
                              avatar.info.fps, w, h, codec=self.codec, crf=self.crf, preset=self.preset)

    def finalize(self, segment_paths: list[str], audio_path: str, out_path: str, fps: Fraction,
                 stop: Stop = NEVER) -> None:
        """Join the segments without re-encoding and mux AAC from the original audio."""
        stop.check("finalize")  # a stream copy: short, so checked once, before it starts
        join_segments(segment_paths, audio_path, out_path, fps)
