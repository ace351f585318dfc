"""``make bench``: every CPU bench, one table, one JSON file ``bench/results/<date>-<machine>.json``.

Runs, each in its own processes (the benches themselves repeat their measurements, medians):

1. ``bench_headtohead.py``: generator-only and end-to-end frames/s, pipeline efficiency, and the
   head-to-head against the Wav2Lip ``inference.py`` flow (10 s 576x768 presenter clip, 3 runs);
2. ``bench_generator.py --quick``: onnxruntime settings / batch size / torch / int8 / OpenVINO fp32
   and bf16 / mouth window vs whole crop;
3. ``bench_pipeline.py --cache warm``: per-stage frames/s and peak RSS of a 60 s vs a 10 s render;
4. ``bench_service.py``: replica ready time and an HTTP job vs the same render in-process;
5. ``bench_first_segment.py --no-service``: time to the first playable (live HLS) segment;
6. ``bench_cluster.py --workers 1 2 --jobs 6``: concurrent-job throughput (jobs/min, simulated nodes).

Figures a bench does not produce yet are written as ``null`` with a note. About 6-8 minutes on an
idle 2-core machine. Usage: python bench/run_all.py [--skip service] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _json_tail(cmd: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run a bench with ``--json``; (its last JSON line, its stdout for the log)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd, "--json"], capture_output=True, text=True, cwd=str(REPO),
                          timeout=timeout)
    seconds = time.perf_counter() - t0
    lines = proc.stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):  # the last JSON value, one line or indented
        if lines[i].startswith(("{", "[")):
            try:
                out = json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
            return {"result": out, "bench_seconds": seconds} if isinstance(out, list) else {
                **out, "_bench_seconds": seconds}, "\n".join(lines[:i])
    return None, f"{proc.stdout[-3000:]}\n(exit {proc.returncode}) {proc.stderr[-1500:]}"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=str(REPO)).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=("headtohead", "generator", "pipeline", "service",
                                                                  "first_segment", "cluster"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lipserve-benchall-"))
    machine = socket.gethostname().split(".")[0]
    report: dict = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "commit": _commit(), "machine": machine,
        "cpu": _cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_start": os.getloadavg(), "note": "medians of repeated runs; a shared machine makes wall "
        "times noisy (see loadavg and the CPU-seconds figures)",
    }
    logs = []
    if "headtohead" not in a.skip:
        r, log = _json_tail(["bench/bench_headtohead.py", "--repeats", str(a.repeats), "--work", str(work)], 1500)
        report["headtohead"], _ = r, logs.append(log)
    if "generator" not in a.skip:
        r, log = _json_tail(["bench/bench_generator.py", "--quick", "--repeats", str(a.repeats),
                             "--work", str(work)], 900)
        report["generator"], _ = r, logs.append(log)
    if "pipeline" not in a.skip:
        r, log = _json_tail(["bench/bench_pipeline.py", "--cache", "warm"], 900)
        report["pipeline"], _ = r, logs.append(log)
    if "service" not in a.skip:
        r, log = _json_tail(["bench/bench_service.py", "--repeats", "2"], 900)
        report["service"], _ = r, logs.append(log)
    if "first_segment" not in a.skip:
        r, log = _json_tail(["bench/bench_first_segment.py", "--no-service", "--seconds", "10"], 600)
        report["first_segment"], _ = r, logs.append(log)
    if "cluster" not in a.skip:
        r, log = _json_tail(["bench/bench_cluster.py", "--workers", "1", "2", "--jobs", "6", "--seconds", "4"], 900)
        report["cluster"], _ = r, logs.append(log)
    report["loadavg_end"] = os.getloadavg()
    report["summary"] = summarise(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{dt.date.today().isoformat()}-{machine}.json"
    out.write_text(json.dumps(report, indent=1, default=str))
    for log in logs:
        print(log)
        print()
    print_summary(report)
    print(f"\nwrote {out.relative_to(REPO)}")
    return 0


def summarise(r: dict) -> dict:
    s: dict = {}
    h = r.get("headtohead") or {}
    s["generator_fps"] = h.get("generator_fps")
    s["e2e_fps"] = h.get("e2e_fps")
    s["pipeline_efficiency"] = h.get("pipeline_efficiency")
    s["cpu_ceiling"] = h.get("cpu_ceiling")
    s["headtohead_ratio"] = h.get("headtohead_ratio")
    s["headtohead_cpu_ratio"] = h.get("headtohead_cpu_ratio")
    runs = h.get("runs") or []
    if runs:
        st = runs[len(runs) // 2]["stage_seconds"]
        frames = h["clip"]["frames"]
        s["stage_fps"] = {k: (frames / v if v else None) for k, v in st.items()}
    g = r.get("generator") or {}
    s["generator_best_batch"] = g.get("best_batch")
    s["int8_psnr_db"] = (g.get("int8") or {}).get("psnr_vs_fp32_db")
    ov = g.get("openvino") or {}
    s["openvino_fp32_fps"] = (ov.get("fp32") or {}).get("fps")
    s["openvino_bf16_fps"] = (ov.get("bf16") or {}).get("fps")
    s["openvino_bf16_psnr_db"] = (ov.get("bf16") or {}).get("psnr_vs_fp32_db")
    s["openvino_int8_fps"] = (ov.get("int8") or {}).get("fps")
    s["onnxruntime_mouth_fps"] = g.get("onnxruntime_mouth_fps")
    s["onnxruntime_whole_crop_fps"] = g.get("onnxruntime_whole_crop_fps")
    p = r.get("pipeline") or {}
    v = (p.get("verdicts") or [{}])[0]
    s["peak_rss_ratio_60s_vs_10s"] = v.get("ratio")
    sv = r.get("service") or {}
    s["replica_ready_s"] = sv.get("constructor_s")
    s["http_vs_inprocess"] = sv.get("ratio")
    cl = (r.get("cluster") or {}).get("result") or []
    s["concurrent_jobs_per_min"] = {str(row.get("workers")): row.get("jobs_per_min") for row in cl} or None
    if not cl:
        s["concurrent_jobs_note"] = "bench_cluster.py did not report"
    fs = ((r.get("first_segment") or {}).get("local") or {})
    s["time_to_first_playable_segment_s"] = fs.get("first_playable_s")
    s["time_to_first_playable_segment_note"] = (f"10 s job, whole render {fs['job_s']:.2f} s" if fs.get("job_s")
                                                else "bench_first_segment.py did not report")
    return s


def _fmt(v, spec: str = ".2f") -> str:
    return "null" if v is None else format(v, spec)


def print_summary(r: dict) -> None:
    s = r["summary"]
    print(f"lipserve bench  {r['date']}  commit {r['commit']}  {r['machine']} ({r['cpu']}, {r['cpus']} CPUs)  "
          f"load {r['loadavg_start'][0]:.1f} -> {r['loadavg_end'][0]:.1f}")
    rows = [
        ("Wav2Lip ONNX generator only, f/s", _fmt(s["generator_fps"], ".1f"), ""),
        ("end to end (lipserve render), f/s", _fmt(s["e2e_fps"], ".1f"), ""),
        ("pipeline efficiency", _fmt(s["pipeline_efficiency"], ".3f"), ">= 0.9"),
        ("  CPU-bound ceiling (generator CPU / render CPU)", _fmt(s.get("cpu_ceiling"), ".3f"), ""),
        ("head-to-head vs inference.py flow (wall)", _fmt(s["headtohead_ratio"], ".3f"), "<= 0.45"),
        ("head-to-head (CPU-seconds)", _fmt(s["headtohead_cpu_ratio"], ".3f"), ""),
        ("generator best batch (CPU)", str(s["generator_best_batch"]), ""),
        ("int8 PSNR vs fp32 on the demo, dB", _fmt(s["int8_psnr_db"], ".1f"), "option only"),
        ("onnxruntime f/s: whole crop / mouth window", f"{_fmt(s.get('onnxruntime_whole_crop_fps'), '.1f')} / "
                                                        f"{_fmt(s.get('onnxruntime_mouth_fps'), '.1f')}", ""),
        ("OpenVINO f/s: fp32 / bf16 (mouth window)", f"{_fmt(s.get('openvino_fp32_fps'), '.1f')} / "
                                                      f"{_fmt(s.get('openvino_bf16_fps'), '.1f')}", "fp32 default"),
        ("OpenVINO bf16 PSNR vs fp32 on the demo, dB", _fmt(s.get("openvino_bf16_psnr_db"), ".1f"), "option only"),
        ("OpenVINO int8 (lipserve quantize-onnx), f/s", _fmt(s.get("openvino_int8_fps"), ".1f"), "option only"),
        ("peak RSS 60 s / 10 s", _fmt(s["peak_rss_ratio_60s_vs_10s"], ".3f"), "<= 1.3"),
        ("replica ready (constructor + warm-up), s", _fmt(s["replica_ready_s"]), "<= 10"),
        ("HTTP job / in-process", _fmt(s["http_vs_inprocess"], ".3f"), "<= 1.15"),
        ("concurrent jobs/min by worker nodes", json.dumps(s["concurrent_jobs_per_min"]),
         s.get("concurrent_jobs_note", "simulated nodes sharing this machine's cores")),
        ("time to first playable segment, s", _fmt(s["time_to_first_playable_segment_s"]),
         s["time_to_first_playable_segment_note"]),
    ]
    for name, value, goal in rows:
        print(f"  {name:<44} {value:>10}  {goal}")
    if s.get("stage_fps"):
        print("  stage f/s (lipserve render, middle run): " + ", ".join(
            f"{k} {_fmt(v, '.0f')}" for k, v in s["stage_fps"].items()))


if __name__ == "__main__":
    sys.exit(main())
