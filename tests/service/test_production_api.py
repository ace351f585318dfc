"""The production API over real HTTP on a real Ray cluster: API keys and tenants, isolation on every
route, signed webhooks with redelivery, Idempotency-Key, retention (410), per-tenant bounds and the
hardened inputs (playlists, concat lists, body limits, hostile JSON, server paths, private URLs,
work bombs, Duix confinement and tombstones, SSE caps)."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from ray import serve

from serve_app.jobs.webhooks import SIGNATURE_HEADER, verify
from tests.media import ASSETS, synthetic_frames, write_video
from tests.service.harness import BOX, Client, deploy, make_media, small_args, start_cluster, stop_cluster, wait_until

ALICE, BOB, ROOT = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00", "root-key-0123456789abcdef00"
SECRET = "whsec-test-0123456789abcdef"


class Receiver:
    """A webhook receiver that answers 500 to the first delivery and 200 afterwards."""

    def __init__(self):
        self.deliveries: list[tuple[dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.deliveries.append((dict(self.headers), body))
                self.send_response(500 if len(outer.deliveries) == 1 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    os.environ["LIPSERVE_WEBHOOK_SECRET"] = SECRET  # inherited by the cluster's workers
    port = start_cluster()
    root = tmp_path_factory.mktemp("prod")
    keys = root / "keys.txt"
    keys.write_text(f"# tenants\nalice:{ALICE}\nbob:{BOB}\nroot:{ROOT}\n")
    duix_dir = root / "duix"
    (duix_dir / "temp").mkdir(parents=True)
    args = small_args(
        root / "storage",
        auth={"keys_file": str(keys), "admin_tenants": ["root"], "tenants": {"bob": {"max_queued": 0}}},
        webhooks={"allow_private": True, "backoff_s": 0.5, "poll_s": 0.2, "max_attempts": 4},
        retention={"result_ttl_s": 25, "sweep_interval_s": 1, "min_free_bytes": 0},
        jobs={"sse_max_streams_per_client": 2, "max_upload_bytes": 4_000_000},
        duix={"data_dir": str(duix_dir), "delete_after_report": True})
    deploy(args)
    base = f"http://127.0.0.1:{port}"
    clients = {name: Client(base, key) for name, key in (("alice", ALICE), ("bob", BOB), ("root", ROOT))}
    clients["anon"] = Client(base)
    clients["anon"].wait_http("/readyz", 200)
    media = root / "media"
    yield clients, media, duix_dir, root / "storage"
    serve.delete("lipserve")
    stop_cluster()
    os.environ.pop("LIPSERVE_WEBHOOK_SECRET", None)


def test_keys_are_required_on_v1_and_probes_stay_open(env):
    c = env[0]
    for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs"), ("DELETE", "/v1/jobs/x"),
                         ("POST", "/v1/avatars"), ("POST", "/easy/submit"), ("GET", "/easy/query?code=x")):
        for headers in ({}, {"Authorization": "Bearer wrong-key-000000000000"}):
            r = c["anon"].http.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
    assert c["anon"].http.get("/healthz").status_code == 200
    assert c["anon"].http.get("/readyz").status_code == 200
    assert c["anon"].http.get("/openapi.json").status_code == 200


def test_tenant_isolation_views_and_signed_webhook_redelivery(env):
    c, media = env[0], env[1]
    receiver = Receiver()
    audio, video = make_media(media, 1.0, seed=1)
    r = c["alice"].submit_files(audio, video, box=BOX, callback_url=receiver.url)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    final = c["alice"].wait(job)
    assert final["status"] == "succeeded"
    # What a tenant sees: no server paths, hosts or pids.
    text = json.dumps(final)
    assert "result_path" not in final and "owner" not in final and str(env[3]) not in text
    assert final["params"]["inputs"] == {"audio": audio.name, "video": video.name}
    assert all("owner" not in a for a in final["attempts"])
    admin = c["root"].job(job)  # an admin key sees the details
    assert admin["result_path"] and admin["attempts"][0]["owner"] and admin["tenant"] == "alice"
    # Another tenant: 404 everywhere, and its list never shows the job.
    for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/result"),
                         ("GET", f"/v1/jobs/{job}/events"), ("DELETE", f"/v1/jobs/{job}")):
        r = c["bob"].http.request(method, path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
    assert job not in [j["id"] for j in c["bob"].http.get("/v1/jobs").json()["jobs"]]
    assert job in [j["id"] for j in c["alice"].http.get("/v1/jobs").json()["jobs"]]
    assert job in [j["id"] for j in c["root"].http.get("/v1/jobs").json()["jobs"]]
    assert c["alice"].http.get(f"/v1/jobs/{job}/result").status_code == 200

    # The webhook: the first delivery got a 500, the retry a 200; both signed over the exact body.
    wait_until(lambda: len(receiver.deliveries) >= 2, "webhook redelivered", timeout=30)
    for headers, body in receiver.deliveries:
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["id"] == job and json.loads(body)["status"] == "succeeded"
    assert receiver.deliveries[0][0]["Lipserve-Attempt"] == "1" and receiver.deliveries[1][0]["Lipserve-Attempt"] == "2"
    hook = wait_until(lambda: (c["alice"].job(job).get("webhook") or {}).get("status") == "delivered"
                      and c["alice"].job(job)["webhook"], "delivery state on the job")
    assert hook["attempts"] == 2
    receiver.server.shutdown()


def test_idempotency_key_replay_and_conflict(env):
    c, media = env[0], env[1]
    audio, video = make_media(media, 1.0, seed=2)
    key = {"Idempotency-Key": "order-42"}

    def post(**fields):
        with open(audio, "rb") as a, open(video, "rb") as v:
            return c["alice"].http.post("/v1/jobs", files={"audio": ("a.wav", a), "video": ("v.mp4", v)},
                                        data={"box": " ".join(map(str, BOX)), **fields}, headers=key)

    first = post()
    assert first.status_code == 202, first.text
    again = post()
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = post(pingpong="false")
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    # Another tenant's same key is its own.
    assert c["root"].http.get("/v1/jobs").status_code == 200
    assert c["alice"].wait(first.json()["id"])["status"] == "succeeded"


def test_retention_expires_results_with_410(env):
    c, media, _, storage = env
    audio, video = make_media(media, 1.0, seed=3)
    job = c["alice"].submit_files(audio, video, box=BOX).json()["id"]
    assert c["alice"].wait(job)["status"] == "succeeded"
    result = Path(c["root"].job(job)["result_path"])
    assert result.is_file()
    r = wait_until(lambda: (lambda r: r if r.status_code == 410 else None)(
        c["alice"].http.get(f"/v1/jobs/{job}/result")), "result expired", timeout=60)
    assert r.json()["error"]["code"] == "result_expired"
    rec = c["alice"].job(job)
    assert rec["result_expired"] is True and rec["expired_at"]
    assert not result.exists() and not (storage / "jobs" / job).exists()


def test_per_tenant_bounds_and_priority_ceiling(env):
    c, media = env[0], env[1]
    audio, video = make_media(media, 1.0, seed=4)
    r = c["bob"].submit_files(audio, video)  # bob: max_queued 0
    assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]["code"] == "queue_full"
    r = c["alice"].submit_files(audio, video, priority=500)  # ceiling 100
    assert r.status_code == 422 and "priority" in r.json()["error"]["message"]


def _expect(r: httpx.Response, status: int, code: str, name: str | None = None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err
    if name:
        assert name in err["message"], err


def test_hardened_inputs(env):
    c, media = env[0], env[1]
    alice = c["alice"]
    audio, video = make_media(media, 1.0, seed=5)
    segment = media / "seg.ts"
    segment.write_bytes(video.read_bytes())
    playlist = media / "playlist.mp4"  # an HLS playlist named .mp4, pointing at a local segment
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{segment}\n#EXT-X-ENDLIST\n")
    concat = media / "list.wav"
    concat.write_text(f"ffconcat version 1.0\nfile '{audio}'\n")
    _expect(alice.submit_files(playlist, video), 422, "unreadable_file", "playlist.mp4")
    _expect(alice.submit_files(audio, playlist), 422, "unreadable_file", "playlist.mp4")
    _expect(alice.submit_files(concat, video), 422, "unreadable_file", "list.wav")
    # fps bomb
    fast = media / "fast.mp4"
    write_video(fast, synthetic_frames(30, 160, 120), 120)
    _expect(alice.submit_files(audio, fast), 422, "invalid_parameter", "fast.mp4")
    # Server paths: refused without input_roots; private URLs refused.
    _expect(alice.submit_json(audio=str(audio), video=str(video)), 422, "invalid_parameter", "input_roots")
    _expect(alice.submit_json(audio="http://127.0.0.1:9/a.wav", video=str(video)), 422, "invalid_parameter")
    # Multipart: only the expected parts.
    with open(audio, "rb") as a, open(video, "rb") as v:
        r = alice.http.post("/v1/jobs", files={"audio": ("a.wav", a), "video": ("v.mp4", v)}, data={"evil": "1"})
    _expect(r, 422, "invalid_parameter", "evil")
    # Chunked body over the limit: 413 while reading.
    def chunks():
        for _ in range(20):
            yield b"x" * 1_000_000
    r = alice.http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    _expect(r, 413, "media_too_large")
    # Hostile JSON and query parameters.
    _expect(alice.http.post("/v1/jobs", content=b"[" * 5000 + b"]" * 5000,
                            headers={"Content-Type": "application/json"}), 422, "invalid_parameter")
    _expect(alice.http.post("/v1/jobs", content=b'{"audio": NaN}', headers={"Content-Type": "application/json"}),
            422, "invalid_parameter")
    _expect(alice.http.get("/v1/jobs", params={"limit": 0}), 422, "invalid_parameter")
    _expect(alice.http.get("/v1/jobs", params={"offset": -1}), 422, "invalid_parameter")
    # Duix body cap.
    r = alice.http.post("/easy/submit", content=b"{" + b" " * 70_000 + b"}")
    assert r.status_code == 413
    assert alice.http.get("/healthz").status_code == 200


def test_duix_confinement_scoping_and_tombstone(env):
    c, media, duix_dir, _ = env
    alice = c["alice"]
    (duix_dir / "temp" / "x.wav").write_bytes((ASSETS / "demo_speech.wav").read_bytes())
    (duix_dir / "temp" / "x.mp4").write_bytes((ASSETS / "demo_template.mp4").read_bytes())
    outside = media / "outside.wav"
    outside.write_bytes((ASSETS / "demo_speech.wav").read_bytes())
    (duix_dir / "temp" / "link.wav").symlink_to(outside)
    for audio_url in ("../../media/outside.wav", str(outside), "link.wav", "/etc/passwd", "../../nope.wav"):
        r = alice.http.post("/easy/submit", json={"audio_url": audio_url, "video_url": "x.mp4", "code": "esc1"})
        body = r.json()
        assert body["code"] == 10002 and "Duix data dir" in body["msg"], (audio_url, body)
    task = "task-1"
    body = {"audio_url": "x.wav", "video_url": "x.mp4", "code": task}
    assert alice.http.post("/easy/submit", json=body).json()["code"] == 10000
    assert c["bob"].http.get("/easy/query", params={"code": task}).json()["code"] == 10004  # scoped
    deadline = time.monotonic() + 120
    while (reply := alice.http.get("/easy/query", params={"code": task}).json())["data"].get("status") == 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert reply["data"]["status"] == 2, reply
    # delete_after_report: forgotten, but the code stays used.
    assert alice.http.get("/easy/query", params={"code": task}).json()["code"] == 10004
    assert alice.http.post("/easy/submit", json=body).json()["code"] == 10003
    # Bob's own task with the same code is a different task.
    # (bob has max_queued 0: the queue bound answers, not a lock conflict)
    assert c["bob"].http.post("/easy/submit", json=body).status_code == 429


def test_event_streams_are_capped_per_client(env):
    c, media = env[0], env[1]
    audio, video = make_media(media, 20.0, seed=6)
    job = c["alice"].submit_files(audio, video, box=BOX).json()["id"]
    with httpx.Client(base_url=c["alice"].base, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60) as http:
        with http.stream("GET", f"/v1/jobs/{job}/events") as s1, http.stream("GET", f"/v1/jobs/{job}/events") as s2:
            assert s1.status_code == s2.status_code == 200
            r = http.get(f"/v1/jobs/{job}/events")
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        c["alice"].http.delete(f"/v1/jobs/{job}")
        with http.stream("GET", f"/v1/jobs/{job}/events") as s3:  # slots are given back
            lines = [ln for ln in s3.iter_lines() if ln.startswith("event:")]
            assert lines[-1] == "event: final"
