"""Runs one attempt of one job over the pipeline's Ray actors.

Data path (see docs/ARCHITECTURE.md):

    WriterActor.prepare_audio ─┐
    WriterActor.prepare_avatar ┴─> plan (segments) ─> for each segment, at most N in flight:
        crops (from the avatar cache) + mel windows ─> GeneratorActor.generate ─(ObjectRef)─>
        WriterActor.write_segment (decodes template frames itself, pastes, encodes) ─> segment file
    ─> WriterActor.finalize (join without re-encode + AAC) ─> result.mp4

The replica only moves small face crops and object refs; generated crops go from the generator
straight to a writer as an object ref. Recovery:
- an actor process that dies is restarted by Ray and its in-flight call retried (max_task_retries);
  if a call still fails with an actor error, the segment is resubmitted here. Either way the
  restart is recorded as an incident of the attempt (pids change).
- segments are files named by segment id and written atomically, so a retried write is harmless
  and finished segments are reused by a later attempt of the same job.
- no progress for ``stuck_factor`` x the expected segment time -> StageTimeoutError (retryable);
  the wedged generator is killed so Ray restarts it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.exceptions import RayActorError, RayTaskError

from actors.avatar import AvatarParams
from actors.errors import (
    CancelledError,
    LipserveError,
    StageTimeoutError,
    WorkerLostError,
    as_lipserve_error,
)
from actors.plan import make_plan
from serve_app.config import LipserveArgs
from serve_app.job_store import JobRecord, JobStore
from serve_app.storage import Storage

log = logging.getLogger("lipserve.job_runner")


def unwrap_ray_error(exc: BaseException, stage: str) -> LipserveError:
    """Ray exception -> our taxonomy, by type (never by message text)."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            return unwrap_ray_error(cause, stage)
    if isinstance(exc, RayActorError):
        return WorkerLostError(f"worker process lost during {stage}: {type(exc).__name__}", stage=stage)
    return as_lipserve_error(exc, stage=stage)


@dataclass
class AttemptState:
    """What the heartbeat reports and what cancellation sets."""

    progress: float = 0.0
    stage: str = "queued"
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PipelineActors:
    generator: "ray.actor.ActorHandle"
    writers: list
    crop_size: int


