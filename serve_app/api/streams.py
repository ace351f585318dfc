"""Server-Sent Events for ``GET /v1/jobs/{id}/events``: one watcher per job, shared by its streams.

A watcher polls the job's durable record on a store lane of its own (``AsyncJobStore`` with its own
threads), so a thousand open streams cost one read per job per ``sse_poll_s`` and can never queue
ahead of the store calls that keep jobs alive (heartbeats, claims) or of the API's own reads. Each
stream gets the latest snapshot through a one-slot mailbox (a slow client skips intermediate
progress, never the final event), lasts at most ``sse_max_duration_s``, and a client (tenant +
address) may hold at most ``sse_max_streams_per_client`` at once (429). When this process learns
that a job may have changed (its dispatch to a pipeline replica returned: it ended or was released),
``poke`` makes the watcher read the record now instead of at its next poll, so a client following
the stream gets the final event as soon as the record says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from contextlib import contextmanager
from typing import AsyncIterator, Callable

from serve_app.api.admission import queue_full
from serve_app.jobs.records import JobRecord

log = logging.getLogger("lipserve.sse")


class _Watcher:
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.latest: JobRecord | None = None
        self.gone = False
        self.changed = asyncio.Condition()
        self.poked = asyncio.Event()  # read the record now, do not wait for the next poll
        self.subscribers = 0
        self.task: asyncio.Task | None = None


class JobWatchers:
    def __init__(self, store, poll_s: float, max_duration_s: float, max_per_client: int, retry_after_s: int = 5,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store  # an AsyncJobStore on the streams' own lane
        self.poll_s, self.max_duration_s = poll_s, max_duration_s
        self.max_per_client, self.retry_after_s = max_per_client, retry_after_s
        self.clock = clock
        self._watchers: dict[str, _Watcher] = {}
        self._clients: Counter[str] = Counter()

    @property
    def active_watchers(self) -> int:
        return len(self._watchers)

    @contextmanager
    def client_slot(self, client: str):
        if self._clients[client] >= self.max_per_client:
            raise queue_full(f"this client already has {self._clients[client]} event streams open "
                             f"(limit {self.max_per_client})", self.retry_after_s)
        self._clients[client] += 1
        try:
            yield
        finally:
            self._clients[client] -= 1
            if self._clients[client] <= 0:
                del self._clients[client]

    async def _poll(self, w: _Watcher) -> None:
        try:
            while w.subscribers > 0:
                try:
                    rec = await self.store.get(w.job_id)
                except Exception:  # noqa: BLE001 - a store hiccup: keep the streams, try again
                    log.exception("event stream read of job %s failed", w.job_id)
                    rec = w.latest
                async with w.changed:
                    w.latest, w.gone = rec, rec is None
                    w.changed.notify_all()
                if rec is None or rec.terminal:
                    return
                try:  # the poll interval of the durable record, cut short by a poke
                    await asyncio.wait_for(w.poked.wait(), timeout=self.poll_s)
                except asyncio.TimeoutError:
                    pass
                w.poked.clear()
        finally:
            if self._watchers.get(w.job_id) is w:
                del self._watchers[w.job_id]

    def poke(self, job_id: str) -> None:
        """The job may have changed: its watcher, if any, reads the record at once."""
        w = self._watchers.get(job_id)
        if w is not None:
            w.poked.set()

    def _subscribe(self, job_id: str) -> _Watcher:
        w = self._watchers.get(job_id)
        if w is None or w.task is None or w.task.done():
            w = self._watchers[job_id] = _Watcher(job_id)
        w.subscribers += 1
        if w.task is None:
            w.task = asyncio.get_running_loop().create_task(self._poll(w))
        return w

    async def stream(self, job_id: str, render: Callable[[JobRecord], dict]) -> AsyncIterator[str]:
        """``progress`` events on change, then one ``final`` event (or ``timeout``)."""
        w = self._subscribe(job_id)
        deadline = self.clock() + self.max_duration_s
        last = None
        try:
            while True:
                async with w.changed:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        yield f"event: timeout\ndata: {json.dumps({'reason': 'max stream duration reached'})}\n\n"
                        return
                    snapshot = _snapshot(w.latest)
                    if snapshot == last and not w.gone:
                        try:
                            await asyncio.wait_for(w.changed.wait(), timeout=min(remaining, 15.0))
                        except asyncio.TimeoutError:
                            pass
                        continue
                    rec, gone = w.latest, w.gone
                if gone or rec is None:
                    return
                last = snapshot
                kind = "final" if rec.terminal else "progress"
                yield f"event: {kind}\ndata: {json.dumps(render(rec))}\n\n"
                if kind == "final":
                    return
                if w.task is not None and w.task.done() and not rec.terminal:  # watcher ended: restart it
                    w.subscribers -= 1
                    w = self._subscribe(job_id)
        finally:
            w.subscribers -= 1


def _snapshot(rec: JobRecord | None):
    if rec is None:
        return None
    return rec.status, round(rec.progress, 3), rec.stage, len(rec.attempts)
