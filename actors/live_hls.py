"""The live HLS stream of one render: publishes finished segments in order while the job runs.

Segments finish out of order (several are in flight); the playlist only ever lists the contiguous
prefix that is published, so a player reads a gapless, growing EVENT playlist, and ``finish`` adds
``#EXT-X-ENDLIST`` once every segment is in it. Each segment's fragment is cut from the segment file
and the job's AAC track (which the driver has encoded once for the final join too) by a stream-copy
remux (``actors/media/hls.py``): small work, run in worker threads of the driver's process, so the
live stream never waits in a writer's queue behind the next segment.

A live stream is a preview: if publishing fails, the job goes on without it (an ``hls_unavailable``
incident says why) and the final MP4 is unaffected.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from actors.media import hls
from actors.plan import RenderPlan, Segment

INCIDENT = "hls_unavailable"


class LiveHls:
    def __init__(self, hls_dir: str | os.PathLike, plan: RenderPlan, audio_track: Awaitable[str],
                 on_first: Callable[[float], Any] | None = None,
                 on_failure: Callable[[str], Any] | None = None,
                 run: Callable[..., Awaitable[Any]] = asyncio.to_thread, started_at: float | None = None):
        self.dir = Path(hls_dir)
        self.plan = plan
        self.audio_track = audio_track  # resolves to the job's AAC track file (audio_track.py)
        self.on_first = on_first  # seconds from ``started_at`` (default: start()) to the first playable segment
        self.on_failure = on_failure
        self.run = run
        self.published: set[int] = set()
        self.listed = 0  # segments in the playlist (a contiguous prefix)
        self.failed: str | None = None
        self.first_playable_s: float | None = None
        self._target = max((s.n_frames for s in plan.segments), default=1) / float(plan.fps)
        self._tasks: list[asyncio.Future] = []
        self._audio: asyncio.Future | None = None
        self._lock = asyncio.Lock()
        self._t0 = started_at
        self._on_disk = 0

    def start(self) -> None:
        """Begin: the first segment is published as soon as it and the AAC track are both ready."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._on_disk = hls.listed_segments(self.dir)  # an earlier attempt's playlist: never shrink it
        self._audio = asyncio.ensure_future(self.audio_track)

    def segment_done(self, seg: Segment, path: str) -> None:
        if self.failed is None:
            self._tasks.append(asyncio.ensure_future(self._publish(seg, path)))

    async def _publish(self, seg: Segment, path: str) -> None:
        try:
            track = await asyncio.shield(self._audio)
            if not (self.dir / hls.segment_name(seg.index)).exists():  # an earlier attempt's is kept
                last = seg.index == len(self.plan.segments) - 1
                await self.run(hls.publish_segment, path, self.dir, seg.index, seg.start, seg.n_frames,
                               self.plan.fps, last, track)
            self.published.add(seg.index)
            await self._write_playlist(ended=False)
        except Exception as exc:  # noqa: BLE001 - a preview failure never fails the job
            await self._fail(f"segment {seg.index}: {type(exc).__name__}: {getattr(exc, 'message', exc)}")

    async def _write_playlist(self, ended: bool) -> None:
        async with self._lock:  # one writer at a time: a newer prefix is never overwritten by an older one
            n = self.listed
            while n in self.published:
                n += 1
            if n == self.listed and not ended:
                return
            entries = [hls.PlaylistEntry(s.index, s.n_frames / float(self.plan.fps))
                       for s in self.plan.segments[:n]]
            if n >= self._on_disk:  # players may already have read that many: an EVENT playlist only grows
                await self.run(hls.write_playlist, self.dir, entries, self._target, ended)
            first = self.listed == 0 and n > 0
            self.listed = n
        if first:
            self.first_playable_s = time.perf_counter() - self._t0
            if self.on_first:
                result = self.on_first(self.first_playable_s)
                if asyncio.iscoroutine(result):
                    await result

    async def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        if self.on_failure:
            result = self.on_failure(f"live HLS preview stopped: {reason}")
            if asyncio.iscoroutine(result):
                await result

    async def finish(self, timeout: float) -> bool:
        """Wait for the publications in flight; end the playlist if every segment is in it."""
        await self.settle(timeout)
        if self.failed is None and self.listed == len(self.plan.segments):
            await self._write_playlist(ended=True)
            return True
        if self.failed is None:
            await self._fail(f"{len(self.plan.segments) - self.listed} segments not published in {timeout:.0f} s")
        return False

    async def settle(self, timeout: float) -> None:
        """Let in-flight publications end (they are short), so nothing writes after a clean-up."""
        pending = [t for t in self._tasks + ([self._audio] if self._audio else []) if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        if self._audio is not None and self._audio.done() and not self._audio.cancelled():
            self._audio.exception()  # retrieved (its failure is reported by the segments)
