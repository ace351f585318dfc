"""A job's render plan: which template frame and which audio window each output frame uses, cut
into independent segments.

The plan is pure arithmetic over the audio length and the prepared avatar, so the in-process
renderer (CLI) and the distributed one (Serve + Ray actors) cut the same job identically: a segment
id always means the same output frames, which is what makes segment retries idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from actors.media.audio import num_output_frames
from actors.avatar import Avatar
from actors.errors import InvalidParameterError


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # first output frame (inclusive)
    stop: int  # last output frame (exclusive)

    @property
    def n_frames(self) -> int:
        return self.stop - self.start

    @property
    def file_name(self) -> str:
        return f"segment_{self.index:05d}.mp4"


@dataclass
class RenderPlan:
    fps: Fraction
    n_out: int
    source_index: np.ndarray  # int64[n_out]: template frame for each output frame
    face_present: np.ndarray  # bool[n_out]: whether that template frame has a face
    segments: list[Segment]

    def segment_sources(self, seg: Segment) -> np.ndarray:
        return self.source_index[seg.start:seg.stop]

    def generator_inputs(self, seg: Segment, avatar_rows: np.ndarray, features: np.ndarray):
        """(faces[k,...], features[k,...]) for the k frames of ``seg`` that have a face;
        ``avatar_rows`` has one row per template frame (its crops ``uint8[n,S,S,3]``, or its cached
        latents); ``features`` is the generator's ``prepare_audio`` output (one row per output frame)."""
        present = self.face_present[seg.start:seg.stop]
        frames = np.arange(seg.start, seg.stop)[present]
        faces = np.ascontiguousarray(avatar_rows[self.source_index[frames]])
        return faces, np.ascontiguousarray(features[frames])


def make_plan(n_audio_samples: int, avatar: Avatar, mode: str = "pingpong", segment_frames: int = 50) -> RenderPlan:
    fps = avatar.info.fps
    n_out = num_output_frames(n_audio_samples, fps)
    source = source_index_map(n_out, avatar.n_frames, mode)
    present = avatar.present()[source]
    segments = [Segment(i, a, b) for i, (a, b) in enumerate(segment_bounds(n_out, segment_frames))]
    return RenderPlan(fps=fps, n_out=n_out, source_index=source, face_present=present, segments=segments)


# The last segment's paste + encode is the one step nothing overlaps with (every earlier one runs
# while the next segment is generated), so the plan ends with shorter segments: the job's last
# ``segment_frames`` frames are cut in halves down to about an eighth of a segment. A 10 s job at
# 50-frame segments ends 25, 13, 12 instead of 50: its un-overlapped tail is 12 frames, not 50.
TAPER_MIN_DIVISOR = 8


def segment_bounds(n_out: int, segment_frames: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each segment: ``segment_frames`` long, the last full one cut in halves
    while a half stays at least ``segment_frames / TAPER_MIN_DIVISOR`` (and 4) frames."""
    size = max(1, int(segment_frames))
    bounds = [(a, min(n_out, a + size)) for a in range(0, n_out, size)]
    if not bounds:
        return bounds
    start, stop = bounds.pop()
    least = max(4, -(-size // TAPER_MIN_DIVISOR))
    while stop - start >= 2 * least:
        half = -(-(stop - start) // 2)
        bounds.append((start, start + half))
        start += half
    bounds.append((start, stop))
    return bounds


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

