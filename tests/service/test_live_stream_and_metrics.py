"""On a live service over a real Ray cluster: the live HLS routes while a job renders, Ray's Prometheus
endpoint scraped during the job (the new lipserve series), per-attempt resource use in the record,
and the registered-avatars listing."""

from __future__ import annotations

import re
import time
from pathlib import Path

import av
import httpx
import pytest
import ray
from ray import serve

from actors.plan import segment_bounds
from tests.service.harness import BOX, Client, deploy, make_media, small_args, start_cluster, stop_cluster, wait_until

# Metrics reach the Prometheus endpoint once per report interval: 0.5 s here instead of 10 s.
SYSTEM_CONFIG = {"metrics_report_interval_ms": 500}


@pytest.fixture(scope="module")
def cluster():
    port = start_cluster(system_config=SYSTEM_CONFIG)
    yield port
    stop_cluster()


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def service(cluster, chaos, tmp_path_factory):
    deploy(small_args(tmp_path_factory.mktemp("storage"), writer={"segment_frames": 25}, chaos_dir=str(chaos)))
    client = Client(f"http://127.0.0.1:{cluster}")
    client.wait_http("/readyz", 200)
    yield client
    serve.delete("lipserve")


@pytest.fixture(scope="module")
def metrics_url(cluster) -> str:
    ports = {n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]}
    assert len(ports) == 1, ports
    return f"http://127.0.0.1:{ports.pop()}/metrics"


