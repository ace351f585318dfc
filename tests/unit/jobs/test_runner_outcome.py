"""The runner's reading of a ``succeed`` that answered False: cancelled / taken over, or a success
whose COMMIT went through while its answer was lost (the retried transaction then finds the job
already succeeded by this very owner)."""

from __future__ import annotations

import asyncio

from serve_app.config import LipserveArgs
from serve_app.job_runner import JobRunner
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.records import JobParams
from serve_app.jobs.storage import Storage
from serve_app.ray_actors import PipelineActors


def _runner(store, tmp_path, owner: str) -> JobRunner:
    args = LipserveArgs(storage_dir=str(tmp_path / "storage"))
    actors = PipelineActors(generators={}, geometries={}, writers=[])  # no render in these tests
    return JobRunner(args, AsyncJobStore(store), Storage(args.storage_dir), actors, owner)


def test_a_success_whose_answer_was_lost_counts_as_ours(store, tmp_path):
    rec = store.create(JobParams(audio_path="a.wav", video_path="v.mp4"))
    store.claim(rec.id, "me", 5.0)
    assert store.succeed(rec.id, "me", "/r/result.mp4")  # committed; the client never heard back
    assert store.succeed(rec.id, "me", "/r/result.mp4") is False  # what the retried transaction says
    runner = _runner(store, tmp_path, "me")
    assert asyncio.run(runner._succeeded_here(rec.id, "/r/result.mp4")) is True
    assert asyncio.run(_runner(store, tmp_path, "someone-else")._succeeded_here(rec.id, "/r/result.mp4")) is False
    assert asyncio.run(runner._succeeded_here(rec.id, "/r/other.mp4")) is False


def test_taken_over_or_cancelled_is_not_a_success(store, tmp_path):
    taken = store.create(JobParams(audio_path="a.wav", video_path="v.mp4"), now=100.0)
    store.claim(taken.id, "me", 5.0, now=100.0)
    store.claim(taken.id, "successor", 5.0, now=110.0)  # our lease lapsed
    assert store.succeed(taken.id, "successor", "/r/result.mp4", now=111.0)
    assert store.succeed(taken.id, "me", "/r/result.mp4", now=112.0) is False
    runner = _runner(store, tmp_path, "me")
    assert asyncio.run(runner._succeeded_here(taken.id, "/r/result.mp4")) is False

    cancelled = store.create(JobParams(audio_path="a.wav", video_path="v.mp4"))
    store.claim(cancelled.id, "me", 5.0)
    store.cancel(cancelled.id)
    assert asyncio.run(runner._succeeded_here(cancelled.id, "/r/result.mp4")) is False


def test_errors_show_the_clients_names_and_no_server_path(store, tmp_path):
    """An attempt's error names the client's files by the names it gave, and any other file under
    storage_dir (a segment, the job's AAC track) relative to ``<storage>``."""
    from actors.errors import InternalError, UnreadableFileError, with_client_names

    runner = _runner(store, tmp_path, "me")
    root = runner.storage.root
    audio = str(root / "jobs" / "j1" / "inputs" / "audio.wav")
    rec = store.create(JobParams(audio_path=audio, video_path=str(root / "avatars" / "t.mp4"),
                                 display={"audio": "speech.wav", "video": "presenter.mp4"}))
    names = runner.client_names(store.get(rec.id))
    client = with_client_names(UnreadableFileError("cannot decode audio", path=audio), names)
    assert client.message == "speech.wav: cannot decode audio" and client.path == "speech.wav"
    segment = root.resolve() / "jobs" / "j1" / "segments" / "seg_00003.mp4"
    internal = with_client_names(InternalError("segment file is missing", path=str(segment)), names)
    assert internal.message == "<storage>/jobs/j1/segments/seg_00003.mp4: segment file is missing"
    assert str(tmp_path) not in internal.message
