"""Runs one attempt of one job on a pipeline replica: the segment driver over the replica's Ray
actors (``serve_app/ray_stages.py``), with the job store as the record of what happened.

The job's path itself is the driver's (``actors/driver.py``); this module adds what only the service
has: the lease (heartbeats carry progress and stage; a False heartbeat means cancelled or taken over),
per-stage timings, incidents and typed attempt errors in the durable record, cleanup, and metrics.
Segment files are named by segment and written atomically, so a later attempt of the same job
reuses the finished ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from actors.avatar import AvatarParams
from actors.driver import DriveEvents, DrivePolicy, RenderRequest, SegmentDriver
from actors.errors import CancelledError, LipserveError, with_client_names
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.storage import Storage
from serve_app.ray_actors import PipelineActors
from serve_app.ray_stages import RayStages, unwrap_ray_error

log = logging.getLogger("lipserve.job_runner")

# Stages that handle every output frame: their frames/s go into the record and lipserve_stage_fps.
FRAME_STAGES = ("features", "generate_write", "finalize")


def avatar_params(actors: PipelineActors, backend: str, box, args: LipserveArgs) -> AvatarParams:
    """The avatar a job of ``backend`` needs: cut with that generator's declared geometry."""
    geometry = actors.geometries[backend]
    return AvatarParams(crop_size=geometry.crop_size, box=box, detector_model=args.detector_model,
                        max_gap_s=args.max_face_gap_s, geometry=geometry)


def drive_policy(args: LipserveArgs) -> DrivePolicy:
    j = args.jobs
    return DrivePolicy(max_inflight=j.max_inflight_segments, stuck_factor=j.stuck_factor, min_stuck_s=j.min_stuck_s,
                       prepare_timeout_s=j.prepare_timeout_s, settle_timeout_s=j.min_stuck_s)


@dataclass
class AttemptState:
    """What the heartbeat reports and what cancellation sets."""

    progress: float = 0.0
    stage: str = "queued"
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    last_progress_at: float = field(default_factory=time.time)  # unix s: the stuck-job alert reads it
    timings: dict[str, float] = field(default_factory=dict)  # this attempt's own stage seconds


class _StoreEvents(DriveEvents):
    """Driver events -> the attempt's state (sent by the heartbeat), timings and incidents."""

    def __init__(self, runner: "JobRunner", job_id: str, state: AttemptState):
        self.runner, self.job_id, self.state = runner, job_id, state

    def progress(self, stage: str, fraction: float | None) -> None:
        self.state.stage = stage
        if fraction is not None and fraction > self.state.progress:
            self.state.progress = fraction
            self.state.last_progress_at = time.time()

    async def timing(self, stage: str, seconds: float) -> None:
        self.state.timings[stage] = self.state.timings.get(stage, 0.0) + seconds
        await self.runner.store.add_timing(self.job_id, stage, seconds)
        if self.runner.metrics:
            self.runner.metrics.stage_seconds(stage, seconds)

    async def incident(self, code: str, message: str) -> None:
        await self.runner.store.add_incident(self.job_id, self.runner.owner, code, message)


