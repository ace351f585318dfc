"""The GPU set (bench/bench_gpu.py) runs end to end on the CPU (``--device cpu``): every section's
code path, the job processes and their start barrier, the JSON and the gpu.yaml sizing. A lent GPU
gives a session one short run; this keeps a slip in the script from spending it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_set_runs_through_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--device", "cpu",
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report_path,) = (tmp_path / "out").glob("gpu-dry-*.json")
    report = json.loads(report_path.read_text())
    assert report["dry_run"].startswith("cpu")
    assert not [k for k, v in report.items() if isinstance(v, dict) and "error" in v]

    w = report["wav2lip_generator_fps"]
    for engine in ("torch_fp16", "torch_fp16_mouth_window", "onnx_cuda"):
        assert set(w[engine]) == {"4", "8"} and all(v > 0 for v in w[engine].values()), engine
    m = report["musetalk_generator_fps"]
    assert set(m["fp16_from_cached_latents"]) == {"1", "2"} and "skipped" in m["compiled_from_cached_latents"]
    e2e = report["e2e_720p"]
    assert {k: e2e[k]["frames"] for k in ("libx264", "nvenc")} == {"libx264": 50, "nvenc": 50}
    conc = report["concurrent_jobs_720p_nvenc"]
    assert [r["jobs"] for r in conc] == [1, 2] and all(r["per_job_fps"] > 0 for r in conc)
    assert conc[1]["total_fps"] > 0

    sizing = report["sizing"]
    assert sizing["generator"]["batch_size"] in (4, 8) and 0 < sizing["num_gpus"] <= 1
    assert sizing["max_ongoing_requests"] >= 1 and sizing["writer_pool_size"] >= 1
    assert sizing["goal_musetalk"]["generator_fps"] > 0
    assert "configs/gpu.yaml from these figures" in proc.stdout and "generator.num_gpus:" in proc.stdout
