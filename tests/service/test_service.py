"""The service over real HTTP on a real local Ray cluster: job API, concurrency, queue bound,
cancellation, typed 4xx errors, SSE, readiness gated by warm-up."""

from __future__ import annotations

import json
import math
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import pytest
from ray import serve

from tests.media import ASSETS, synthetic_frames, write_video
from tests.service.harness import BOX, Client, deploy, make_media, small_args, wait_until


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def service(cluster, tmp_path_factory, media):
    storage = tmp_path_factory.mktemp("storage")
    # Server paths only under the media dir; URL inputs from a local server need allow_private_urls.
    deploy(small_args(storage, jobs={"input_roots": [str(media)], "allow_private_urls": True}))
    client = Client(f"http://127.0.0.1:{cluster}")
    client.wait_http("/readyz", 200)
    yield client, storage
    serve.delete("lipserve")


def decode_info(data: bytes, tmp: Path) -> tuple[int, float, bool]:
    p = tmp / "result.mp4"
    p.write_bytes(data)
    with av.open(str(p)) as c:
        frames = sum(1 for _ in c.decode(video=0))
        fps = float(c.streams.video[0].average_rate)
        has_aac = any(s.codec_context.name == "aac" for s in c.streams.audio)
    return frames, fps, has_aac


def test_submit_progress_and_result(service, tmp_path):
    client, _ = service
    audio, video = ASSETS / "demo_speech.wav", ASSETS / "demo_template.mp4"
    r = client.submit_files(audio, video)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{job_id}"

    events = []
    with httpx.Client(base_url=client.base, timeout=120) as http, http.stream("GET", f"/v1/jobs/{job_id}/events") as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in s.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line[5:])))
                if kind == "final":
                    break
    kinds = [k for k, _ in events]
    assert kinds[-1] == "final" and "progress" in kinds
    progress = [e["progress"] for k, e in events if k == "progress"]
    assert progress == sorted(progress)
    final = events[-1][1]
    assert final["status"] == "succeeded", final
    assert set(final["timings"]) >= {"audio", "avatar", "generate_write", "finalize"}
    assert len(final["attempts"]) == 1 and final["attempts"][0]["error"] is None

    res = client.http.get(f"/v1/jobs/{job_id}/result")
    assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"
    frames, fps, has_aac = decode_info(res.content, tmp_path)
    with av.open(str(audio)) as c:
        seconds = c.streams.audio[0].duration * c.streams.audio[0].time_base
    assert frames == math.ceil(float(seconds) * fps) and has_aac

    listing = client.http.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"]
    assert job_id in [j["id"] for j in listing]


