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

from actors.audio import mel_windows, num_output_frames
from actors.avatar import Avatar
from actors.template import source_index_map


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

    def generator_inputs(self, seg: Segment, avatar_crops: np.ndarray, mel: np.ndarray):
        """(faces uint8[k,S,S,3], mels float32[k,80,16]) for the k frames of ``seg`` that have a face."""
        present = self.face_present[seg.start:seg.stop]
        frames = np.arange(seg.start, seg.stop)[present]
        faces = np.ascontiguousarray(avatar_crops[self.source_index[frames]])
        return faces, mel_windows(mel, self.fps, frames)


def make_plan(n_audio_samples: int, avatar: Avatar, mode: str = "pingpong", segment_frames: int = 50) -> RenderPlan:
    fps = avatar.info.fps
    n_out = num_output_frames(n_audio_samples, fps)
    source = source_index_map(n_out, avatar.n_frames, mode)
    present = avatar.present()[source]
    segment_frames = max(1, int(segment_frames))
    segments = [Segment(i, s, min(n_out, s + segment_frames)) for i, s in enumerate(range(0, n_out, segment_frames))]
    return RenderPlan(fps=fps, n_out=n_out, source_index=source, face_present=present, segments=segments)
