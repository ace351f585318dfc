"""Service figures on the CPU config:

1. Pipeline replica constructor including warm-up (goal <= 10 s): timed inside the replica
   (``warmup.seconds``) and from the outside (deploy until /readyz answers 200).
2. Wall time of a job over HTTP (submit, follow its event stream to the final event, download) vs
   ``lipserve render`` of the same job
   in-process (goal <= 1.15x). Both use a warm avatar cache, as a service would for a registered
   template, and the same generator and segment size.

Usage: python bench/bench_service.py [--seconds 10] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402

from actors.pipeline import LocalRenderer, RenderOptions  # noqa: E402
from serve_app.app import build_app  # noqa: E402
from serve_app.cli.demo import follow_events  # noqa: E402
from serve_app.cli.launcher import app_spec, load_config  # noqa: E402
from tests.media import speech_like, write_audio  # noqa: E402

TEMPLATE = ROOT / "assets" / "demo_template.mp4"


def http_job(base: str, audio: Path, video: Path, out: Path) -> float:
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=120) as c:
        with open(audio, "rb") as a, open(video, "rb") as v:
            r = c.post("/v1/jobs", files={"audio": (audio.name, a), "video": (video.name, v)})
        r.raise_for_status()
        job_id = r.json()["id"]
        rec = follow_events(base, job_id, show=lambda _: None)  # how a client waits for its job
        if rec["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {rec['status']}: {rec.get('error')}")
        out.write_bytes(c.get(f"/v1/jobs/{job_id}/result").content)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lipserve-bench-"))
    audio = write_audio(work / f"speech_{opts.seconds:g}s.wav", speech_like(opts.seconds))
    config = load_config(opts.config)
    _, _, args = app_spec(config, {"storage_dir": str(work / "storage")})

    # In-process reference, same generator / segment size / cache policy (warm cache).
    local = LocalRenderer(RenderOptions(cache_dir=str(work / "local-cache"),
                                        segment_frames=args.writer.segment_frames))
    local.render(str(audio), str(TEMPLATE), str(work / "warm.mp4"))
    local_s = []
    for i in range(opts.repeats):
        t0 = time.perf_counter()
        local.render(str(audio), str(TEMPLATE), str(work / f"local{i}.mp4"))
        local_s.append(time.perf_counter() - t0)

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    port = 8765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    serve.run(build_app(args), name="lipserve", route_prefix="/")
    ready_s = time.perf_counter() - t0
    info = httpx.get(f"{base}/readyz", timeout=10).json()
    warmup_s = info["pipeline"]["warmup"]["seconds"]
    constructor_s = info["pipeline"]["warmup"]["constructor_seconds"]

    http_job(base, audio, TEMPLATE, work / "warm_http.mp4")  # warms the service's avatar cache
    http_s = [http_job(base, audio, TEMPLATE, work / f"http{i}.mp4") for i in range(opts.repeats)]
    serve.shutdown()
    ray.shutdown()

    best_local, best_http = min(local_s), min(http_s)
    ratio = best_http / best_local
    rows = [
        ("pipeline replica constructor incl. actors + warm-up", f"{constructor_s:.2f} s", "<= 10 s",
         constructor_s <= 10),
        ("  of which the warm-up job through every stage", f"{warmup_s:.2f} s", "", None),
        ("deploy -> app RUNNING (2 deployments, actors, warm-up)", f"{ready_s:.2f} s", "", None),
        (f"{opts.seconds:g} s job in-process (lipserve render)", f"{best_local:.2f} s", "", None),
        (f"{opts.seconds:g} s job over HTTP (submit..download)", f"{best_http:.2f} s", "", None),
        ("HTTP / in-process", f"{ratio:.3f}x", "<= 1.15x", ratio <= 1.15),
    ]
    print(f"{'figure':<58} {'value':>10}  {'goal':<9} result")
    for name, value, goal, ok in rows:
        print(f"{name:<58} {value:>10}  {goal:<9} {'' if ok is None else ('PASS' if ok else 'FAIL')}")
    if opts.json:
        print(json.dumps({"constructor_s": constructor_s, "warmup_s": warmup_s, "deploy_s": ready_s, "local_s": local_s, "http_s": http_s,
                          "ratio": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