class JobRunner:
    def __init__(self, args: LipserveArgs, store: JobStore, storage: Storage, actors: PipelineActors,
                 owner: str, metrics=None):
        self.args = args
        self.store = store
        self.storage = storage
        self.actors = actors
        self.owner = owner
        self.metrics = metrics
        self._writer_turn = 0
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lipserve-store")

    # ---------------------------------------------------------------- helpers
    async def _db(self, fn, *a, **kw):
        # A pool of its own: Serve sizes the replica's default executor by its (fractional) CPUs,
        # and store calls (heartbeats!) must not queue behind other blocking work.
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *a, **kw))

    def _next_writer_index(self) -> int:
        """Round-robin over the writer pool."""
        self._writer_turn += 1
        return self._writer_turn % len(self.actors.writers)

    def _next_writer(self):
        return self.actors.writers[self._next_writer_index()]

    async def _heartbeat(self, job_id: str, state: AttemptState) -> None:
        jobs = self.args.jobs
        renewed = time.monotonic()
        while not state.cancelled.is_set():
            try:
                ok = await self._db(self.store.heartbeat, job_id, self.owner, jobs.lease_s, state.progress,
                                    state.stage)
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

    async def _await(self, ref, state: AttemptState, stage: str, timeout: float | None = None):
        """Await one ObjectRef, or raise CancelledError as soon as the job is cancelled."""
        fut = asyncio.ensure_future(ref)
        cancel = asyncio.ensure_future(state.cancelled.wait())
        try:
            done, _ = await asyncio.wait({fut, cancel}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if fut in done:
            try:
                return fut.result()
            except Exception as exc:  # noqa: BLE001 - classified by type below
                raise unwrap_ray_error(exc, stage) from exc
        fut.cancel()  # stop waiting; the call itself is short and finishes on its own (see _stop_pending)
        if state.cancelled.is_set():
            raise CancelledError(f"job cancelled during {stage}", stage=stage)
        raise StageTimeoutError(f"no progress in {stage} for {timeout:.0f} s", stage=stage)

    async def _timed(self, job_id: str, stage: str, state: AttemptState, coro):
        state.stage = stage
        t0 = time.perf_counter()
        try:
            return await coro
        finally:
            dt = time.perf_counter() - t0
            await self._db(self.store.add_timing, job_id, stage, dt)
            if self.metrics:
                self.metrics.stage_seconds(stage, dt)

    # ---------------------------------------------------------------- one attempt
    async def run(self, job: JobRecord) -> JobRecord:
        state = AttemptState(progress=job.progress)
        heartbeat = asyncio.create_task(self._heartbeat(job.id, state))
        work_dir = self.storage.segments_dir(job.id)
        try:
            result_path = await self._run_attempt(job, state, work_dir)
            if not await self._db(self.store.succeed, job.id, self.owner, result_path):
                raise CancelledError("job was cancelled or taken over before it could be marked done")
            await asyncio.to_thread(self.storage.remove_job_work, job.id)  # inputs, segments; result stays
            if self.metrics:
                self.metrics.job_finished("succeeded", None)
        except BaseException as exc:  # noqa: BLE001 - every outcome is recorded
            error = exc if isinstance(exc, LipserveError) else unwrap_ray_error(exc, state.stage)
            if isinstance(exc, asyncio.CancelledError):
                # The replica is shutting down: give the job back so another replica resumes it.
                await self._db(self.store.release, job.id, self.owner)
                raise
            if isinstance(error, CancelledError) or state.cancelled.is_set():
                log.info("job %s stopped: %s", job.id, error.message)
                # Cancelled by request: drop partial work. Taken over by another replica (our lease
                # lapsed): leave the files, the new owner reuses the finished segments.
                if await self._db(self.store.is_cancelled, job.id):
                    await asyncio.to_thread(self.storage.remove_job_work, job.id)
                if self.metrics:
                    self.metrics.job_finished("cancelled", "cancelled")
            else:
                log.warning("job %s attempt failed: [%s] %s", job.id, error.code.value, error.message)
                rec = await self._db(self.store.fail_attempt, job.id, self.owner, error.to_dict(),
                                     self.args.jobs.max_attempts, self.args.jobs.retry_backoff_s)
                if rec is not None and rec.status == "failed":
                    await asyncio.to_thread(self.storage.remove_job_work, job.id)
                    if self.metrics:
                        self.metrics.job_finished("failed", error.code.value)
        finally:
            state.cancelled.set()
            heartbeat.cancel()
        return await self._db(self.store.get, job.id)

    async def _run_attempt(self, job: JobRecord, state: AttemptState, work_dir: Path) -> str:
        p = job.params
        audio_path, video_path = p["audio_path"], p["video_path"]
        writer = self._next_writer()
        limit = self.args.jobs.prepare_timeout_s
        n_samples, mel = await self._timed(job.id, "audio", state, self._await(
            writer.prepare_audio.remote(audio_path), state, "audio", limit))
        state.progress = max(state.progress, 0.02)
        box = tuple(p["box"]) if p.get("box") else None
        params = AvatarParams(crop_size=self.actors.crop_size, box=box, detector_model=self.args.detector_model)
        avatar = await self._timed(job.id, "avatar", state, self._await(
            self._next_writer().prepare_avatar.remote(video_path, params), state, "avatar", limit))
        state.progress = max(state.progress, 0.05)

        mode = "pingpong" if p.get("pingpong", True) else "loop"
        plan = make_plan(n_samples, avatar, mode, self.args.writer.segment_frames)
        work_dir.mkdir(parents=True, exist_ok=True)
        paths = [str(work_dir / seg.file_name) for seg in plan.segments]
        t0 = time.perf_counter()
        await self._timed(job.id, "generate_write", state,
                          self._run_segments(job, state, plan, avatar, mel, paths))
        if self.metrics:
            self.metrics.fps.set(plan.n_out / max(1e-6, time.perf_counter() - t0))

        result_path = str(self.storage.result_path(job.id))
        tmp_result = f"{result_path}.{self.owner.rsplit(':', 1)[-1]}-{len(job.attempts)}.partial.mp4"
        await self._timed(job.id, "finalize", state, self._await(
            self._next_writer().finalize.remote(paths, audio_path, tmp_result, plan.fps), state, "finalize",
            limit))
        os.replace(tmp_result, result_path)
        return result_path

    def _restart_stuck_actors(self, pending: dict) -> str:
        """Find which stage is wedged and kill that actor (Ray restarts it): a wedged actor would
        stall every job on this replica. Generated crops not ready -> the generator; else the
        writers holding the pending segments."""
        generated = [entry[5] for entry in pending.values()]
        _, not_ready = ray.wait(generated, num_returns=len(generated), timeout=0, fetch_local=False)
        if not_ready:
            ray.kill(self.actors.generator, no_restart=False)
            return "GeneratorActor"
        stuck = sorted({entry[4] for entry in pending.values()})
        for w in stuck:
            ray.kill(self.actors.writers[w], no_restart=False)
        return ", ".join(f"WriterActor[{w}]" for w in stuck)

    async def _stop_pending(self, pending: dict) -> None:
        """Let the in-flight segment calls settle, so nothing writes into the job's directory after
        it is cleaned up. There are at most ``max_inflight_segments`` of them and each is short.

        They are deliberately not ``ray.cancel``-ed: cancelling a queued actor call leaves a gap in
        the actor's per-caller ordering that stalls every later call to that actor (health checks
        included) for Ray's reorder wait (~30 s per gap)."""
        if pending:
            await asyncio.wait(set(pending), timeout=self.args.jobs.min_stuck_s)
        for fut in pending:
            fut.cancel()

    async def _actor_pids(self) -> dict[str, int]:
        gen = self.actors.generator.info.remote()
        writers = [w.ping.remote() for w in self.actors.writers]
        info, *wpids = await asyncio.gather(gen, *writers)
        pids = {"GeneratorActor": info["pid"]}
        pids.update({f"WriterActor[{i}]": pid for i, pid in enumerate(wpids)})
        return pids

    async def _note_restarts(self, job_id: str, known: dict[str, int], seen: dict[str, int]) -> None:
        """A changed pid means Ray restarted that actor under us (and retried its calls): record it."""
        for name, pid in seen.items():
            if name in known and known[name] != pid:
                await self._db(self.store.add_incident, job_id, self.owner, "worker_lost",
                               f"{name} process {known[name]} died and was restarted as {pid}; "
                               "its in-flight calls were retried")
            known[name] = pid

    async def _run_segments(self, job: JobRecord, state: AttemptState, plan, avatar, mel, paths) -> None:
        jobs = self.args.jobs
        crops = await asyncio.to_thread(avatar.crops)
        known_pids = await self._actor_pids()
        done_frames = 0
        expected_s: float | None = None  # measured seconds per segment, for stuck detection
        pending: dict[asyncio.Future, tuple] = {}
        queue = []
        for seg, path in zip(plan.segments, paths):
            if os.path.exists(path):  # committed by an earlier attempt: reuse it
                done_frames += seg.n_frames
            else:
                queue.append((seg, path))
        state.progress = max(state.progress, 0.05 + 0.9 * done_frames / plan.n_out)
        resubmits: dict[int, int] = {}

        def submit(seg, path):
            faces, mels = plan.generator_inputs(seg, crops, mel)
            generated = self.actors.generator.generate.remote(faces, mels)
            w = self._next_writer_index()
            ref = self.actors.writers[w].write_segment.remote(
                avatar, plan.segment_sources(seg), plan.face_present[seg.start:seg.stop], generated, path)
            pending[asyncio.ensure_future(ref)] = (seg, path, ref, time.perf_counter(), w, generated)

        while queue or pending:
            while queue and len(pending) < jobs.max_inflight_segments:  # backpressure
                submit(*queue.pop(0))
            # Stuck = no segment finishes for stuck_factor x the measured time of one segment.
            timeout = max(jobs.min_stuck_s, jobs.stuck_factor * (expected_s or jobs.min_stuck_s))
            cancel = asyncio.ensure_future(state.cancelled.wait())
            done, _ = await asyncio.wait(set(pending) | {cancel}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            cancel.cancel()
            if state.cancelled.is_set():
                await self._stop_pending(pending)
                raise CancelledError("job cancelled while rendering segments", stage="generate_write")
            if not done:
                culprit = self._restart_stuck_actors(pending)
                await self._stop_pending(pending)
                raise StageTimeoutError(
                    f"no segment finished for {timeout:.1f} s (expected ~{expected_s or 0:.1f} s each); "
                    f"{culprit} restarted", stage="generate_write")
            for fut in done:
                seg, path, ref, t_submit, w, _ = pending.pop(fut)
                try:
                    _, writer_pid, generator_pid = fut.result()
                except Exception as exc:  # noqa: BLE001 - classified by type
                    err = unwrap_ray_error(exc, "generate_write")
                    if isinstance(err, WorkerLostError) and resubmits.get(seg.index, 0) < 3:
                        # The actor died beyond Ray's own retries: resubmit (the write is idempotent).
                        resubmits[seg.index] = resubmits.get(seg.index, 0) + 1
                        await self._db(self.store.add_incident, job.id, self.owner, err.code.value,
                                       f"segment {seg.index}: {err.message}; resubmitted")
                        queue.insert(0, (seg, path))
                        continue
                    raise err from exc
                await self._note_restarts(job.id, known_pids,
                                          {"GeneratorActor": generator_pid, f"WriterActor[{w}]": writer_pid})
                took = time.perf_counter() - t_submit
                expected_s = took if expected_s is None else 0.7 * expected_s + 0.3 * took
                done_frames += seg.n_frames
                state.progress = 0.05 + 0.9 * done_frames / plan.n_out
                if self.metrics:
                    self.metrics.frames_generated(seg.n_frames)
