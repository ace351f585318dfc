"""The pipeline deployment: one replica runs jobs through the stages on its Ray actors.

A plain class; ``serve_app/app.py`` turns it into a Serve deployment with options derived from the
typed config. Its constructor creates the ``GeneratorActor`` and the ``WriterActor`` pool and runs
the warm-up job, so Serve sends it traffic only once it has rendered a real (tiny) video.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

import ray

from actors.errors import LipserveError
from actors.limits import MediaLimits
from actors.writer import pick_video_codec
from serve_app.config import LipserveArgs
from serve_app.job_runner import JobRunner, PipelineActors
from serve_app.job_store_actor import open_job_store
from serve_app.ray_actors import CONTROL_GROUPS, ChaosHooks, GeneratorActor, WriterActor
from serve_app.storage import Storage
from serve_app.warmup import run_warmup

log = logging.getLogger("lipserve.pipeline")


def limits_from(args: LipserveArgs) -> MediaLimits:
    j = args.jobs
    return MediaLimits(max_width=j.max_width, max_height=j.max_height, max_duration_s=j.max_duration_s)


def create_actors(args: LipserveArgs, storage: Storage) -> PipelineActors:
    g, w, f = args.generator, args.writer, args.actor_faults
    retry = dict(max_restarts=f.max_restarts, max_task_retries=f.max_task_retries)
    generator = ray.remote(concurrency_groups=CONTROL_GROUPS)(GeneratorActor).options(
        num_cpus=g.num_cpus, num_gpus=g.num_gpus, **retry,
    ).remote(g.backend, g.checkpoint, g.device, g.batch_size, args.chaos_dir)
    codec = pick_video_codec(w.prefer_nvenc)
    writers = [
        ray.remote(concurrency_groups=CONTROL_GROUPS)(WriterActor).options(num_cpus=w.num_cpus, **retry).remote(
            str(storage.avatar_cache_dir), codec, w.crf, limits_from(args))
        for _ in range(max(1, w.pool_size))
    ]
    info = ray.get(generator.info.remote())
    return PipelineActors(generator=generator, writers=writers, crop_size=info["crop_size"])


class PipelineServer:
    def __init__(self, args: LipserveArgs | dict):
        t_start = time.perf_counter()
        self.args = LipserveArgs.from_any(args)
        self.storage = Storage(self.args.storage_dir)
        self.store = open_job_store(self.args.job_store, self.args.database_path)
        self.owner = f"pipeline@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.actors = create_actors(self.args, self.storage)
        self.warmup_info: dict = {"skipped": True}
        if self.args.warmup:
            # Any failure here fails the constructor with its reason; Serve retries the replica.
            self.warmup_info = run_warmup(self.actors.generator, self.actors.writers, self.actors.crop_size,
                                          self.storage.root / "warmup")
            log.info("pipeline replica %s warm: %s", self.owner, self.warmup_info)
        self.warmup_info["constructor_seconds"] = time.perf_counter() - t_start
        self._wait_chaos_gate()
        try:
            from serve_app.metrics import PipelineMetrics

            metrics = PipelineMetrics()
        except Exception:  # metrics are best-effort outside a Ray worker
            metrics = None
        self.runner = JobRunner(self.args, self.store, self.storage, self.actors, self.owner, metrics)

    def _wait_chaos_gate(self) -> None:
        """Chaos tests hold readiness with a gate file; absent in production, so no wait at all."""
        chaos = ChaosHooks(self.args.chaos_dir)
        while chaos.present("hold_pipeline_ready"):  # condition wait on the test's gate
            time.sleep(0.1)

    async def run_job(self, job_id: str) -> dict:
        """Claim ``job_id`` (if nobody else owns it) and run one attempt to its end."""
        job = await asyncio.to_thread(self.store.claim, job_id, self.owner, self.args.jobs.lease_s,
                                     max_attempts=self.args.jobs.max_attempts)
        if job is None:
            return {"id": job_id, "claimed": False}
        log.info("running job %s attempt %d", job_id, len(job.attempts))
        rec = await self.runner.run(job)
        return {"id": job_id, "claimed": True, "status": rec.status if rec else "unknown"}

    async def ready(self) -> dict:
        return {"owner": self.owner, "warmup": self.warmup_info}

    async def actor_pids(self) -> dict:
        """For operators and the chaos tests: which processes this replica's actors run in."""
        gen = await self.actors.generator.info.remote()
        writers = await asyncio.gather(*[w.ping.remote() for w in self.actors.writers])
        return {"replica_pid": os.getpid(), "generator": gen["pid"], "writers": list(writers),
                "replica_actor": ray.get_runtime_context().get_actor_name()}

    async def check_health(self) -> None:
        # Async, so it runs on the event loop without blocking behind jobs; actors must answer.
        try:
            await asyncio.wait_for(
                asyncio.gather(self.actors.generator.info.remote(), *[w.ping.remote() for w in self.actors.writers]),
                timeout=self.args.pipeline.health_check_timeout_s * 0.8,
            )
        except ray.exceptions.ActorUnavailableError:
            return  # restarting under max_restarts: not a reason to kill the replica
        except (ray.exceptions.ActorDiedError, asyncio.TimeoutError) as exc:
            raise LipserveError(f"pipeline actors do not answer: {type(exc).__name__}: {exc}") from exc
