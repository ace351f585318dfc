"""A decoder kept open between segments, so consecutive segments never decode a frame twice.

A segment needs template frames ``[start, stop)``. Opening the template for each segment means
seeking to the key frame at or before ``start`` and decoding forward from there: with a typical
template (x264's default GOP is 250 frames, longer than most templates) every segment decodes the
template again from frame 0, so a 10 s job decoded 750 frames for 250 used. The cursor keeps the
decoder where the last request stopped and continues from there when the next request starts at or
shortly after that point (the normal order of a job's segments), and reopens (seeking) otherwise.

Not thread-safe: one cursor per writer, used under its lock. ``keep_yuv420p`` and
``decode_threads`` are passed to ``iter_frames`` (``actors/media/template.py``).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from actors.media.template import iter_frames

# Decode through a gap of at most this many frames instead of reopening: a reopen seeks to the
# previous key frame, which for most templates is further back than this.
MAX_SKIP_FRAMES = 100


class FrameCursor:
    def __init__(self, keep_yuv420p: bool = False, decode_threads: int = 0):
        self.keep_yuv420p = keep_yuv420p
        self.decode_threads = decode_threads
        self._path: str | None = None
        self._it: Iterator[tuple[int, np.ndarray]] | None = None
        self._next = 0  # index of the frame the open decoder yields next
        self.frames_decoded = 0  # decoded in total (for the benches: equals frames used when in order)

    def _open(self, path: str, start: int) -> None:
        self.close()
        self._path, self._next = path, start
        self._it = iter_frames(path, start=start, keep_yuv420p=self.keep_yuv420p,
                               decode_threads=self.decode_threads)

    def frames(self, path: str, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` for ``start <= index < stop`` (fewer if the stream ends early).
        Consume the iterator fully before the next call."""
        path = str(path)
        if path != self._path or self._it is None or not (self._next <= start <= self._next + MAX_SKIP_FRAMES):
            self._open(path, start)
        while self._next < stop:
            try:
                index, frame = next(self._it)
            except StopIteration:
                self.close()
                return
            except BaseException:
                self.close()
                raise
            self.frames_decoded += 1
            self._next = index + 1
            if index >= start:
                yield index, frame

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # runs the decoder's finally: closes the container
        self._it, self._path = None, None
