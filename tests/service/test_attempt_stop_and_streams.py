"""Over real HTTP on a real Ray cluster, with API keys on:

- a dead attempt's writer stops: after a ``stage_timeout`` the call Ray re-sends to the restarted
  writer ends at its first frame, and a cancelled job's slow writer ends within about one frame
  (``actors/stop_token.py``, the ``writer_slow`` chaos fault);
- many SSE streams from several clients on a running job never starve its heartbeats: the lease
  holds, one attempt, no takeover, success;
- the live HLS routes take the bearer header or ``?access_token=``; every other route refuses the
  query-string key (401).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from ray import serve

from tests.service.harness import BOX, Client, deploy, make_media, small_args, start_cluster, stop_cluster, wait_until

TENANTS = {"alice": "alice-key-0123456789abcdef", "bob": "bob-key-0123456789abcdef00",
           "carol": "carol-key-0123456789abcdef", "ops": "ops-key-0123456789abcdef000"}
STREAMS_PER_CLIENT = 5
SLOW_FRAME_S = 1.0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    port = start_cluster()
    root = tmp_path_factory.mktemp("stop")
    keys = root / "keys.txt"
    keys.write_text("".join(f"{t}:{k}\n" for t, k in TENANTS.items()))
    chaos = root / "faults"
    chaos.mkdir()
    deploy(small_args(
        root / "storage", chaos_dir=str(chaos),
        auth={"keys_file": str(keys), "admin_tenants": ["ops"]},
        writer={"pool_size": 2, "num_cpus": 0.1, "segment_frames": 25},
        jobs={"lease_s": 4, "heartbeat_s": 0.5, "retry_backoff_s": 0.2, "min_stuck_s": 4, "stuck_factor": 4,
              "sse_max_streams_per_client": STREAMS_PER_CLIENT, "sse_poll_s": 0.05},
        retention={"min_free_bytes": 0}))
    base = f"http://127.0.0.1:{port}"
    clients = {t: Client(base, k) for t, k in TENANTS.items()}
    Client(base).wait_http("/readyz", 200)
    yield clients, root / "media", chaos, base
    serve.delete("lipserve")
    stop_cluster()


def _frame_log(chaos: Path) -> dict[str, list[tuple[int, float, bool]]]:
    """writer_frames.log by stop token: [(pid, unix s, stopped)] in order."""
    by_token: dict[str, list] = defaultdict(list)
    path = chaos / "writer_frames.log"
    for line in (path.read_text().splitlines() if path.exists() else []):
        token, pid, t, stopped = line.split()
        by_token[token].append((int(pid), float(t), stopped == "1"))
    return by_token


def _submit(client: Client, media: Path, seconds: float, seed: int) -> str:
    audio, video = make_media(media, seconds, seed=seed)
    r = client.submit_files(audio, video, box=BOX)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_a_timed_out_attempts_resent_writer_call_stops_at_once(env):
    clients, media, chaos, _ = env
    (chaos / "writer_log").write_text("")  # every writer call logs its frame checks
    (chaos / "writer_slow").write_text(str(SLOW_FRAME_S))  # one call: 1 s per frame (25 s a segment)
    job = _submit(clients["alice"], media, 4.0, seed=11)
    rec = clients["alice"].wait(job, timeout=150)
    (chaos / "writer_log").unlink()
    assert rec["status"] == "succeeded", rec
    assert [a["error"]["code"] if a["error"] else None for a in rec["attempts"]] == ["stage_timeout", None]
    log = _frame_log(chaos)
    first = min(log, key=lambda t: log[t][0][1])  # attempt 1's token: the first to write
    stopped = [(pid, t) for pid, t, s in log[first] if s]
    assert stopped, f"no call of the timed-out attempt saw its stop token: {log[first][-5:]}"
    # The writer restarted by restart_stuck got attempt 1's call again from Ray: it did no frame of it.
    for pid, _ in stopped:
        assert not [t for p, t, s in log[first] if p == pid and not s], f"writer {pid} worked for a dead attempt"
    assert len(log) == 2  # attempt 2 wrote the missing segment under its own token


def test_a_cancelled_jobs_slow_writer_stops_within_a_frame(env):
    clients, media, chaos, _ = env
    (chaos / "writer_frames.log").unlink(missing_ok=True)
    (chaos / "writer_slow").write_text(str(SLOW_FRAME_S))
    alice = clients["alice"]
    job = _submit(alice, media, 2.0, seed=12)
    wait_until(lambda: sum(map(len, _frame_log(chaos).values())) >= 3, "the slow writer is at work", timeout=60)
    cancelled_at = time.time()
    assert alice.http.delete(f"/v1/jobs/{job}").status_code == 200
    wait_until(lambda: any(s for _, _, s in next(iter(_frame_log(chaos).values()))), "the writer saw the stop",
               timeout=15)
    lines = next(iter(_frame_log(chaos).values()))
    after = [t for _, t, s in lines if t > cancelled_at and not s]
    # The heartbeat sees the cancel within heartbeat_s; then at most the frame in progress.
    assert len(after) <= 3, f"{len(after)} frames after the cancel"
    assert lines[-1][2] and lines[-1][1] - cancelled_at < 0.5 + 2 * SLOW_FRAME_S + 1.0
    assert alice.wait(job)["status"] == "cancelled"
    # The writer is free again: a new job renders at normal speed.
    t0 = time.monotonic()
    assert alice.wait(_submit(alice, media, 1.0, seed=13), timeout=60)["status"] == "succeeded"
    assert time.monotonic() - t0 < 25


def test_many_event_streams_never_starve_heartbeats(env):
    clients, media, _, base = env
    job = _submit(clients["alice"], media, 6.0, seed=14)
    clients["alice"].wait(job, statuses=("running",), timeout=60)
    finals: list[str] = []
    errors: list[str] = []
    opened: list[str] = []

    def consume(tenant: str):
        try:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TENANTS[tenant]}"}, timeout=120) as h:
                with h.stream("GET", f"/v1/jobs/{job}/events") as s:
                    assert s.status_code == 200, s.status_code
                    opened.append(tenant)
                    events = [ln for ln in s.iter_lines() if ln.startswith("event:")]
                    finals.append(events[-1])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{tenant}: {exc!r}")

    # alice owns the job; the admin (ops) may watch it too: two clients at their cap each.
    threads = [threading.Thread(target=consume, args=(t,), daemon=True)
               for t in ("alice", "ops") for _ in range(STREAMS_PER_CLIENT)]
    for t in threads:
        t.start()
    wait_until(lambda: len(opened) == len(threads), "every stream open", timeout=30)
    with clients["alice"].http.stream("GET", f"/v1/jobs/{job}/events") as extra:  # the cap was really reached
        assert extra.status_code == 429
    lease_margins = []
    while (rec := clients["ops"].job(job))["status"] == "running":
        if rec.get("lease_until"):
            lease_margins.append(rec["lease_until"] - time.time())
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert rec["status"] == "succeeded" and len(rec["attempts"]) == 1, rec
    assert not [i for a in rec["attempts"] for i in a.get("incidents") or [] if i["code"] == "worker_lost"]
    assert lease_margins and min(lease_margins) > 0, lease_margins
    assert finals == ["event: final"] * len(threads)


def test_hls_takes_the_bearer_header_or_access_token_and_only_there(env):
    clients, media, _, base = env
    alice = clients["alice"]
    job = _submit(alice, media, 1.0, seed=15)
    assert alice.wait(job)["status"] == "succeeded"
    playlist = f"/v1/jobs/{job}/hls/index.m3u8"
    r = alice.http.get(playlist)
    assert r.status_code == 200 and r.text.startswith("#EXTM3U"), r.text
    segment = next(ln for ln in r.text.splitlines() if ln.endswith(".m4s"))
    anon = httpx.Client(base_url=base, timeout=30)
    key = TENANTS["alice"]
    assert anon.get(playlist, params={"access_token": key}).text == r.text
    assert anon.get(f"/v1/jobs/{job}/hls/{segment}", params={"access_token": key}).status_code == 200
    assert anon.get(f"/v1/jobs/{job}/hls/init.mp4", params={"access_token": key}).status_code == 200
    assert anon.get(playlist).status_code == 401
    assert anon.get(playlist, params={"access_token": "wrong-key-0123456789abcdef"}).status_code == 401
    assert anon.get(playlist, params={"access_token": TENANTS["bob"]}).status_code == 404  # another tenant
    for path in (f"/v1/jobs/{job}", "/v1/jobs", f"/v1/jobs/{job}/result", f"/v1/jobs/{job}/events", "/v1/avatars"):
        r = anon.get(path, params={"access_token": key})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
