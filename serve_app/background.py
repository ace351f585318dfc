"""The ingress replica's background loops, beside the dispatcher: the webhook worker (delivers the
durable outbox) and the retention sweeper. Both are safe to run on several replicas at once (the
outbox leases its rows; sweeping is idempotent) and both pick up where they left off after a
restart, because their state is in the job store."""

from __future__ import annotations

import asyncio
import logging

from serve_app.api.address_policy import AddressPolicy
from serve_app.api.url_fetch import SafeHttp
from serve_app.config import LipserveArgs
from serve_app.jobs.outbox import StoreOutbox
from serve_app.jobs.storage import Storage
from serve_app.jobs.webhooks import WebhookSecrets, WebhookWorker
from serve_app.retention import Sweeper

log = logging.getLogger("lipserve.background")


class IngressBackground:
    def __init__(self, args: LipserveArgs, store, storage: Storage):
        """``store``: an ``AsyncJobStore`` (its lane runs the blocking calls)."""
        self.args = args
        self.store = store
        w = args.webhooks
        poster = SafeHttp(AddressPolicy(allow_private=w.allow_private)).post
        self.webhooks = WebhookWorker(StoreOutbox(store.sync, lease_s=max(60.0, 3 * w.timeout_s)), poster,
                                      WebhookSecrets.from_env(), max_attempts=w.max_attempts, timeout_s=w.timeout_s,
                                      backoff_s=w.backoff_s, max_backoff_s=w.max_backoff_s,
                                      concurrency=w.concurrency, run_blocking=store.lane.run)
        self.sweeper = Sweeper(store.sync, storage, args.retention)
        self._tasks: list[asyncio.Task] = []
        self._stop: asyncio.Event | None = None

    def ensure_started(self) -> None:
        """Start the loops on the running event loop (idempotent; restarts one that died)."""
        loop = asyncio.get_running_loop()
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            self._stop = asyncio.Event()
            self._tasks = [loop.create_task(self._sweep_loop())]
            if self.args.webhooks.enabled:
                self._tasks.append(loop.create_task(self.webhooks.run(self._stop, poll_s=self.args.webhooks.poll_s)))

    def nudge_webhooks(self) -> None:
        self.webhooks.wake()

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.store.lane.run(self.sweeper.sweep)
            except Exception:  # noqa: BLE001 - a failed sweep is retried on the next interval
                log.exception("retention sweep failed")
            await asyncio.sleep(self.args.retention.sweep_interval_s)  # the sweep period, not a wait for readiness
