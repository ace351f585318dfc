"""The store's tenant columns, webhook outbox, request keys and retention marks (SQLite and a real
PostgreSQL server, through the ``store`` fixture of conftest.py),
the per-tenant dispatch pick, and the retention sweeper over real files."""

from __future__ import annotations

import errno
import json
import math
import os
import sqlite3

import pytest

from actors.errors import ErrorCode, StorageFullError, as_lipserve_error, decode_failure
from serve_app.config import RetentionSettings
from serve_app.jobs import fair_share
from serve_app.jobs.outbox import StoreOutbox, delivery_view
from serve_app.jobs.records import JobParams
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.storage import Storage
from serve_app.retention import Sweeper

T0 = 1_000_000.0


def P() -> JobParams:
    return JobParams(audio_path="/a.wav", video_path="/v.mp4")


def test_tenants_filter_lists_and_counts(store):
    store.create(P(), job_id="a1", tenant="alice", now=T0)
    store.create(P(), job_id="a2", tenant="alice", now=T0 + 1)
    store.create(P(), job_id="b1", tenant="bob", now=T0 + 2)
    assert [r.id for r in store.list(tenant="alice")] == ["a2", "a1"]
    assert store.count("queued", tenant="bob") == 1 and store.count(tenant="carol") == 0
    store.claim("a1", "w", 6, now=T0 + 3)
    assert store.count_by_tenant("running") == {"alice": 1}
    assert store.claimable_with_tenants(now=T0 + 3) == [("a2", "alice"), ("b1", "bob")]


def test_old_files_get_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0,"
                 " params TEXT, meta TEXT, progress REAL NOT NULL DEFAULT 0, stage TEXT, timings TEXT NOT NULL"
                 " DEFAULT '{}', attempts TEXT NOT NULL DEFAULT '[]', error TEXT, result_path TEXT, owner TEXT,"
                 " lease_until REAL, next_attempt_at REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL,"
                 " updated_at REAL NOT NULL, started_at REAL, finished_at REAL)")
    conn.execute("INSERT INTO jobs (id, status, created_at, updated_at) VALUES ('old', 'queued', 1, 1)")
    conn.commit()
    conn.close()
    with SqliteJobStore(path) as s:
        assert s.get("old").tenant == "default" and s.get("old").expired_at is None


def test_terminal_job_with_callback_gets_one_outbox_row(store):
    store.create(P(), job_id="j", tenant="alice", meta={"callback_url": "https://example.com/h"}, now=T0)
    store.create(P(), job_id="quiet", now=T0)
    store.claim("j", "w", 6, now=T0)
    assert store.deliveries("j") == []
    assert store.succeed("j", "w", "/r.mp4", now=T0 + 1)
    store.cancel("j", now=T0 + 2)  # already terminal: no second row
    store.cancel("quiet", now=T0 + 2)  # no callback: no row
    rows = store.deliveries("j")
    assert len(rows) == 1 and store.deliveries("quiet") == []
    body = json.loads(rows[0]["body"])
    assert body["id"] == "j" and body["status"] == "succeeded" and "result_path" not in body

    outbox = StoreOutbox(store, lease_s=30)
    [d] = outbox.due(T0 + 3, 10)
    assert d.url == "https://example.com/h" and d.tenant == "alice" and d.attempts == 0
    assert outbox.due(T0 + 4, 10) == []  # leased: another worker does not get it
    outbox.mark_failed(d.id, T0 + 5, "HTTP 500")
    assert delivery_view(store.deliveries("j")) == {"status": "pending", "attempts": 1, "last_error": "HTTP 500",
                                                    "next_attempt_at": T0 + 5}
    [d] = outbox.due(T0 + 6, 10)
    assert d.attempts == 1
    outbox.mark_delivered(d.id)
    assert delivery_view(store.deliveries("j"))["status"] == "delivered"
    assert store.outbox_due(now=T0 + 10_000) == []


def test_request_keys_reserve_replay_expire(store):
    assert store.reserve_key("idem:alice:k", "fp1", "job1", T0 + 100, now=T0) is None
    assert store.reserve_key("idem:alice:k", "fp2", "job2", T0 + 100, now=T0 + 1) == ("job1", "fp1")
    assert store.reserve_key("idem:bob:k", "fp2", "job3", T0 + 100, now=T0 + 1) is None  # other tenant
    assert store.reserve_key("idem:alice:k", "fp2", "job4", T0 + 300, now=T0 + 200) is None  # expired: replaced
    assert store.reserve_key("duix:default:c", "fp", "c", math.inf, now=T0) is None
    assert store.reserve_key("duix:default:c", "fp", "c", math.inf, now=T0 * 10) == ("c", "fp")  # forever
    assert store.release_key("idem:bob:k") and store.reserve_key("idem:bob:k", "x", "j", T0 + 9, now=T0) is None


def test_fair_share_holds_back_busy_tenants():
    rows = [("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("a3", "alice"), ("c1", "carol")]
    caps = {"alice": 2, "bob": 1, "carol": 1}
    assert fair_share.pick(rows, {"alice": 1}, {}, caps.get) == ["a1", "b1", "c1"]
    assert fair_share.pick(rows, {}, {"x": "bob"}, caps.get) == ["a1", "a2", "c1"]
    assert fair_share.pick(rows, {}, {"a1": "alice"}, caps.get) == ["a2", "b1", "c1"]


def test_sweeper_expires_results_avatars_and_stale_temp(tmp_path, store):
    storage = Storage(tmp_path / "storage")
    settings = RetentionSettings(result_ttl_s=100, avatar_ttl_s=1000, stale_temp_s=50)
    result = storage.result_path("old")
    result.write_bytes(b"mp4")
    store.create(P(), job_id="old", now=T0)
    store.claim("old", "w", 6, now=T0)
    store.succeed("old", "w", str(result), now=T0)
    store.create(P(), job_id="live", now=T0)
    (storage.root / "jobs" / "old" / "segments").mkdir(parents=True)
    (storage.root / "jobs" / "live" / "inputs").mkdir(parents=True)
    (storage.root / "jobs" / "gone").mkdir()
    avatar = storage.avatar_cache_dir / "k1"
    avatar.mkdir()
    tmp_avatar = storage.avatar_cache_dir / ".k2.tmp"
    tmp_avatar.mkdir()
    for p in (avatar, tmp_avatar, *(storage.root / "jobs").iterdir()):
        os.utime(p, (T0, T0))
    report = Sweeper(store, storage, settings).sweep(now=T0 + 101)
    assert report.expired_jobs == ["old"] and not result.exists()
    rec = store.get("old")
    assert rec.expired_at == T0 + 101 and rec.result_path is None and rec.status == "succeeded"
    assert rec.to_api()["result_expired"] is True
    assert not (storage.root / "jobs" / "gone").exists() and not tmp_avatar.exists()
    assert (storage.root / "jobs" / "live").exists() and avatar.exists()  # queued job; avatar still fresh
    Sweeper(store, storage, settings).sweep(now=T0 + 1001)
    assert not avatar.exists()


def test_disk_full_is_not_transient():
    err = as_lipserve_error(OSError(errno.ENOSPC, "No space left on device"), stage="write")
    assert isinstance(err, StorageFullError) and not err.retryable and err.code == ErrorCode.INSUFFICIENT_STORAGE
    err = decode_failure(OSError(errno.ENOSPC, "full"), "clip.mp4: cannot write", "clip.mp4")
    assert isinstance(err, StorageFullError) and not err.retryable
    assert decode_failure(OSError(errno.EIO, "io"), "x", "x").retryable
