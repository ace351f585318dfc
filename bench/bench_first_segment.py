"""Time to the first watchable frame: how soon after a job starts its live HLS stream can be played,
against how long the whole job takes (the MP4 is only there at the end).

1. in-process (``lipserve render`` with a live stream): render start -> first segment listed in the
   playlist (``RenderSummary.first_playable_s``), and the render's wall time;
2. over HTTP on a local cluster with the given config: submit -> the playlist answers 200 and its
   first segment downloads (what a player needs to show the first frame), and submit -> result.

Usage: python bench/bench_first_segment.py [--seconds 20] [--config configs/local.yaml] [--no-service] [--json]
``make bench`` may call ``first_segment_local`` / ``first_segment_http`` directly.
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

from actors.pipeline import LocalRenderer, RenderOptions  # noqa: E402
from tests.media import speech_like, write_audio  # noqa: E402

TEMPLATE = ROOT / "assets" / "demo_template.mp4"


def first_segment_local(audio: Path, video: Path, work: Path, segment_frames: int = 50) -> dict:
    """In-process render with a live stream (warm avatar cache, as for a registered template)."""
    renderer = LocalRenderer(RenderOptions(cache_dir=str(work / "cache"), segment_frames=segment_frames))
    renderer.render(str(audio), str(video), str(work / "warm.mp4"))  # loads the generator, fills the cache
    t0 = time.perf_counter()
    summary = renderer.render(str(audio), str(video), str(work / "local.mp4"), hls_dir=str(work / "live-local"))
    return {"first_playable_s": summary.first_playable_s, "job_s": time.perf_counter() - t0}


def first_segment_http(base: str, audio: Path, video: Path, poll_s: float = 0.05) -> dict:
    """Submit over HTTP; time until the first segment of the live stream downloads, and until the result."""
    with httpx.Client(base_url=base, timeout=120) as c:
        t0 = time.perf_counter()
        with open(audio, "rb") as a, open(video, "rb") as v:
            r = c.post("/v1/jobs", files={"audio": (audio.name, a), "video": (video.name, v)})
        r.raise_for_status()
        job_id = r.json()["id"]
        first = None
        while True:
            if first is None:
                pl = c.get(f"/v1/jobs/{job_id}/hls/index.m3u8")
                segs = [x for x in pl.text.splitlines() if x and not x.startswith("#")] if pl.status_code == 200 else []
                if segs and c.get(f"/v1/jobs/{job_id}/hls/init.mp4").status_code == 200 \
                        and c.get(f"/v1/jobs/{job_id}/hls/{segs[0]}").status_code == 200:
                    first = time.perf_counter() - t0
            rec = c.get(f"/v1/jobs/{job_id}").json()
            if rec["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(poll_s)
        if rec["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {rec['status']}: {rec.get('error')}")
        c.get(f"/v1/jobs/{job_id}/result").raise_for_status()
        done = time.perf_counter() - t0
    return {"first_watchable_s": first, "job_s": done, "record_first_playable_s": rec["timings"].get("first_playable")}


def _service(config_path: str, work: Path, audio: Path) -> dict:
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.cli.launcher import app_spec, load_config

    _, _, args = app_spec(load_config(config_path), {"storage_dir": str(work / "storage")})
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        port = 8766
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="lipserve", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        first_segment_http(base, audio, TEMPLATE)  # warms the service's avatar cache
        return first_segment_http(base, audio, TEMPLATE)
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--config", default="configs/local.yaml")
    ap.add_argument("--segment-frames", type=int, default=50)
    ap.add_argument("--no-service", action="store_true", help="in-process figures only (no Ray cluster)")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lipserve-bench-hls-"))
    audio = write_audio(work / f"speech_{opts.seconds:g}s.wav", speech_like(opts.seconds))
    figures = {"local": first_segment_local(audio, TEMPLATE, work, opts.segment_frames)}
    if not opts.no_service:
        figures["http"] = _service(opts.config, work, audio)

    rows = [(f"{opts.seconds:g} s job in-process: first segment playable", figures["local"]["first_playable_s"]),
            ("  whole render (the MP4 exists)", figures["local"]["job_s"])]
    if "http" in figures:
        h = figures["http"]
        rows += [("over HTTP: submit -> first segment downloadable", h["first_watchable_s"]),
                 ("  attempt start -> first segment listed (job record)", h["record_first_playable_s"]),
                 ("  submit -> result downloadable", h["job_s"])]
    print(f"{'figure':<58} {'value':>10}")
    for name, value in rows:
        print(f"{name:<58} {'-' if value is None else f'{value:.2f} s':>10}")
    for key, f in figures.items():
        first = f.get("first_playable_s", f.get("first_watchable_s"))
        if first is not None:
            print(f"{key}: watchable after {first:.2f} s = {100 * first / f['job_s']:.0f} % of the job's "
                  f"{f['job_s']:.2f} s  ({'PASS' if first < 0.5 * f['job_s'] else 'FAIL'}: goal < 50 %)")
    if opts.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
