"""The pipeline deployment: one replica runs jobs through the stages on its Ray actors.

A plain class; ``serve_app/app.py`` turns it into a Serve deployment with ``deployment_options(args)``. Its constructor creates a ``GeneratorActor`` per served backend and the ``WriterActor`` pool and
runs the warm-up job of each backend, so Serve sends it traffic only once it has rendered a real (tiny) video.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import time
import uuid
from typing import Any

import ray

from actors.errors import LipserveError
from serve_app.chaos import ChaosHooks
from serve_app.config import LipserveArgs
from serve_app.job_runner import JobRunner
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.backends import open_job_store
from serve_app.jobs.storage import Storage
from serve_app.ray_actors import create_actors
from serve_app.warmup import run_warmup

log = logging.getLogger("lipserve.pipeline")

DEPLOYMENT_NAME = "PipelineServer"


def deployment_options(args: LipserveArgs) -> dict[str, Any]:
    p = args.pipeline
    a = p.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "look_back_period_s": a.look_back_period_s,
        "metrics_interval_s": a.metrics_interval_s,
    }
    if a.initial_replicas is not None:
        autoscaling["initial_replicas"] = a.initial_replicas
    return {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": p.max_ongoing_requests,
        "max_queued_requests": p.max_queued_requests,
        "autoscaling_config": autoscaling,
        "graceful_shutdown_timeout_s": p.graceful_shutdown_timeout_s,
        "health_check_period_s": p.health_check_period_s,
        "health_check_timeout_s": p.health_check_timeout_s,
        # The replica itself only orchestrates; the heavy work runs in its actors.
        "ray_actor_options": {"num_cpus": p.num_cpus},
    }


class PipelineServer:
    def __init__(self, args: LipserveArgs | dict):
        t_start = time.perf_counter()
        self.args = LipserveArgs.from_any(args)
        self.storage = Storage(self.args.storage_dir)
        self.store = AsyncJobStore(open_job_store(self.args))
        self.node_id = ray.get_runtime_context().get_node_id()
        # Recorded on every attempt: which host, Ray node and process ran it.
        self.owner = f"pipeline@{socket.gethostname()}:{self.node_id[:12]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.actors = create_actors(self.args, str(self.storage.avatar_cache_dir))
        self.warmup_info: dict = {"skipped": True}
        if self.args.warmup:
            # Any failure here fails the constructor with its reason; Serve retries the replica.
            self.warmup_info = run_warmup(self.actors, self.storage.root / "warmup")
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
        job = await self.store.claim(job_id, self.owner, self.args.jobs.lease_s,
                                     max_attempts=self.args.jobs.max_attempts)
        if job is None:
            return {"id": job_id, "claimed": False}
        log.info("running job %s attempt %d", job_id, len(job.attempts))
        rec = await self.runner.run(job)
        return {"id": job_id, "claimed": True, "status": rec.status if rec else "unknown"}

    async def ready(self) -> dict:
        return {"owner": self.owner, "node_id": self.node_id, "warmup": self.warmup_info}

    async def actor_pids(self) -> dict:
        """For operators and the chaos tests: which processes this replica's actors run in."""
        gens = await asyncio.gather(*[g.info.remote() for g in self.actors.generators.values()])
        writers = await asyncio.gather(*[w.ping.remote() for w in self.actors.writers])
        generators = {name: info["pid"] for name, info in zip(self.actors.generators, gens)}
        default = gens[list(self.actors.generators).index(self.actors.default_backend)]
        return {"replica_pid": os.getpid(), "generator": default["pid"], "generators": generators,
                "writers": list(writers), "replica_actor": ray.get_runtime_context().get_actor_name(),
                "node_id": self.node_id, "generator_node_id": default["node_id"]}

    async def generator_info(self) -> list[dict]:
        """For operators and tests: each generator actor's backend, engine, precision and window."""
        infos = await asyncio.gather(*[g.info.remote() for g in self.actors.generators.values()])
        return [{"backend": name, **{k: v for k, v in info.items() if k != "geometry"}}
                for name, info in zip(self.actors.generators, infos)]

    async def check_health(self) -> None:
        # Async, so it runs on the event loop without blocking behind jobs; actors must answer.
        try:
            await asyncio.wait_for(
                asyncio.gather(*[g.info.remote() for g in self.actors.generators.values()],
                               *[w.ping.remote() for w in self.actors.writers]),
                timeout=self.args.pipeline.health_check_timeout_s * 0.8,
            )
        except ray.exceptions.ActorUnavailableError:
            return  # restarting under max_restarts: not a reason to kill the replica
        except (ray.exceptions.ActorDiedError, asyncio.TimeoutError) as exc:
            raise LipserveError(f"pipeline actors do not answer: {type(exc).__name__}: {exc}") from exc
        await self._sample_metrics()  # the health check's period is the gauges' sampling period

    async def _sample_metrics(self) -> None:
        """Gauges that describe the replica now: generator memory and GPUs, storage, stuck jobs."""
        m = self.runner.metrics
        if m is None:
            return
        try:
            m.last_progress.set(self.runner.oldest_progress_at())
            usage = await asyncio.to_thread(shutil.disk_usage, self.storage.root)
            m.disk(str(self.storage.root), usage.free, usage.total)
            for res in await asyncio.wait_for(
                    asyncio.gather(*[g.resources.remote() for g in self.actors.generators.values()]), timeout=5.0):
                m.generator(res)  # one GeneratorActor per served backend
        except Exception as exc:  # noqa: BLE001 - telemetry never fails a health check
            log.warning("metrics sample failed: %s: %s", type(exc).__name__, exc)
