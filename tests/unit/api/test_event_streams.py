"""The job event streams (serve_app/api/streams.py): a poke reads the record at once, so a stream's
final event does not wait for the next poll of the durable record."""

from __future__ import annotations

import asyncio

from serve_app.api.streams import JobWatchers
from serve_app.jobs.records import JobRecord, JobStatus


class RecordsInMemory:
    """The one store call the watchers make, over a record the test changes."""

    def __init__(self, rec: JobRecord):
        self.rec = rec
        self.reads = 0

    async def get(self, job_id: str) -> JobRecord | None:
        self.reads += 1
        return self.rec if job_id == self.rec.id else None


def _events(watchers: JobWatchers, job_id: str):
    return watchers.stream(job_id, lambda r: {"status": r.status, "progress": r.progress})


def test_a_poke_delivers_the_final_event_without_waiting_for_the_poll():
    store = RecordsInMemory(JobRecord(id="j1", status=JobStatus.RUNNING, progress=0.5))
    watchers = JobWatchers(store, poll_s=60.0, max_duration_s=600.0, max_per_client=4)

    async def main():
        stream = _events(watchers, "j1")
        first = await asyncio.wait_for(stream.__anext__(), timeout=5)
        store.rec = store.rec.model_copy(update={"status": JobStatus.SUCCEEDED, "progress": 1.0})
        watchers.poke("j1")
        final = await asyncio.wait_for(stream.__anext__(), timeout=5)  # a 60 s poll would time out
        return first, final

    first, final = asyncio.run(main())
    assert first.startswith("event: progress") and '"progress": 0.5' in first
    assert final.startswith("event: final") and '"succeeded"' in final
    assert store.reads == 2


def test_a_poke_of_a_job_nobody_watches_is_a_no_op():
    store = RecordsInMemory(JobRecord(id="j1", status=JobStatus.RUNNING))
    watchers = JobWatchers(store, poll_s=60.0, max_duration_s=600.0, max_per_client=4)
    watchers.poke("j1")
    watchers.poke("other")
    assert watchers.active_watchers == 0 and store.reads == 0