def test_six_concurrent_jobs_all_succeed(service, media):
    client, _ = service
    inputs = [make_media(media, 1.6, seed=seed) for seed in range(6)]

    def submit(seed):
        audio, video = inputs[seed]
        return client.submit_files(audio, video, box=BOX, priority=seed)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(submit, range(6)))
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    ids = [r.json()["id"] for r in responses]
    finals = [client.wait(i, timeout=180) for i in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 6, [f.get("error") for f in finals]
    # Several ran at once on the one replica: some pair of jobs overlapped in time.
    assert any(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
               for i, a in enumerate(finals) for b in finals[i + 1:])


def test_json_submission_with_server_paths_and_avatar(service, media):
    client, _ = service
    audio, video = make_media(media, 1.0, seed=11)
    r = client.submit_json(audio=str(audio), video=str(video), box=BOX, pingpong=False)
    assert r.status_code == 202, r.text
    assert client.wait(r.json()["id"])["status"] == "succeeded"

    with open(video, "rb") as v:
        reg = client.http.post("/v1/avatars", files={"video": ("presenter.mp4", v)})
    assert reg.status_code == 201, reg.text
    avatar_id = reg.json()["avatar_id"]
    r = client.submit_json(audio=str(audio), avatar_id=avatar_id, box=BOX)
    assert r.status_code == 202, r.text
    assert client.wait(r.json()["id"])["status"] == "succeeded"


def test_json_submission_with_http_urls(service, media):
    """Inputs fetched from http(s) URLs (a local file server here: no outside network)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    client, _ = service
    audio, video = make_media(media, 1.0, seed=12)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(media))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        r = client.submit_json(audio=f"{base}/{audio.name}", video=f"{base}/{video.name}", box=BOX)
        assert r.status_code == 202, r.text
        assert client.wait(r.json()["id"])["status"] == "succeeded"
        r = client.submit_json(audio=f"{base}/missing.wav", video=f"{base}/{video.name}")
        assert r.status_code == 422 and r.json()["error"]["code"] == "unreadable_file"
        assert "HTTP 404" in r.json()["error"]["message"] and "missing.wav" in r.json()["error"]["message"]
    finally:
        server.shutdown()


@pytest.mark.parametrize("case", ["garbage_audio", "video_as_audio", "audio_as_video", "missing_field",
                                  "unknown_avatar", "bad_json_path"])
def test_bad_input_is_a_typed_4xx(service, media, case):
    client, _ = service
    audio, video = make_media(media, 1.0, seed=5)
    garbage = media / "notes.wav"
    garbage.write_bytes(b"this is not audio at all" * 50)
    silent_video = media / "silent.mp4"
    if not silent_video.exists():
        write_video(silent_video, synthetic_frames(5, 64, 48), 25)
    if case == "garbage_audio":
        r, code, name = client.submit_files(garbage, video), "unreadable_file", "notes.wav"
    elif case == "video_as_audio":
        r, code, name = client.submit_files(silent_video, video), "no_audio_stream", "silent.mp4"
    elif case == "audio_as_video":
        r, code, name = client.submit_files(audio, audio), "no_video_stream", audio.name
    elif case == "missing_field":
        with open(audio, "rb") as a:
            r = client.http.post("/v1/jobs", files={"audio": ("a.wav", a)})
        code, name = "invalid_parameter", "video"
    elif case == "unknown_avatar":
        r, code, name = client.submit_json(audio=str(audio), avatar_id="abc123"), "invalid_parameter", "abc123"
    else:
        r, code, name = client.submit_json(audio="/nope/x.wav", video=str(video)), "invalid_parameter", "/nope/x.wav"
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and name in err["message"] and err["retryable"] is False
    assert client.http.get("/healthz").status_code == 200
    assert client.http.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def limited(cluster, tmp_path_factory):
    """One job at a time, a queue bound of 2, small uploads: for 429, priority and cancel."""
    storage = tmp_path_factory.mktemp("limited")
    args = small_args(storage, jobs={"max_queued_jobs": 2, "retry_after_s": 7, "max_upload_bytes": 2_000_000,
                                     "input_roots": [str(tmp_path_factory.mktemp("roots"))],
                                     "lease_s": 4, "heartbeat_s": 0.5},
                      pipeline={"max_ongoing_requests": 1, "num_cpus": 0.1, "graceful_shutdown_timeout_s": 2})
    deploy(args, name="limited", prefix="/limited")
    client = Client(f"http://127.0.0.1:{cluster}/limited")
    client.wait_http("/readyz", 200)
    yield client, storage
    serve.delete("limited")


def test_queue_bound_priority_and_cancel(limited, media):
    client, storage = limited
    long_audio, video = make_media(media, 40.0, seed=21)
    short_audio, _ = make_media(media, 0.8, seed=22)
    first = client.submit_files(long_audio, video, box=BOX)
    assert first.status_code == 202, first.text
    running = first.json()["id"]
    client.wait(running, predicate=lambda r: r["status"] == "running")
    low = client.submit_files(short_audio, video, box=BOX, priority=0).json()["id"]
    high = client.submit_files(short_audio, video, box=BOX, priority=5).json()["id"]

    assert client.http.get("/readyz").status_code == 200  # busy is still ready
    full = client.submit_files(short_audio, video, box=BOX)
    assert full.status_code == 429 and full.headers["retry-after"] == "7"
    assert full.json()["error"]["code"] == "queue_full" and full.json()["error"]["message"]

    # Cancel the running job: it stops, its slot frees, its temp files go.
    c = client.http.delete(f"/v1/jobs/{running}")
    assert c.status_code == 200 and c.json()["status"] == "cancelled"
    low_rec, high_rec = client.wait(low), client.wait(high)
    assert low_rec["status"] == high_rec["status"] == "succeeded"
    assert high_rec["started_at"] < low_rec["started_at"]  # priority overtook submission order
    rec = client.job(running)
    assert rec["status"] == "cancelled" and rec["error"]["code"] == "cancelled"
    wait_until(lambda: not (storage / "jobs" / running).exists(), "temp files of the cancelled job removed")
    assert client.http.get(f"/v1/jobs/{running}/result").status_code == 409

    # Cancel a queued job: it never runs.
    blocker = client.submit_files(long_audio, video, box=BOX).json()["id"]
    client.wait(blocker, predicate=lambda r: r["status"] == "running")
    queued = client.submit_files(short_audio, video, box=BOX).json()["id"]
    assert client.http.delete(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
    client.http.delete(f"/v1/jobs/{blocker}")
    assert client.wait(blocker)["status"] == "cancelled"
    assert client.job(queued)["attempts"] == []


def test_server_paths_outside_input_roots_are_refused(limited, media):
    client, _ = limited
    audio, video = make_media(media, 1.0, seed=32)
    r = client.submit_json(audio=str(audio), video=str(video))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
    assert "input_roots" in r.json()["error"]["message"] and str(audio) in r.json()["error"]["message"]
    r = client.submit_json(audio="/etc/passwd", video=str(video))
    assert r.status_code == 422 and "input_roots" in r.json()["error"]["message"]


def test_upload_over_limit_is_413(limited, media):
    client, _ = limited
    audio, video = make_media(media, 90.0, seed=31)  # ~2.9 MB wav > 2 MB limit
    r = client.submit_files(audio, video)
    assert r.status_code == 413 and r.json()["error"]["code"] == "media_too_large"
    assert audio.name in r.json()["error"]["message"]


def test_readyz_is_503_until_warmup_completes(cluster, tmp_path):
    gate_dir = tmp_path / "chaos"
    gate_dir.mkdir()
    (gate_dir / "hold_pipeline_ready").write_text("1")
    deploy(small_args(tmp_path / "storage", chaos_dir=str(gate_dir)), name="gated", prefix="/gated", blocking=False)
    client = Client(f"http://127.0.0.1:{cluster}/gated")
    try:
        client.wait_http("/healthz", 200, timeout=90)  # ingress is up ...
        assert client.http.get("/readyz").status_code == 503  # ... but no warm pipeline replica yet
        shutil.rmtree(gate_dir)
        assert client.wait_http("/readyz", 200, timeout=90).json()["status"] == "ready"
    finally:
        serve.delete("gated")


def test_cancelling_many_running_jobs_keeps_the_pipeline_responsive(service, media):
    """Regression: cancelling in-flight actor calls once stalled the actors for ~80 s."""
    import time

    from tests.service.harness import pipeline_handle

    client, storage = service
    audio, video = make_media(media, 20.0, seed=41)
    ids = [client.submit_files(audio, video, box=BOX).json()["id"] for _ in range(6)]
    client.wait(ids[0], predicate=lambda r: r["status"] == "running" and r["progress"] > 0.1)
    for job_id in ids:
        assert client.http.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    t0 = time.monotonic()
    pipeline_handle().actor_pids.remote().result(timeout_s=10)  # actors answer at once
    short, _ = make_media(media, 1.0, seed=42)
    job = client.submit_files(short, video, box=BOX).json()["id"]
    assert client.wait(job, timeout=60)["status"] == "succeeded"
    assert time.monotonic() - t0 < 30
    for job_id in ids:
        wait_until(lambda: not (storage / "jobs" / job_id).exists(), f"temp files of {job_id} removed")


def test_autoscaling_adds_a_pipeline_replica_under_load(cluster, tmp_path, media):
    """Busy replicas -> Serve starts another (warm) replica and both take jobs."""
    from tests.service.harness import ray_processes

    args = small_args(tmp_path / "storage", pipeline={
        "max_ongoing_requests": 1, "num_cpus": 0.1, "graceful_shutdown_timeout_s": 2,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 0.5,
                        "upscale_delay_s": 0, "downscale_delay_s": 5, "look_back_period_s": 1,
                        "metrics_interval_s": 0.5}})
    deploy(args, name="scaling", prefix="/scaling")
    client = Client(f"http://127.0.0.1:{cluster}/scaling")
    try:
        client.wait_http("/readyz", 200)
        audio, video = make_media(media, 30.0, seed=51)
        ids = [client.submit_files(audio, video, box=BOX).json()["id"] for _ in range(5)]
        wait_until(lambda: len(ray_processes("ray::ServeReplica:scaling:PipelineServer")) == 2,
                   "a second pipeline replica", timeout=90)
        finals = [client.wait(i, timeout=180) for i in ids]
        assert [f["status"] for f in finals] == ["succeeded"] * 5
        from serve_app.jobs.sqlite_store import SqliteJobStore

        with SqliteJobStore(tmp_path / "storage" / "jobs.sqlite3") as store:  # owners: not in tenant views
            owners = {store.get(f["id"]).attempts[-1].owner for f in finals}
        assert len(owners) == 2, owners  # the new replica ran jobs too
    finally:
        serve.delete("scaling")


def test_stopping_a_replica_drains_its_running_job(cluster, tmp_path, media):
    """Downscale / rolling update / delete: the replica finishes its job within the grace period."""
    from serve_app.jobs.sqlite_store import SqliteJobStore as JobStore

    storage = tmp_path / "storage"
    args = small_args(storage, pipeline={"num_cpus": 0.1, "graceful_shutdown_timeout_s": 60})
    deploy(args, name="drain", prefix="/drain")
    client = Client(f"http://127.0.0.1:{cluster}/drain")
    client.wait_http("/readyz", 200)
    audio, video = make_media(media, 30.0, seed=61)
    job_id = client.submit_files(audio, video, box=BOX).json()["id"]
    client.wait(job_id, predicate=lambda r: r["status"] == "running" and r["progress"] > 0.1)
    serve.delete("drain")  # returns once the replicas are gone
    rec = JobStore(str(storage / "jobs.sqlite3")).get(job_id)
    assert rec.status == "succeeded" and len(rec.attempts) == 1, (rec.status, rec.attempts)
