"""Job dispatcher: keeps the durable queue and the pipeline replicas in step.

The job store is the source of truth; dispatching is a hint. Each dispatch is one
``PipelineServer.run_job(id)`` request, which claims the job atomically (so a duplicate dispatch, from
a second ingress replica or after a restart, is harmless) and runs it to its end. Serve sees one
ongoing request per running job, which is what its autoscaling and ``max_ongoing_requests`` act on.

The dispatcher sends at most ``limit`` requests at once and always picks the claimable jobs in
priority order, so a high-priority job overtakes queued ones. It wakes up when a job is submitted or
a dispatch ends, and otherwise every ``poll_s`` to pick up retries whose backoff has passed and jobs
whose owner stopped heartbeating (lease expired) — which is also how jobs that were queued or running
when the application stopped are resumed when it starts again.

With ``wake`` (e.g. ``lambda: asyncio.to_thread(store.wait_for_work, 5.0)``) it also wakes when the
store reports work queued by anyone else: another ingress replica, or another cluster on the same
PostgreSQL database (``LISTEN/NOTIFY``), so such a job does not wait for the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger("lipserve.dispatcher")


class JobDispatcher:
    def __init__(self, claimable: Callable[[], list[str]], run: Callable[[str], Awaitable[object]],
                 limit: int, poll_s: float = 1.0, wake: Callable[[], Awaitable[object]] | None = None):
        self._claimable = claimable  # blocking; called in a thread
        self._run = run
        self.limit = max(1, limit)
        self.poll_s = poll_s
        self.outstanding: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # Each call returns an awaitable that completes when work may have arrived (truthy) or on
        # a timeout of its own (falsy); called again and again by _listen.
        self._wake_source = wake
        self._listen_task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        """Start the loop on the running event loop (idempotent; restarts a loop that died)."""
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())
        if self._wake_source is not None and (self._listen_task is None or self._listen_task.done()):
            self._listen_task = asyncio.get_running_loop().create_task(self._listen())

    def nudge(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self._dispatch_ready()
            except Exception:  # noqa: BLE001 - a DB hiccup must not kill the loop
                log.exception("dispatch pass failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    async def _listen(self) -> None:
        while True:
            try:
                if await self._wake_source():
                    self.nudge()
            except Exception:  # noqa: BLE001 - the poll still runs; do not spin on a broken source
                log.exception("wake-up source failed; relying on the poll")
                await asyncio.sleep(self.poll_s)

    async def _dispatch_ready(self) -> None:
        free = self.limit - len(self.outstanding)
        if free <= 0:
            return
        for job_id in await asyncio.to_thread(self._claimable):
            if free <= 0:
                break
            if job_id in self.outstanding:
                continue
            self.outstanding.add(job_id)
            asyncio.get_running_loop().create_task(self._dispatch(job_id))
            free -= 1

    async def _dispatch(self, job_id: str) -> None:
        try:
            await self._run(job_id)
        except Exception as exc:  # noqa: BLE001 - e.g. the pipeline replica died mid-job
            # The job record stays 'running' until its lease expires; then it is claimable again
            # and the next pass dispatches it to a live replica.
            log.warning("dispatch of job %s ended with %s: %s", job_id, type(exc).__name__, exc)
            # Back off before this slot is reused, so a failing pipeline is not hammered in a loop.
            await asyncio.sleep(self.poll_s)
        finally:
            self.outstanding.discard(job_id)
            self.nudge()