def series(text: str, name: str) -> list[tuple[dict, float]]:
    """(labels, value) of every sample of ``name`` in a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1) or ""))
            out.append((labels, float(m.group(2))))
    return out


def test_metrics_during_a_job_and_resource_use_in_the_record(service, chaos, metrics_url, tmp_path):
    audio, video = make_media(tmp_path, 16.0, seed=4)
    # The job renders in about a second here, and the series are sampled on the replica's health
    # checks (every 2 s): one slow segment write (0.3 s a frame, the ``writer_slow`` fault) keeps the
    # job running for several checks, so "scraped while it runs" does not race the job's end.
    (chaos / "writer_slow").write_text("0.3")
    r = service.submit_files(audio, video, box=BOX)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    service.wait(job_id, ("running",), timeout=60)

    live = ("ray_lipserve_job_last_progress_timestamp", "ray_lipserve_generator_memory_bytes",
            "ray_lipserve_disk_free_bytes", "ray_lipserve_disk_total_bytes", "ray_lipserve_queue_wait_seconds_bucket")

    def scraped_while_running():
        text = httpx.get(metrics_url, timeout=10).text
        running = service.job(job_id)["status"] == "running"  # after the scrape: it was running during it
        return text if running and all(series(text, name) for name in live) else None

    text = wait_until(scraped_while_running, "the new lipserve series while the job runs", timeout=60, interval=0.3)
    (memory_labels, memory), = [s for s in series(text, "ray_lipserve_generator_memory_bytes")]
    assert memory_labels["kind"] == "rss" and memory_labels["actor"].startswith("GeneratorActor:") and memory > 10e6
    (progress_labels, progress_at), = series(text, "ray_lipserve_job_last_progress_timestamp")
    assert time.time() - 120 < progress_at <= time.time() + 1
    free = {labels["path"]: v for labels, v in series(text, "ray_lipserve_disk_free_bytes")}
    total = {labels["path"]: v for labels, v in series(text, "ray_lipserve_disk_total_bytes")}
    assert free and free.keys() == total.keys() and all(0 < free[p] <= total[p] for p in free)
    waits = series(text, "ray_lipserve_queue_wait_seconds_count")
    assert waits and sum(v for _, v in waits) >= 1
    assert not series(text, "ray_lipserve_gpu_utilization"), "GPU series without a GPU"

    rec = service.wait(job_id, timeout=150)
    assert rec["status"] == "succeeded", rec
    res = rec["resources"]
    assert res["generator_memory_kind"] == "rss" and res["generator_memory_bytes"] > 10e6
    assert res["frames"] == 16 * 25
    assert set(res["stage_fps"]) == {"features", "generate_write", "finalize"}
    assert all(v > 0 for v in res["stage_fps"].values())
    assert rec["attempts"][-1]["resources"] == res
    assert 0 < rec["timings"]["first_playable"] < rec["timings"]["generate_write"] + rec["timings"]["features"] + 5

    def finished_series():
        text = httpx.get(metrics_url, timeout=10).text
        return text if series(text, "ray_lipserve_stage_fps") and series(text, "ray_lipserve_job_attempts_count") else None

    text = wait_until(finished_series, "stage fps and attempts after the job", timeout=30, interval=0.3)
    fps = {labels["stage"]: v for labels, v in series(text, "ray_lipserve_stage_fps")}
    assert fps.keys() >= {"features", "generate_write", "finalize"} and all(v > 0 for v in fps.values())
    one_attempt = [v for labels, v in series(text, "ray_lipserve_job_attempts_bucket") if labels["le"] == "1.0"]
    assert one_attempt and one_attempt[0] >= 1


def test_live_hls_routes_while_the_job_runs(service, tmp_path):
    audio, video = make_media(tmp_path, 12.0, seed=6)
    job_id = service.submit_files(audio, video, box=BOX).json()["id"]
    base = f"/v1/jobs/{job_id}/hls"
    first = service.http.get(f"{base}/index.m3u8")
    if first.status_code == 409:  # before the first segment: retry later
        assert first.json()["error"]["code"] == "result_not_ready" and first.json()["error"]["retryable"] is True

    def live_playlist():
        r = service.http.get(f"{base}/index.m3u8")
        return r if r.status_code == 200 and service.job(job_id)["status"] == "running" else None

    r = wait_until(live_playlist, "a playable playlist while the job runs", timeout=90, interval=0.2)
    assert r.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert r.headers["cache-control"] == "no-cache"
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in r.text and '#EXT-X-MAP:URI="init.mp4"' in r.text

    rec = service.wait(job_id, timeout=150)
    assert rec["status"] == "succeeded", rec
    text = service.http.get(f"{base}/index.m3u8").text
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    names = [line for line in text.splitlines() if line and not line.startswith("#")]
    # 300 frames in 25-frame segments, the tail tapered (actors/plan.py): 11 + 25 -> 13, 6, 6.
    assert len(names) == len(segment_bounds(300, 25)) == 14 and names[0] == "seg_00000.m4s"
    init = service.http.get(f"{base}/init.mp4")
    assert init.status_code == 200 and init.headers["content-type"] == "video/mp4" and b"avcC" in init.content
    stream = tmp_path / "stream.mp4"
    parts = [init.content]
    for name in names:
        seg = service.http.get(f"{base}/{name}")
        assert seg.status_code == 200 and seg.content[4:8] == b"styp", name
        parts.append(seg.content)
    stream.write_bytes(b"".join(parts))
    result = tmp_path / "result.mp4"
    result.write_bytes(service.http.get(f"/v1/jobs/{job_id}/result").content)
    with av.open(str(stream)) as a, av.open(str(result)) as b:
        assert [bytes(p) for p in a.demux(video=0) if p.size] == [bytes(p) for p in b.demux(video=0) if p.size]

    for bad in ("audio.mp4", "seg_99999.m4s", "..%2F..%2Fjobs.sqlite3"):
        r = service.http.get(f"{base}/{bad}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", bad
    r = service.http.get("/v1/jobs/0123456789abcdef0123456789abcdef/hls/index.m3u8")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_registered_avatars_are_listed_newest_first(service, tmp_path):
    _, video = make_media(tmp_path, 1.0, template_frames=12)
    other = tmp_path / "other.mp4"
    _, other_src = make_media(tmp_path / "b", 1.0, template_frames=20)
    other.write_bytes(Path(other_src).read_bytes())
    ids = []
    for path, name in ((video, "presenter one.mp4"), (other, "presenter-two.mp4")):
        with open(path, "rb") as f:
            r = service.http.post("/v1/avatars", files={"video": (name, f)})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == name
        ids.append(r.json()["avatar_id"])
    listed = service.http.get("/v1/avatars").json()["avatars"]
    assert [a["avatar_id"] for a in listed[:2]] == ids[::-1]
    assert listed[0]["name"] == "presenter-two.mp4" and listed[1]["name"] == "presenter one.mp4"
    assert {k for k in listed[0]} >= {"avatar_id", "name", "width", "height", "fps", "frames"}
    assert (listed[1]["width"], listed[1]["height"], listed[1]["frames"]) == (160, 120, 12)
