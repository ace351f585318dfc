"""Blocking work awaited from an event loop, on thread pools of its own.

Serve sizes a replica's default executor by its (fractional) CPUs, so store calls (heartbeats!),
status reads and media checks would queue behind each other there. Each lane is a small pool of its
own: a slow media check never delays a heartbeat.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from serve_app.jobs.store import STORE_METHODS, JobStore


class BlockingLane:
    def __init__(self, name: str, workers: int):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class AsyncJobStore:
    """``await astore.get(job_id)``: every ``JobStore`` method, run on the store's own lane."""

    def __init__(self, store: JobStore, workers: int = 8, name: str = "lipserve-store"):
        self.sync = store
        self.lane_name = name
        self.lane = BlockingLane(name, workers)
        self._wake_lane: BlockingLane | None = None

    async def wait_for_work(self, timeout: float) -> bool:
        """``JobStore.wait_for_work`` on a thread of its own: it blocks for up to ``timeout``, and
        must hold no thread the store calls need. Every backend has it (PostgreSQL: LISTEN/NOTIFY
        across processes and clusters; the others: this process's events, else a poll timeout), so
        a dispatcher uses it as its wake-up source whatever the store is."""
        if self._wake_lane is None:
            self._wake_lane = BlockingLane(f"{self.lane_name}-wake", 1)
        return await self._wake_lane.run(self.sync.wait_for_work, timeout)

    def __getattr__(self, name: str):
        if name not in STORE_METHODS:
            raise AttributeError(name)
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.lane.run(method, *args, **kwargs)

        call.__name__ = name
        return call