class JobRunner:
    def __init__(self, args: LipserveArgs, store: AsyncJobStore, storage: Storage, actors: PipelineActors,
                 owner: str, metrics=None):
        self.args = args
        self.store = store
        self.storage = storage
        self.actors = actors
        self.owner = owner
        self.metrics = metrics
        self.active: dict[str, AttemptState] = {}  # this replica's running attempts, by job id

    def client_names(self, job: JobRecord) -> dict[str, str]:
        """Server paths -> what a client may see in an error: its own files by the names it gave,
        and any other path under storage_dir (segments, the AAC track, the avatar cache) as
        ``<storage>/...``, so an internal error that names a file shows no server path either."""
        names = dict(job.params.client_names()) if job.params else {}
        root = self.storage.root
        for form in {str(root), str(root.resolve())}:
            names.setdefault(form, "<storage>")
        return names

    def oldest_progress_at(self) -> float:
        """The oldest last-progress time of the running attempts; now when none runs."""
        return min((st.last_progress_at for st in self.active.values()), default=time.time())

    async def _record_resources(self, job: JobRecord, state: AttemptState, frames: int, generator) -> None:
        """This attempt's resource use (of ``generator``, the job's backend's actor) into its record
        and the metrics (best effort: never fails a job)."""
        try:
            res = await generator.resources.remote()
            fps = {stage: frames / seconds for stage, seconds in state.timings.items()
                   if stage in FRAME_STAGES and seconds > 0 and frames}
            await self.store.record_resources(job.id, self.owner, {
                "generator_memory_bytes": res["memory_bytes"], "generator_memory_kind": res["memory_kind"],
                "stage_fps": fps, "frames": frames})
            if self.metrics:
                self.metrics.generator(res)
                for stage, value in fps.items():
                    self.metrics.stage_fps.set(value, tags={"stage": stage})
        except Exception as exc:  # noqa: BLE001 - telemetry only
            log.warning("job %s: resource use not recorded (%s: %s)", job.id, type(exc).__name__, exc)

    def _observe_claim(self, job: JobRecord) -> None:
        """Queue wait of this attempt: from when the job became claimable to the claim."""
        if not self.metrics or not job.attempts:
            return
        current = job.attempts[-1]
        earlier = [a.ended_at for a in job.attempts[:-1] if a.ended_at]
        ready = max([job.created_at, job.next_attempt_at, *earlier])
        self.metrics.queue_wait.observe(max(0.0, current.started_at - ready))

    def _observe_outcome(self, rec: JobRecord | None) -> None:
        if self.metrics and rec is not None and rec.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            self.metrics.attempts.observe(sum(1 for a in rec.attempts if not a.released))

    async def _heartbeat(self, job_id: str, state: AttemptState) -> None:
        jobs = self.args.jobs
        renewed = time.monotonic()
        while not state.cancelled.is_set():
            try:
                ok = await self.store.heartbeat(job_id, self.owner, jobs.lease_s, state.progress, state.stage)
            except Exception as exc:  # noqa: BLE001 - a store hiccup (locked DB, store actor restart)
                log.warning("heartbeat of job %s failed (%s: %s); retrying", job_id, type(exc).__name__, exc)
                ok = time.monotonic() - renewed < jobs.lease_s  # past the lease the job may be taken over
            else:
                if ok:
                    renewed = time.monotonic()
            if not ok:  # cancelled by the user, or another replica took the job over
                state.cancelled.set()
                return
            try:
                await asyncio.wait_for(state.cancelled.wait(), timeout=jobs.heartbeat_s)
            except asyncio.TimeoutError:
                pass

    async def _succeeded_here(self, job_id: str, result_path: str) -> bool:
        """Whether the record says this attempt succeeded. ``succeed`` answers False when the job is
        no longer ours, but also when a database connection broke after its COMMIT went through
        (PostgreSQL: the retried transaction finds the job already succeeded, by us). The record
        tells the two apart: our attempt, closed without an error, and our result."""
        rec = await self.store.get(job_id)
        return (rec is not None and rec.status == JobStatus.SUCCEEDED and rec.result_path == result_path
                and bool(rec.attempts) and rec.attempts[-1].owner == self.owner and rec.attempts[-1].error is None)

    def _request(self, job: JobRecord, backend: str) -> RenderRequest:
        p = job.params
        result = str(self.storage.result_path(job.id))
        return RenderRequest(
            audio_path=p.audio_path, video_path=p.video_path,
            # Per attempt: a lapsed owner still finishing cannot clobber its successor's result.
            out_path=f"{result}.{self.owner.rsplit(':', 1)[-1]}-{len(job.attempts)}.partial.mp4",
            work_dir=str(self.storage.segments_dir(job.id)), mode="pingpong" if p.pingpong else "loop",
            avatar=avatar_params(self.actors, backend, p.box, self.args),
            segment_frames=self.args.writer.segment_frames, hls_dir=str(self.storage.hls_dir(job.id)))

    async def run(self, job: JobRecord) -> JobRecord:
        state = AttemptState(progress=job.progress)
        self.active[job.id] = state
        self._observe_claim(job)
        frames = 0
        generator = None  # the job's backend's generator actor, once known
        heartbeat = asyncio.create_task(self._heartbeat(job.id, state))
        try:
            # The job's backend picks its generator actor; everything else is shared.
            stages = RayStages(self.actors, job.params.backend)
            generator = stages.generator
            driver = SegmentDriver(stages, drive_policy(self.args), _StoreEvents(self, job.id, state), state.cancelled)
            t0 = time.perf_counter()
            result = await driver.render(self._request(job, stages.backend))
            frames = result.plan.n_out
            await self._record_resources(job, state, frames, generator)
            if self.metrics:
                self.metrics.fps.set(result.plan.n_out / max(1e-6, time.perf_counter() - t0))
                self.metrics.frames_generated(result.plan.n_out)
            final = str(self.storage.result_path(job.id))
            os.replace(result.out_path, final)
            if not await self.store.succeed(job.id, self.owner, final) and not await self._succeeded_here(job.id, final):
                raise CancelledError("job was cancelled or taken over before it could be marked done")
            await asyncio.to_thread(self.storage.remove_job_work, job.id)  # inputs, segments; result stays
            if self.metrics:
                self.metrics.job_finished("succeeded", None)
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
            error = exc if isinstance(exc, LipserveError) else unwrap_ray_error(exc, state.stage)
            error = with_client_names(error, self.client_names(job))
            if isinstance(exc, asyncio.CancelledError):
                # The replica is shutting down: give the job back so another replica resumes it.
                await self.store.release(job.id, self.owner)
                raise
            if isinstance(error, CancelledError) or state.cancelled.is_set():
                log.info("job %s stopped: %s", job.id, error.message)
                # Cancelled by request: drop partial work. Taken over by another replica (our lease
                # lapsed): leave the files, the new owner reuses the finished segments.
                if await self.store.is_cancelled(job.id):
                    await asyncio.to_thread(self.storage.remove_job_work, job.id)
                    await asyncio.to_thread(self.storage.remove_live_stream, job.id)
                if self.metrics:
                    self.metrics.job_finished("cancelled", "cancelled")
            else:
                log.warning("job %s attempt failed: [%s] %s", job.id, error.code.value, error.message)
                if generator is not None:
                    await self._record_resources(job, state, frames, generator)
                rec = await self.store.fail_attempt(job.id, self.owner, error.to_dict(), self.args.jobs.max_attempts,
                                                    self.args.jobs.retry_backoff_s)
                if rec is not None and rec.status == JobStatus.FAILED:
                    await asyncio.to_thread(self.storage.remove_job_work, job.id)
                    await asyncio.to_thread(self.storage.remove_live_stream, job.id)
                    if self.metrics:
                        self.metrics.job_finished("failed", error.code.value)
        finally:
            state.cancelled.set()
            heartbeat.cancel()
            self.active.pop(job.id, None)
        rec = await self.store.get(job.id)
        self._observe_outcome(rec)
        return rec
