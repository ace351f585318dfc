"""The ingress deployment: serves the HTTP API (``serve_app/api``) and dispatches queued jobs to the
pipeline deployment. Light and CPU-only: it checks media headers, stores inputs and records jobs; it
never decodes the video or renders.

``build_app`` wraps ``IngressServer`` with ``serve.ingress(make_api)`` and ``serve.deployment`` using
``deployment_options(args)``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from serve_app.api.app import build_api
from serve_app.api.auth import ApiKeyRing
from serve_app.api.intake import JobIntake
from serve_app.api.services import ApiServices
from serve_app.api.streams import JobWatchers
from serve_app.background import IngressBackground
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.backends import open_job_store
from serve_app.jobs import fair_share
from serve_app.jobs.dispatcher import JobDispatcher
from serve_app.jobs.storage import Storage

log = logging.getLogger("lipserve.ingress")

DEPLOYMENT_NAME = "Ingress"
WAKE_WAIT_S = 5.0  # one wait_for_work call; the dispatcher calls it again and again


def deployment_options(args: LipserveArgs) -> dict[str, Any]:
    i = args.ingress
    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": i.num_replicas,
        "max_ongoing_requests": i.max_ongoing_requests,
        "max_queued_requests": i.max_queued_requests,
        "ray_actor_options": {"num_cpus": i.num_cpus},
    }


class IngressServer:
    def __init__(self, args: LipserveArgs | dict, pipeline):
        self.args = LipserveArgs.from_any(args)
        self.pipeline = pipeline
        store = AsyncJobStore(open_job_store(self.args), workers=16,
                              name="lipserve-db")
        # Woken by the store when a job is queued anywhere (with PostgreSQL: by any replica of any
        # cluster on the database, via NOTIFY), besides this replica's own nudges and the poll.
        self.dispatcher = JobDispatcher(self._claimable, self._run_on_pipeline, limit=self.args.dispatch_limit,
                                        poll_s=min(1.0, self.args.jobs.lease_s / 3),
                                        wake=lambda: store.wait_for_work(WAKE_WAIT_S))
        try:
            from serve_app.metrics import IngressMetrics

            metrics = IngressMetrics()
        except Exception:  # outside a Ray worker (unit use): no metrics
            metrics = None
        storage = Storage(self.args.storage_dir)
        a = self.args.auth
        keyring = ApiKeyRing.load(keys_file=a.keys_file, admin_tenants=a.admin_tenants)
        intake = JobIntake(self.args, store, storage, metrics, on_enqueued=self._job_enqueued)
        j = self.args.jobs
        # Event streams read the store on a lane of their own: never ahead of heartbeats or the API.
        stream_store = AsyncJobStore(store.sync, workers=4, name="lipserve-sse")
        watchers = JobWatchers(stream_store, j.sse_poll_s, j.sse_max_duration_s, j.sse_max_streams_per_client,
                               j.retry_after_s)
        self.services = ApiServices(args=self.args, store=store, storage=storage, intake=intake,
                                    readiness=self.readiness, watchers=watchers, keyring=keyring)
        self.background = IngressBackground(self.args, store, storage)
        self._dispatched: dict[str, str] = {}  # job id -> tenant, of this replica's dispatches in flight
        try:  # start at once when constructed on the event loop, else on the first health check
            self._start_loops()
        except RuntimeError:
            pass

    def _start_loops(self) -> None:
        self.dispatcher.ensure_started()
        self.background.ensure_started()

    def _job_enqueued(self) -> None:
        self._start_loops()
        self.dispatcher.nudge()

    def _claimable(self) -> list[str]:
        """Claimable jobs in priority order, without those of tenants at their ``max_running``."""
        store = self.services.store.sync
        rows = store.claimable_with_tenants(limit=self.dispatcher.limit * 4)
        tenants = dict(rows)
        running = store.count_by_tenant("running") if rows else {}
        auth = self.args.auth
        chosen = fair_share.pick(rows, running, dict(self._dispatched),
                                 lambda t: auth.limits_for(t, is_admin=t in auth.admin_tenants).max_running)
        chosen = chosen[:max(0, self.dispatcher.limit - len(self.dispatcher.outstanding))]  # all get sent
        for job_id in chosen:
            self._dispatched[job_id] = tenants[job_id]
        return chosen

    async def _run_on_pipeline(self, job_id: str):
        try:
            return await self.pipeline.run_job.remote(job_id)
        finally:
            self._dispatched.pop(job_id, None)
            # The job may have just ended: its event streams and its webhook need not wait for a poll.
            self.services.watchers.poke(job_id)
            self.background.nudge_webhooks()

    async def check_health(self) -> None:
        self._start_loops()
        await self.services.store.count("queued")

    async def readiness(self) -> tuple[bool, dict]:
        # Readiness comes from Serve's own view: a RUNNING PipelineServer replica has finished its
        # constructor, warm-up included. Asking a replica directly would queue behind its running
        # jobs (max_ongoing_requests) and report a busy service as not ready.
        try:
            running = await self.services.store.lane.run(_running_pipeline_replicas)
        except Exception as exc:  # noqa: BLE001 - controller unreachable: not ready, say why
            return False, {"reason": f"cannot read Serve status: {exc!r}"}
        if running == 0:
            return False, {"reason": "no warm pipeline replica yet"}
        details: dict = {"pipeline_replicas": running}
        try:  # details of one replica's warm-up, when one has a free slot to answer quickly
            details["pipeline"] = await asyncio.wait_for(self.pipeline.ready.remote(), timeout=1.0)
        except Exception:  # noqa: BLE001 - optional detail only
            pass
        return True, details


def _running_pipeline_replicas() -> int:
    from ray import serve

    from serve_app.pipeline_server import DEPLOYMENT_NAME as PIPELINE

    app = serve.get_replica_context().app_name
    deployment = serve.status().applications[app].deployments.get(PIPELINE)
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0


def _replica_services() -> ApiServices:
    """The serving replica's services (Serve keeps the instance as the replica's servable object)."""
    from ray import serve

    return serve.get_replica_context().servable_object.services


def make_api() -> FastAPI:
    """Built on each ingress replica by ``serve.ingress``; OpenAPI is served at /docs."""
    return build_api(_replica_services)
