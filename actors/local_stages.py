"""The pipeline's stages run in this process, for ``lipserve render`` and the benches.

Each call runs in a worker thread, so the driver overlaps them as it does on Ray actors: while one
segment is being pasted and encoded, the next one is generated (the generator releases the GIL in
torch / onnxruntime, the encoder in FFmpeg). The generator runs one batch at a time (a lock): two
forward passes at once would only compete for the same cores.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from fractions import Fraction

import numpy as np

from actors.avatar import Avatar, AvatarCache, AvatarParams
from actors.avatar_latents import ensure_latents
from actors.driver import FaceSource, InFlight, SegmentDone
from actors.errors import LipserveError, as_lipserve_error
from actors.limits import MediaLimits
from actors.media.audio import decode_audio
from actors.plan import RenderPlan, Segment
from actors.segment_writer import NEVER, SegmentWriter
from actors.stop_token import StopToken

_WORKERS = {"generator": os.getpid(), "writer": os.getpid()}


class LocalStages:
    def __init__(self, generator, cache: AvatarCache, writer: SegmentWriter, limits: MediaLimits):
        self.generator = generator
        self.cache = cache
        self.writer = writer
        self.limits = limits
        self._generate_lock = threading.Lock()
        self.stage_seconds: dict[str, float] = {}  # generate / write split, for the summary

    def _timed(self, stage: str, t0: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - t0

    async def decode_audio(self, audio_path: str) -> np.ndarray:
        return await asyncio.to_thread(decode_audio, audio_path, self.limits)

    async def sample_count(self, samples: np.ndarray) -> int:
        return len(samples)

    async def prepare_avatar(self, video_path: str, params: AvatarParams, stop: StopToken | None = None) -> Avatar:
        if stop is not None:
            stop.check("avatar")
        return await asyncio.to_thread(self.cache.get_or_build, video_path, params)

    async def prepare_latents(self, avatar: Avatar) -> str | None:
        return await asyncio.to_thread(self._locked, ensure_latents, self.generator, avatar)

    def _locked(self, fn, *args):
        with self._generate_lock:
            return fn(*args)

    async def prepare_features(self, samples: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        return await asyncio.to_thread(self.generator.prepare_audio, samples, fps, n_frames)

    def _segment(self, plan: RenderPlan, seg: Segment, source: FaceSource, features, avatar: Avatar, path: str,
                 stop: StopToken | None) -> SegmentDone:
        t0 = time.perf_counter()
        faces, feats = plan.generator_inputs(seg, source.rows, features)
        with self._generate_lock:
            if not len(faces):
                generated = np.zeros((0, 1, 1, 3), np.uint8)
            elif source.latents:
                generated = self.generator.generate_from_latents(faces, feats)
            else:
                generated = self.generator.generate(faces, feats)
        self._timed("generate", t0)
        t0 = time.perf_counter()
        n = self.writer.write_segment(avatar, plan.segment_sources(seg), plan.face_present[seg.start:seg.stop],
                                      generated, path, stop=stop or NEVER)
        self._timed("write", t0)
        return SegmentDone(frames=n, workers=dict(_WORKERS))

    def submit_segment(self, plan, seg, faces, features, avatar, path, stop: StopToken | None = None):
        aw = asyncio.to_thread(self._segment, plan, seg, faces, features, avatar, path, stop)
        return aw, InFlight(segment=seg, path=path, submitted_at=time.perf_counter(), writer=0)

    async def encode_audio_track(self, audio_path: str, track_path: str, stop: StopToken | None = None) -> str:
        return await asyncio.to_thread(self.writer.encode_audio_track, audio_path, track_path, stop or NEVER)

    async def finalize(self, paths: list[str], audio_track: str, out_path: str, fps: Fraction,
                       stop: StopToken | None = None) -> None:
        await asyncio.to_thread(self.writer.finalize, paths, audio_track, out_path, fps, stop or NEVER)

    async def workers(self) -> dict[str, int]:
        return dict(_WORKERS)

    def restart_stuck(self, pending: list[InFlight]) -> str:
        return "nothing (in-process stages cannot be restarted)"

    def classify(self, exc: BaseException, stage: str) -> LipserveError:
        return as_lipserve_error(exc, stage=stage)
