"""The segment driver: the path of one job, top to bottom, for every way lipserve runs it.

    1. audio     decode the track to 16 kHz mono                         (Stages.decode_audio)
    2. avatar    probe the template, track the face, crop (cached)       (Stages.prepare_avatar)
       latents   the generator's per-frame face latents, if it has any
                 (cached in the avatar, once per template and model)     (Stages.prepare_latents)
    3. plan      output frame -> template frame, segments                (actors/plan.py)
    4. features  the generator's own audio front-end, once on the track  (Stages.prepare_features)
    5. segments  crops (or latents) + features -> generate -> paste + encode, at most
                 ``max_inflight`` segments in flight (backpressure)       (Stages.submit_segment)
       track     beside them: the AAC track, encoded once                (Stages.encode_audio_track)
    6. finalize  join the segments and the track without re-encoding    (Stages.finalize)

With ``RenderRequest.hls_dir``, finished segments are also published in order as a live HLS stream
(``actors/live_hls.py``) while the job runs; the final MP4 is the same stream-copy join either way.

``LocalStages`` (``actors/local_stages.py``) runs the stages in this process (``lipserve render``);
the service runs them on Ray actors (``serve_app/ray_stages.py``). Both go through this one loop, so
backpressure, stuck detection, resubmission and restart bookkeeping exist once.

Recovery policy (all here, none of it Ray-specific):
- a segment whose worker was lost (``Stages.classify`` says ``WorkerLostError``) is resubmitted, up
  to ``max_resubmits`` times: writes are idempotent, segment files are replaced atomically;
- a worker whose pid changed between results was restarted under us: recorded as an incident;
- no segment finishing for ``stuck_factor`` x the measured time of one segment (at least
  ``min_stuck_s``) is a ``StageTimeoutError``: the stage that holds the pending work is restarted;
- segment files that already exist (an earlier attempt committed them) are reused;
- cancellation stops submitting and lets the few in-flight calls settle, so nothing writes into
  the job's directory after it is cleaned up;
- an attempt that ends early (timeout, cancel, takeover, any error) sets its ``StopToken``
  (``actors/stop_token.py``) before settling: writer calls still running or re-sent for it stop
  within one frame instead of finishing work nobody will use.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from actors.avatar import Avatar, AvatarParams
from actors.errors import CancelledError, LipserveError, StageTimeoutError, WorkerLostError
from actors.live_hls import INCIDENT as HLS_INCIDENT, LiveHls
from actors.media.audio_track import AUDIO_TRACK_NAME
from actors.plan import RenderPlan, Segment, make_plan
from actors.stop_token import StopToken


@dataclass(frozen=True)
class DrivePolicy:
    max_inflight: int = 4  # segments in flight per job
    stuck_factor: float = 10.0
    min_stuck_s: float = 30.0
    max_resubmits: int = 3  # per segment, after a lost worker
    prepare_timeout_s: float | None = 600.0  # audio, avatar, features, finalize
    settle_timeout_s: float = 30.0  # how long a cancelled job waits for its in-flight calls

    def stuck_after(self, expected_s: float | None) -> float:
        """Seconds without a finished segment that mean the pipeline is wedged."""
        return max(self.min_stuck_s, self.stuck_factor * (expected_s or self.min_stuck_s))


@dataclass(frozen=True)
class RenderRequest:
    audio_path: str
    video_path: str
    out_path: str
    work_dir: str  # where segment files go (kept across attempts of one job)
    mode: str = "pingpong"  # or "loop": how the template covers audio longer than it
    avatar: AvatarParams = field(default_factory=lambda: AvatarParams(crop_size=96))
    segment_frames: int = 50
    hls_dir: str | None = None  # publish a live HLS stream there while rendering (None: no stream)


@dataclass(frozen=True)
class FaceSource:
    """What the generator is fed per template frame: the avatar's crops, or its cached latents
    (``actors/avatar_latents.py``); ``rows[i]`` belongs to template frame ``i``."""

    rows: Any
    latents: bool = False


@dataclass(frozen=True)
class SegmentDone:
    frames: int
    workers: dict[str, int]  # worker name -> process id that did the work (restarts show as changes)


@dataclass
class InFlight:
    """One submitted segment: what the driver needs to account for it and to diagnose a stall."""

    segment: Segment
    path: str
    submitted_at: float
    writer: int  # index of the writer that has it
    generated: Any = None  # the generator's pending output (e.g. an ObjectRef), for stuck diagnosis


@dataclass(frozen=True)
class RenderResult:
    out_path: str
    plan: RenderPlan
    avatar: Avatar
    n_samples: int
    segments_reused: int
    segment_seconds: float  # wall time of the generate + write stage
    first_playable_s: float | None = None  # render start -> first live HLS segment listed


class Stages(Protocol):
    """What a runtime provides. Awaitables may be anything the event loop can await (futures,
    coroutines, Ray ObjectRefs)."""

    def decode_audio(self, audio_path: str) -> Awaitable[Any]: ...  # samples (or a handle to them)
    def sample_count(self, samples: Any) -> Awaitable[int]: ...
    # ``stop``: the attempt's StopToken, passed on to the worker so it can end a dead attempt's call.
    def prepare_avatar(self, video_path: str, params: AvatarParams, stop: StopToken | None = None) -> Awaitable[Avatar]: ...
    def prepare_latents(self, avatar: Avatar) -> Awaitable[str | None]: ...  # latents file name, or None
    def prepare_features(self, samples: Any, fps: Fraction, n_frames: int) -> Awaitable[np.ndarray]: ...
    def submit_segment(self, plan: RenderPlan, seg: Segment, faces: FaceSource, features: np.ndarray,
                       avatar: Avatar, path: str, stop: StopToken | None = None) -> tuple[Awaitable[SegmentDone], InFlight]: ...
    # The job's AAC track into ``track_path`` (kept if it exists); resolves to that path.
    def encode_audio_track(self, audio_path: str, track_path: str, stop: StopToken | None = None) -> Awaitable[str]: ...
    def finalize(self, paths: list[str], audio_track: str, out_path: str, fps: Fraction,
                 stop: StopToken | None = None) -> Awaitable[Any]: ...
    def workers(self) -> Awaitable[dict[str, int]]: ...
    def restart_stuck(self, pending: list[InFlight]) -> str: ...  # returns what was restarted
    def classify(self, exc: BaseException, stage: str) -> LipserveError: ...


class DriveEvents:
    """What the driver reports; the service records it in the job store, the CLI draws a bar."""

    def progress(self, stage: str, fraction: float) -> Awaitable[None] | None:
        return None

    def timing(self, stage: str, seconds: float) -> Awaitable[None] | None:
        return None

    def incident(self, code: str, message: str) -> Awaitable[None] | None:
        return None


async def _call(fn: Callable[..., Awaitable[None] | None], *args) -> None:
    result = fn(*args)
    if result is not None:
        await result


async def await_stage(aw: Awaitable[Any], cancelled: asyncio.Event, stage: str, timeout: float | None,
                      classify: Callable[[BaseException, str], LipserveError]) -> Any:
    """Await one stage call; raise CancelledError as soon as the job is cancelled, StageTimeoutError
    past ``timeout``, and the classified error if the call fails."""
    fut = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(cancelled.wait())
    try:
        done, _ = await asyncio.wait({fut, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if fut in done:
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - classified by type
            raise classify(exc, stage) from exc
    fut.cancel()  # stop waiting; the call itself finishes on its own
    if cancelled.is_set():
        raise CancelledError(f"job cancelled during {stage}", stage=stage)
    raise StageTimeoutError(f"no progress in {stage} for {timeout:.0f} s", stage=stage)


class SegmentDriver:
    def __init__(self, stages: Stages, policy: DrivePolicy | None = None, events: DriveEvents | None = None,
                 cancelled: asyncio.Event | None = None):
        self.stages = stages
        self.policy = policy or DrivePolicy()
        self.events = events or DriveEvents()
        self.cancelled = cancelled or asyncio.Event()

    async def _stage(self, stage: str, aw: Awaitable[Any], progress_after: float | None = None) -> Any:
        await _call(self.events.progress, stage, None)
        t0 = time.perf_counter()
        try:
            return await await_stage(aw, self.cancelled, stage, self.policy.prepare_timeout_s, self.stages.classify)
        finally:
            await _call(self.events.timing, stage, time.perf_counter() - t0)
            if progress_after is not None:
                await _call(self.events.progress, stage, progress_after)

    async def render(self, req: RenderRequest) -> RenderResult:
        """One attempt of one job, top to bottom."""
        Path(req.work_dir).mkdir(parents=True, exist_ok=True)
        stop = StopToken.for_attempt(req.work_dir)
        try:
            return await self._render(req, stop)
        except BaseException:
            stop.set()  # whatever still runs for this attempt stops at its next frame
            raise

    async def _render(self, req: RenderRequest, stop: StopToken) -> RenderResult:
        s = self.stages
        started = time.perf_counter()
        samples = await self._stage("audio", s.decode_audio(req.audio_path), 0.02)
        n_samples = await s.sample_count(samples)
        avatar = await self._stage("avatar", s.prepare_avatar(req.video_path, req.avatar, stop=stop), 0.04)
        latents = await self._stage("latents", s.prepare_latents(avatar))
        plan = make_plan(n_samples, avatar, req.mode, req.segment_frames)
        # The AAC track is encoded while the segments render (at the end nothing would overlap with
        # it), so finalize is a stream copy of both tracks; the live stream reads the same track.
        track = asyncio.ensure_future(s.encode_audio_track(req.audio_path, os.path.join(req.work_dir, AUDIO_TRACK_NAME),
                                                           stop=stop))
        live = self._live(req, plan, started, track)
        try:
            features = await self._stage("features", s.prepare_features(samples, plan.fps, plan.n_out), 0.05)
            paths = [os.path.join(req.work_dir, seg.file_name) for seg in plan.segments]
            t0 = time.perf_counter()
            await _call(self.events.progress, "generate_write", None)
            try:
                reused = await self.run_segments(plan, avatar, features, paths, live, stop, latents)
                if live:
                    await live.finish(self.policy.settle_timeout_s)
            finally:
                seconds = time.perf_counter() - t0
                await _call(self.events.timing, "generate_write", seconds)
        except BaseException:
            # An early exit: the track's call ends before the job's directory is cleaned up.
            await asyncio.wait({track}, timeout=self.policy.settle_timeout_s)
            if track.done() and not track.cancelled():
                track.exception()  # retrieved: the error that ended the attempt is the one raised
            raise
        finally:
            if live:  # nothing of the live stream still writes once this attempt is over
                await live.settle(self.policy.settle_timeout_s)

        async def finalize() -> None:
            await s.finalize(paths, await track, req.out_path, plan.fps, stop=stop)

        await self._stage("finalize", finalize(), 0.99)
        return RenderResult(out_path=req.out_path, plan=plan, avatar=avatar, n_samples=n_samples,
                            segments_reused=reused, segment_seconds=seconds,
                            first_playable_s=live.first_playable_s if live else None)

    def _live(self, req: RenderRequest, plan: RenderPlan, started: float, track: Awaitable[str]) -> LiveHls | None:
        """The live stream of this render; its first segment is timed from the render's start."""
        if not req.hls_dir:
            return None
        live = LiveHls(req.hls_dir, plan, track, started_at=started,
                       on_first=lambda seconds: _call(self.events.timing, "first_playable", seconds),
                       on_failure=lambda message: _call(self.events.incident, HLS_INCIDENT, message))
        live.start()
        return live

    async def run_segments(self, plan: RenderPlan, avatar: Avatar, features: np.ndarray, paths: list[str],
                           live: LiveHls | None = None, stop: StopToken | None = None,
                           latents: str | None = None) -> int:
        """Generate and write every segment not already on disk; returns how many were reused.
        On any early exit ``stop`` is set before the in-flight calls are left to settle.
        ``latents``: the avatar's cached latents file for this generator (``prepare_latents``)."""
        policy, s = self.policy, self.stages
        if latents:
            faces = FaceSource(await asyncio.to_thread(avatar.latents, latents), latents=True)
        else:
            faces = FaceSource(await asyncio.to_thread(avatar.crops))
        known = await s.workers()
        queue = [(seg, p) for seg, p in zip(plan.segments, paths) if not os.path.exists(p)]
        reused = len(plan.segments) - len(queue)
        if live:
            for seg, p in zip(plan.segments, paths):
                if os.path.exists(p):
                    live.segment_done(seg, p)
        done_frames = sum(seg.n_frames for seg, p in zip(plan.segments, paths) if os.path.exists(p))
        await _call(self.events.progress, "generate_write", 0.05 + 0.9 * done_frames / plan.n_out)
        pending: dict[asyncio.Future, InFlight] = {}
        resubmits: dict[int, int] = {}
        expected_s: float | None = None  # measured seconds per segment, for stuck detection
        try:
            while queue or pending:
                while queue and len(pending) < policy.max_inflight:  # backpressure
                    seg, path = queue.pop(0)
                    aw, entry = s.submit_segment(plan, seg, faces, features, avatar, path, stop=stop)
                    pending[asyncio.ensure_future(aw)] = entry
                timeout = policy.stuck_after(expected_s)
                cancel_wait = asyncio.ensure_future(self.cancelled.wait())
                done, _ = await asyncio.wait(set(pending) | {cancel_wait}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                cancel_wait.cancel()
                if self.cancelled.is_set():
                    raise CancelledError("job cancelled while rendering segments", stage="generate_write")
                if not done:
                    if stop is not None:  # first: calls Ray re-sends to the restarted actor see it
                        stop.set()
                    culprit = s.restart_stuck(list(pending.values()))
                    raise StageTimeoutError(
                        f"no segment finished for {timeout:.1f} s (expected ~{expected_s or 0:.1f} s each); "
                        f"{culprit} restarted", stage="generate_write")
                for fut in done:
                    entry = pending.pop(fut)
                    try:
                        result: SegmentDone = fut.result()
                    except Exception as exc:  # noqa: BLE001 - classified by type
                        err = s.classify(exc, "generate_write")
                        n = resubmits.get(entry.segment.index, 0)
                        if isinstance(err, WorkerLostError) and n < policy.max_resubmits:
                            resubmits[entry.segment.index] = n + 1
                            await _call(self.events.incident, err.code.value,
                                        f"segment {entry.segment.index}: {err.message}; resubmitted")
                            queue.insert(0, (entry.segment, entry.path))
                            continue
                        raise err from exc
                    await self._note_restarts(known, result.workers)
                    if live:
                        live.segment_done(entry.segment, entry.path)
                    took = time.perf_counter() - entry.submitted_at
                    expected_s = took if expected_s is None else 0.7 * expected_s + 0.3 * took
                    done_frames += entry.segment.n_frames
                    await _call(self.events.progress, "generate_write", 0.05 + 0.9 * done_frames / plan.n_out)
        finally:
            if pending:
                if stop is not None:
                    stop.set()
                await self._settle(pending)
        return reused

    async def _note_restarts(self, known: dict[str, int], seen: dict[str, int]) -> None:
        """A changed pid means the runtime restarted that worker under us (and retried its calls)."""
        for name, pid in seen.items():
            if name in known and known[name] != pid:
                await _call(self.events.incident, "worker_lost",
                            f"{name} process {known[name]} died and was restarted as {pid}; "
                            "its in-flight calls were retried")
            known[name] = pid

    async def _settle(self, pending: dict[asyncio.Future, InFlight]) -> None:
        """Let in-flight segment calls finish before the caller cleans up: there are at most
        ``max_inflight`` of them and each is short. They are not cancelled at the runtime (see
        ``serve_app/ray_stages.py`` for why)."""
        await asyncio.wait(set(pending), timeout=self.policy.settle_timeout_s)
        for fut in pending:
            fut.cancel()
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "exception never retrieved" noise
