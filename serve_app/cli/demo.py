"""``lipserve demo``: local cluster + app, the bundled demo submitted over HTTP, progress shown from
the job's Server-Sent Events, result saved, everything shut down."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from serve_app.config import PROJECT_ROOT

ASSETS = Path(PROJECT_ROOT) / "assets"


def wait_ready(base: str, deadline_s: float = 300.0) -> None:
    """Poll /readyz until a warm pipeline replica answers (a condition, with a deadline)."""
    t_end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(f"{base}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > t_end:
                raise TimeoutError(f"{base} did not become ready within {deadline_s:.0f} s")
            time.sleep(0.5)


def follow_events(base: str, job_id: str, show=print) -> dict:
    """Read the job's SSE stream until its final event; returns the final job record."""
    with httpx.Client(timeout=None) as client, client.stream("GET", f"{base}/v1/jobs/{job_id}/events") as resp:
        event = None
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                rec = json.loads(line.split(":", 1)[1])
                show(rec)
                if event == "final":
                    return rec
    raise RuntimeError(f"event stream of job {job_id} ended without a final event")


def run_demo(config_path: str = "configs/local.yaml", out_path: str = "demo_output.mp4") -> int:
    from ray import serve

    from serve_app.cli.launcher import load_config, start

    config = load_config(config_path)
    t0 = time.perf_counter()
    print("starting a local Ray cluster and the lipserve app ...", flush=True)
    _, port = start(config)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        print(f"ready after {time.perf_counter() - t0:.1f} s; submitting the bundled demo", flush=True)
        with httpx.Client(timeout=120) as client:
            with open(ASSETS / "demo_speech.wav", "rb") as a, open(ASSETS / "demo_template.mp4", "rb") as v:
                resp = client.post(f"{base}/v1/jobs", files={"audio": ("demo_speech.wav", a, "audio/wav"),
                                                             "video": ("demo_template.mp4", v, "video/mp4")})
            if resp.status_code != 202:
                print(f"submission refused: HTTP {resp.status_code} {resp.text}", file=sys.stderr)
                return 1
            job_id = resp.json()["id"]
            print(f"job {job_id} accepted", flush=True)

            def show(rec):
                sys.stdout.write(f"\r  {rec['status']:<9} {rec['progress'] * 100:5.1f}%  {rec.get('stage') or '':<14}")
                sys.stdout.flush()

            final = follow_events(base, job_id, show)
            print()
            if final["status"] != "succeeded":
                print(f"job {job_id} ended {final['status']}: {final.get('error')}", file=sys.stderr)
                return 1
            video = client.get(f"{base}/v1/jobs/{job_id}/result")
            Path(out_path).write_bytes(video.content)
        timings = ", ".join(f"{k} {v:.2f}s" for k, v in final.get("timings", {}).items())
        print(f"saved {out_path} ({len(video.content) / 1e6:.2f} MB); stages: {timings}")
        return 0
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
