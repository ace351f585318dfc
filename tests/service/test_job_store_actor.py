"""The store actor: one SQLite owner per cluster, same interface, survives its own restart."""

from __future__ import annotations

import pytest
import ray

from serve_app.jobs.backends import open_store
from serve_app.jobs.records import JobParams, JobRecord
from serve_app.jobs.store_actor import STORE_ACTOR_NAME, STORE_NAMESPACE


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_remote_store_has_the_local_interface_and_survives_restart(cluster, tmp_path):
    db = str(tmp_path / "jobs.sqlite3")
    store = open_store("actor", db)
    rec = store.create(JobParams(audio_path="a.wav", video_path="v.mp4"), priority=3)
    assert isinstance(rec, JobRecord) and rec.status == "queued"
    assert store.claimable() == [rec.id]
    claimed = store.claim(rec.id, "owner-1", 5.0)
    assert claimed.status == "running" and len(claimed.attempts) == 1
    assert store.heartbeat(rec.id, "owner-1", 5.0, progress=0.5, stage="generate_write")

    # A second client (another replica) reaches the same actor, not a second database.
    other = open_store("actor", db)
    assert other.get(rec.id).progress == 0.5

    actor = ray.get_actor(STORE_ACTOR_NAME, namespace=STORE_NAMESPACE)
    ray.kill(actor, no_restart=False)  # the process dies; Ray restarts it, the file keeps the records
    assert store.get(rec.id).stage == "generate_write"
    assert store.succeed(rec.id, "owner-1", "/r.mp4")
    assert other.get(rec.id).status == "succeeded"
    with pytest.raises(AttributeError):
        store.conn  # noqa: B018 - internals are not exposed remotely


def test_local_mode_is_a_plain_store(tmp_path):
    from serve_app.jobs.sqlite_store import SqliteJobStore as JobStore

    assert isinstance(open_store("local", str(tmp_path / "j.sqlite3")), JobStore)
