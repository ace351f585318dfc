"""The driver's stages (``actors/driver.py``) on a pipeline replica's Ray actors.

Only face crops, per-frame features and object refs move through the replica: the audio samples go
from a writer to the generator as an object ref, generated crops from the generator straight to a
writer, and full frames never leave the writer that decodes and encodes them.

In-flight actor calls are never ``ray.cancel``-ed: cancelling a queued actor call leaves a gap in
the actor's per-caller ordering that stalls every later call to that actor (health checks included)
for Ray's reorder wait (~30 s per gap). The driver lets them settle instead, and stops them with the
attempt's ``StopToken`` (``actors/stop_token.py``, passed with every writer call): a writer call
of a dead attempt ends at its next frame, also one that Ray re-sends after ``restart_stuck``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from fractions import Fraction

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.avatar import Avatar, AvatarParams
from actors.driver import FaceSource, InFlight, SegmentDone
from actors.errors import LipserveError, WorkerLostError, as_lipserve_error
from actors.plan import RenderPlan, Segment
from actors.stop_token import StopToken
from serve_app.ray_actors import PipelineActors


def unwrap_ray_error(exc: BaseException, stage: str) -> LipserveError:
    """Ray exception -> our taxonomy, by type (never by message text)."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            return unwrap_ray_error(cause, stage)
    if isinstance(exc, RayActorError):
        return WorkerLostError(f"worker process lost during {stage}: {type(exc).__name__}", stage=stage)
    return as_lipserve_error(exc, stage=stage)


class RayStages:
    """The stages of one backend's jobs: its generator actor (``backend``, None = the default) and
    the replica's shared writer pool."""

    def __init__(self, actors: PipelineActors, backend: str | None = None):
        self.actors = actors
        self.backend = actors.backend(backend)
        self.generator = actors.generators[self.backend]
        self.generator_name = "GeneratorActor" if len(actors.generators) == 1 else f"GeneratorActor[{self.backend}]"
        self._turn = itertools.count(1)  # round-robin over the writer pool

    def _writer_index(self) -> int:
        return next(self._turn) % len(self.actors.writers)

    def _writer(self):
        return self.actors.writers[self._writer_index()]

    async def decode_audio(self, audio_path: str):
        n_ref, samples_ref = self._writer().decode_audio.options(num_returns=2).remote(audio_path)
        return await n_ref, samples_ref

    async def sample_count(self, samples) -> int:
        return samples[0]

    def prepare_avatar(self, video_path: str, params: AvatarParams, stop: StopToken | None = None):
        return self._writer().prepare_avatar.remote(video_path, params, stop)

    def prepare_latents(self, avatar: Avatar):
        return self.generator.prepare_latents.remote(avatar)

    def prepare_features(self, samples, fps: Fraction, n_frames: int):
        return self.generator.prepare_audio.remote(samples[1], fps, n_frames)

    def submit_segment(self, plan: RenderPlan, seg: Segment, source: FaceSource, features: np.ndarray,
                       avatar: Avatar, path: str, stop: StopToken | None = None):
        faces, feats = plan.generator_inputs(seg, source.rows, features)
        generated = self.generator.generate.remote(faces, feats, source.latents)
        w = self._writer_index()
        ref = self.actors.writers[w].write_segment.remote(
            avatar, plan.segment_sources(seg), plan.face_present[seg.start:seg.stop], generated, path, stop)

        async def done() -> SegmentDone:
            n, writer_pid, generator_pid = await ref
            return SegmentDone(frames=n, workers={self.generator_name: generator_pid,
                                                  f"WriterActor[{w}]": writer_pid})

        return done(), InFlight(segment=seg, path=path, submitted_at=time.perf_counter(), writer=w, generated=generated)

    def encode_audio_track(self, audio_path: str, track_path: str, stop: StopToken | None = None):
        return self._writer().encode_audio_track.remote(audio_path, track_path, stop)

    def finalize(self, paths: list[str], audio_track: str, out_path: str, fps: Fraction,
                 stop: StopToken | None = None):
        return self._writer().finalize.remote(paths, audio_track, out_path, fps, stop)

    async def workers(self) -> dict[str, int]:
        info, *wpids = await asyncio.gather(self.generator.info.remote(),
                                            *[w.ping.remote() for w in self.actors.writers])
        pids = {self.generator_name: info["pid"]}
        pids.update({f"WriterActor[{i}]": pid for i, pid in enumerate(wpids)})
        return pids

    def restart_stuck(self, pending: list[InFlight]) -> str:
        """Find which stage is wedged and kill that actor (Ray restarts it): a wedged actor would
        stall every job on this replica. Generated crops not ready -> the generator; else the
        writers holding the pending segments."""
        generated = [p.generated for p in pending if p.generated is not None]
        _, not_ready = ray.wait(generated, num_returns=len(generated), timeout=0, fetch_local=False)
        if not_ready:
            ray.kill(self.generator, no_restart=False)
            return self.generator_name
        stuck = sorted({p.writer for p in pending})
        for w in stuck:
            ray.kill(self.actors.writers[w], no_restart=False)
        return ", ".join(f"WriterActor[{w}]" for w in stuck)

    def classify(self, exc: BaseException, stage: str) -> LipserveError:
        return unwrap_ray_error(exc, stage)
