"""In-process renderer: audio + template video -> lip-synced MP4 (what ``lipserve render`` runs).

The job's path is the segment driver's (``actors/driver.py``), the same loop the service runs over
Ray actors, with the stages in this process (``actors/local_stages.py``). It is the reference the
distributed path must match frame for frame. Work is streamed a few segments at a time, so memory
does not grow with the clip length.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from actors.avatar import AvatarCache, AvatarParams
from actors.crop_geometry import CropGeometry
from actors.driver import DriveEvents, DrivePolicy, RenderRequest, SegmentDriver
from actors.generators import make_generator
from actors.limits import MediaLimits
from actors.local_stages import LocalStages
from actors.media.encode import pick_video_codec
from actors.segment_writer import SegmentWriter

ProgressFn = Callable[[str, float], None]  # (stage, fraction of the whole job done 0..1)


@dataclass
class RenderOptions:
    backend: str = "default"
    checkpoint: str | None = None  # Wav2Lip weights file, or MuseTalk's models directory
    device: str = "cpu"
    batch_size: int = 32  # generator frames per forward pass
    threads: int | None = None  # generator CPU threads; None = the runtime's default (every core)
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (MuseTalk), bf16 (Wav2Lip on OpenVINO)
    engine: str = "auto"  # Wav2Lip .onnx: auto (OpenVINO on CPU when installed), onnxruntime, openvino
    mode: str = "pingpong"  # or "loop": how the template covers audio longer than it
    box: tuple[int, int, int, int] | None = None
    detector_model: str | None = None
    max_gap_s: float = 1.0  # face-tracking gaps up to this long get interpolated / held boxes
    segment_frames: int = 50
    max_inflight: int = 2  # segments in flight: generation of one overlaps encoding of another
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
    first_playable_s: float | None = None  # with hls_dir: render start -> first live HLS segment listed

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0


def avatar_params_for(options: RenderOptions, geometry: CropGeometry) -> AvatarParams:
    """The avatar parameters of a render with a generator that declares ``geometry``."""
    return AvatarParams(crop_size=geometry.crop_size, box=options.box, detector_model=options.detector_model,
                        max_gap_s=options.max_gap_s, geometry=geometry)


class LocalRenderer:
    """Runs every stage in this process. The generator is loaded once and reused across renders."""

    def __init__(self, options: RenderOptions | None = None, generator=None):
        self.options = options or RenderOptions()
        o = self.options
        self.generator = generator or make_generator(o.backend, o.checkpoint, o.device, o.batch_size, o.precision,
                                                     threads=o.threads, engine=o.engine)
        if hasattr(self.generator, "warm_up"):  # cheap for the backends that have it (Wav2Lip)
            self.generator.warm_up()
        self.cache = AvatarCache(self.options.cache_dir, self.options.limits)
        # The writer shares this process's cores with the generator: with a CPU generator it runs
        # one decoder and one x264 thread (the least CPU per frame), else FFmpeg's automatic counts.
        threads = 1 if str(getattr(self.generator, "device", "cpu")).startswith("cpu") else 0
        self.writer = SegmentWriter(codec=pick_video_codec(self.options.prefer_nvenc), crf=self.options.crf,
                                    decode_threads=threads, encode_threads=threads)

    def render(self, audio_path: str, video_path: str, out_path: str, progress: ProgressFn | None = None,
               hls_dir: str | None = None) -> RenderSummary:
        return asyncio.run(self.render_async(audio_path, video_path, out_path, progress, hls_dir))

    async def render_async(self, audio_path: str, video_path: str, out_path: str,
                           progress: ProgressFn | None = None, hls_dir: str | None = None) -> RenderSummary:
        """``hls_dir``: also publish the live HLS stream there while rendering (actors/live_hls.py)."""
        opts = self.options
        t_start = time.perf_counter()
        stages = LocalStages(self.generator, self.cache, self.writer, opts.limits)
        events = _Events(progress)
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix="lipserve-render-", dir=Path(out_path).parent)
        try:
            driver = SegmentDriver(stages, DrivePolicy(max_inflight=opts.max_inflight, prepare_timeout_s=None), events)
            result = await driver.render(RenderRequest(
                audio_path=str(audio_path), video_path=str(video_path), out_path=str(out_path), work_dir=work_dir,
                mode=opts.mode, avatar=avatar_params_for(opts, self.generator.crop_geometry),
                segment_frames=opts.segment_frames, hls_dir=str(hls_dir) if hls_dir else None))
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        if progress:
            progress("done", 1.0)
        plan = result.plan
        stage_seconds = {k: v for k, v in events.stage_seconds.items() if k != "generate_write"}
        stage_seconds.update(stages.stage_seconds)
        return RenderSummary(
            out_path=str(out_path),
            frames=plan.n_out,
            fps=float(plan.fps),
            audio_seconds=result.n_samples / 16000,
            template_frames=result.avatar.n_frames,
            template_faces_found=result.avatar.faces_found,
            frames_without_face=int(plan.n_out - plan.face_present.sum()),
            wall_seconds=time.perf_counter() - t_start,
            stage_seconds=stage_seconds,
            first_playable_s=result.first_playable_s,
        )


class _Events(DriveEvents):
    """Driver events -> the CLI's progress callback and the per-stage wall times of the summary."""

    def __init__(self, progress: ProgressFn | None):
        self._progress = progress
        self._last = 0.0
        self.stage_seconds: dict[str, float] = {}

    def progress(self, stage: str, fraction: float | None) -> None:
        if fraction is not None:
            self._last = fraction
        if self._progress:
            self._progress(stage, self._last)

    def timing(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
