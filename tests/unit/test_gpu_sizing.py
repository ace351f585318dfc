"""bench/gpu_sizing.py: the GPU set's figures -> configs/gpu.yaml's numbers, each with its reason.
The figures here are made up; the rules are what is tested (the bench runs them on real ones)."""

from __future__ import annotations

import yaml

from bench.gpu_sizing import best_generator, jobs_per_replica, knee, recommend, yaml_snippet


def _report(per_job=(300, 290, 240, 120), totals=None, device_mib_per_actor=900.0) -> dict:
    jobs = (1, 2, 4, 8)
    totals = totals or [n * f for n, f in zip(jobs, per_job)]
    return {
        "wav2lip_generator_fps": {
            "torch_fp16": {"16": 900.0, "64": 1500.0},
            "onnx_cuda": {"16": 1100.0, "64": 2100.0, "128": 2000.0},
            "tensorrt_fp16": {"skipped": "no TensorRT"},
            "onnx_cuda_device_mib": device_mib_per_actor,
        },
        "e2e_720p": {"nvenc": {"jobs": 1, "per_job_fps": 300.0, "total_fps": 300.0, "frames": 250,
                               "stage_seconds": {"generate": 0.2, "write": 1.25}}},
        "musetalk_generator_fps": {"fp16_from_cached_latents": {"4": 80.0, "16": 130.0, "32": 120.0}},
        "concurrent_jobs_720p_nvenc": [
            {"jobs": n, "per_job_fps": f, "total_fps": t} for n, f, t in zip(jobs, per_job, totals)],
    }


def test_the_fastest_engine_and_batch_is_chosen_and_failed_sweeps_are_ignored():
    w = {"torch_fp16": {"64": 10.0}, "tensorrt_fp16": {"error": "boom"}, "onnx_cuda": {"128": 30.0, "64": 31.0}}
    assert best_generator(w) == {"engine": "onnx_cuda", "batch_size": 64, "fps": 31.0}
    assert best_generator({}) is None


def test_the_knee_is_where_per_job_speed_drops_or_the_total_stops_rising():
    runs = _report()["concurrent_jobs_720p_nvenc"]
    assert knee(runs)["jobs"] == 2  # 240 < 0.9 x 300 at 4 jobs
    flat_total = [{"jobs": 1, "per_job_fps": 100, "total_fps": 100}, {"jobs": 2, "per_job_fps": 95, "total_fps": 99}]
    assert knee(flat_total)["jobs"] == 1
    assert knee([{"jobs": 4, "skipped": "time budget"}]) is None


def test_recommend_sizes_the_gpu_yaml_numbers_with_a_reason_each():
    rec = recommend(_report(), device_mib=139_000)
    assert rec["generator"]["engine"] == "onnx_cuda" and rec["generator"]["batch_size"] == 64
    assert rec["actors_per_gpu"] == 2 and rec["num_gpus"] == 0.5
    assert rec["max_ongoing_requests"] == 4  # ceil(2100 / 300) = 7, at most 4
    # a replica's min(2100, 300 x 4) = 1200 f/s over 250 / 1.25 = 200 f/s per writer
    assert rec["writer_pool_size"] == 6
    assert rec["goal_wav2lip_720p"] == {"fps": 580, "goal": 250.0, "met": True}
    assert rec["goal_musetalk"]["generator_fps"] == 130.0 and rec["goal_musetalk"]["batch_size"] == 16
    assert rec["goal_musetalk"]["met"] is True
    assert len(rec["reasons"]) == 4 and all(r for r in rec["reasons"])
    snippet = yaml_snippet(rec)
    values = yaml.safe_load("\n".join(line for line in snippet.splitlines() if not line.startswith("#")))
    assert values == {"generator.batch_size": 64, "generator.num_gpus": 0.5, "writer.pool_size": 6,
                      "pipeline.max_ongoing_requests": 4}


def test_memory_caps_the_actors_per_gpu():
    rec = recommend(_report(per_job=(300, 299, 298, 297)), device_mib=10_000)  # 8 jobs keep their speed
    assert rec["actors_per_gpu"] == 8 and rec["num_gpus"] == 0.125  # 10 of 900 MiB would fit
    tight = recommend(_report(per_job=(300, 299, 298, 297), device_mib_per_actor=4000.0), device_mib=10_000)
    assert tight["actors_per_gpu"] == 2 and tight["num_gpus"] == 0.5  # 0.9 x 10000 // 4000
    assert any(r.startswith("memory:") for r in tight["reasons"])


def test_missing_figures_give_no_numbers():
    rec = recommend({"wav2lip_generator_fps": {"error": "no CUDA"}, "concurrent_jobs_720p_nvenc": {"error": "x"}})
    assert rec == {"reasons": []} and yaml_snippet(rec) == ""
    assert jobs_per_replica(100.0, 300.0) == 1
