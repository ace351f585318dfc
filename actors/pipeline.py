"""In-process renderer: audio + template video -> lip-synced MP4, one stage after the other.

This is what ``lipserve render`` runs, and the reference the distributed path (Serve + Ray actors)
must match frame for frame. Stages, in order:

1. audio    decode to 16 kHz mono, Wav2Lip mel                         (actors/audio.py)
2. avatar   probe template, track the face, cache crops (once/template) (actors/avatar.py)
3. plan     output frame -> template frame + audio window, segments    (actors/plan.py)
4. generate face crops + mel windows -> generated crops                (actors/generators/)
5. write    paste crops into template frames, encode each segment      (actors/segment_writer.py)
6. finalize join segments without re-encoding, mux AAC audio           (actors/writer.py)

Work is streamed one segment at a time, so memory does not grow with the clip length.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from actors.audio import decode_audio, wav2lip_mel
from actors.avatar import AvatarCache, AvatarParams
from actors.generators import make_generator
from actors.limits import MediaLimits
from actors.plan import make_plan
from actors.segment_writer import SegmentWriter
from actors.writer import pick_video_codec

ProgressFn = Callable[[str, float], None]  # (stage, fraction of the whole job done 0..1)


@dataclass
class RenderOptions:
    backend: str = "default"
    checkpoint: str | None = None
    device: str = "cpu"
    mode: str = "pingpong"  # or "loop": how the template covers audio longer than it
    box: tuple[int, int, int, int] | None = None
    detector_model: str | None = None
    segment_frames: int = 50
    prefer_nvenc: bool = False
    crf: int = 18
    cache_dir: str = os.path.join(tempfile.gettempdir(), "lipserve-avatars")
    limits: MediaLimits = field(default_factory=MediaLimits)


@dataclass
class RenderSummary:
    out_path: str
    frames: int
    fps: float
    audio_seconds: float
    template_frames: int
    template_faces_found: int
    frames_without_face: int
    wall_seconds: float
    stage_seconds: dict[str, float]

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


def avatar_params_for(options: RenderOptions, crop_size: int) -> AvatarParams:
    return AvatarParams(crop_size=crop_size, box=options.box, detector_model=options.detector_model)


class LocalRenderer:
    """Runs every stage in this process. The generator is loaded once and reused across renders."""

    def __init__(self, options: RenderOptions | None = None, generator=None):
        self.options = options or RenderOptions()
        self.generator = generator or make_generator(self.options.backend, self.options.checkpoint, self.options.device)
        self.cache = AvatarCache(self.options.cache_dir, self.options.limits)
        self.writer = SegmentWriter(codec=pick_video_codec(self.options.prefer_nvenc), crf=self.options.crf)

    def render(self, audio_path: str, video_path: str, out_path: str, progress: ProgressFn | None = None) -> RenderSummary:
        opts = self.options
        progress = progress or (lambda stage, frac: None)
        stages: dict[str, float] = {}
        t_start = time.perf_counter()

        def timed(stage: str, t0: float) -> None:
            stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - t0

        t0 = time.perf_counter()
        progress("audio", 0.0)
        samples = decode_audio(audio_path, opts.limits)
        mel = wav2lip_mel(samples)
        timed("audio", t0)

        t0 = time.perf_counter()
        progress("avatar", 0.02)
        avatar = self.cache.get_or_build(video_path, avatar_params_for(opts, self.generator.crop_size))
        timed("avatar", t0)

        plan = make_plan(len(samples), avatar, opts.mode, opts.segment_frames)
        crops = avatar.crops()
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix="lipserve-render-", dir=Path(out_path).parent)
        try:
            paths = []
            for seg in plan.segments:
                t0 = time.perf_counter()
                faces, mels = plan.generator_inputs(seg, crops, mel)
                generated = self.generator.generate(faces, mels) if len(faces) else faces
                timed("generate", t0)
                t0 = time.perf_counter()
                path = os.path.join(work_dir, seg.file_name)
                self.writer.write_segment(avatar, plan.segment_sources(seg),
                                          plan.face_present[seg.start:seg.stop], generated, path)
                timed("write", t0)
                paths.append(path)
                progress("write", 0.05 + 0.9 * seg.stop / plan.n_out)
            t0 = time.perf_counter()
            progress("finalize", 0.95)
            self.writer.finalize(paths, audio_path, out_path, plan.fps)
            timed("finalize", t0)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        progress("done", 1.0)
        return RenderSummary(
            out_path=str(out_path),
            frames=plan.n_out,
            fps=float(plan.fps),
            audio_seconds=len(samples) / 16000,
            template_frames=avatar.n_frames,
            template_faces_found=avatar.faces_found,
            frames_without_face=int(plan.n_out - plan.face_present.sum()),
            wall_seconds=time.perf_counter() - t_start,
            stage_seconds=stages,
        )
