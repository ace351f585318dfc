"""From the GPU set's figures (``bench/bench_gpu.py``) to the numbers ``configs/gpu.yaml`` needs.

The rules, each applied to measured figures only (a figure that is missing gives no number, never
a guess):

* **generator**: the Wav2Lip engine and batch size with the most frames/s;
* **generator actors per GPU** (``num_gpus = 1 / k``): the concurrency sweep runs 1, 2, 4, 8 jobs at
  once, each with its own generator, as separate actors would be. ``k`` is the largest count whose
  per-job speed is still at least ``KEEP`` of one job's and whose total is higher than the count
  before it: past that, jobs only share the GPU. Memory caps ``k`` too: at most
  ``MEMORY_SHARE`` of the device over one actor's footprint;
* **jobs per replica** (``max_ongoing_requests``): a replica's jobs share its generator actor, and
  one 720p job (decode, paste, encode on the CPU) uses only ``job f/s / generator f/s`` of it, so a
  replica takes ``ceil(generator f/s / job f/s)`` jobs, at most ``MAX_JOBS_PER_REPLICA``;
* **writers per replica** (``writer.pool_size``): enough writers for the replica's frames/s, each
  writer doing ``frames / write seconds`` of the 720p run;
* **goals**: total frames/s at ``k`` jobs per GPU against 250 (Wav2Lip, 720p); MuseTalk's best
  generator frames/s (cached latents, the path a job runs) against 100, an upper bound of its end
  to end until a MuseTalk 720p run is added.
"""

from __future__ import annotations

import math

KEEP = 0.9  # per-job speed kept when adding jobs to one GPU
MEMORY_SHARE = 0.9  # of the device's memory that generator actors may use
MAX_JOBS_PER_REPLICA = 4
GOAL_WAV2LIP_720P_FPS = 250.0
GOAL_MUSETALK_FPS = 100.0
ENGINES = ("torch_fp16", "torch_fp16_mouth_window", "onnx_cuda", "tensorrt_fp16")


def best_generator(w: dict) -> dict | None:
    """The fastest (engine, batch) of the Wav2Lip sweep."""
    best = None
    for engine in ENGINES:
        sweep = w.get(engine)
        if not isinstance(sweep, dict) or "error" in sweep or "skipped" in sweep:
            continue
        for batch, fps in sweep.items():
            if isinstance(fps, (int, float)) and (best is None or fps > best["fps"]):
                best = {"engine": engine, "batch_size": int(batch), "fps": float(fps)}
    return best


def knee(runs: list[dict]) -> dict | None:
    """The largest measured job count per GPU before per-job speed drops or the total stops rising."""
    done = sorted((r for r in runs if "per_job_fps" in r), key=lambda r: r["jobs"])
    if not done or done[0]["jobs"] != 1:
        return None
    one = done[0]["per_job_fps"]
    chosen = done[0]
    for prev, cur in zip(done, done[1:]):
        if cur["per_job_fps"] < KEEP * one or cur["total_fps"] <= prev["total_fps"]:
            break
        chosen = cur
    return chosen


def jobs_per_replica(generator_fps: float, job_fps: float) -> int:
    return max(1, min(MAX_JOBS_PER_REPLICA, math.ceil(generator_fps / job_fps)))


def recommend(report: dict, device_mib: float | None = None) -> dict:
    """The sizing and the reasoning behind each number, from one GPU report."""
    out: dict = {"reasons": []}
    why = out["reasons"].append
    w = report.get("wav2lip_generator_fps") or {}
    gen = best_generator(w)
    if gen:
        out["generator"] = gen
        why(f"generator: {gen['engine']} at batch {gen['batch_size']} ({gen['fps']:.0f} f/s), the fastest measured")
    conc = report.get("concurrent_jobs_720p_nvenc")
    k = knee(conc) if isinstance(conc, list) else None
    if k:
        actors = k["jobs"]
        per_actor_mib = w.get("onnx_cuda_device_mib")
        if per_actor_mib and device_mib:
            fit = max(1, int(MEMORY_SHARE * device_mib // per_actor_mib))
            if fit < actors:
                why(f"memory: {per_actor_mib:.0f} MiB per actor fits {fit} on {device_mib:.0f} MiB (not {actors})")
                actors = fit
        out["actors_per_gpu"] = actors
        out["num_gpus"] = round(1.0 / actors, 4)
        out["total_fps_per_gpu"] = k["total_fps"]
        why(f"num_gpus {out['num_gpus']}: per-job speed holds up to {k['jobs']} jobs per GPU "
            f"({k['per_job_fps']:.0f} f/s each, {k['total_fps']:.0f} f/s in all)")
        out["goal_wav2lip_720p"] = {"fps": k["total_fps"], "goal": GOAL_WAV2LIP_720P_FPS,
                                    "met": k["total_fps"] >= GOAL_WAV2LIP_720P_FPS}
    m = (report.get("musetalk_generator_fps") or {}).get("fp16_from_cached_latents")
    if isinstance(m, dict) and m:
        batch, fps = max(m.items(), key=lambda kv: kv[1])
        out["goal_musetalk"] = {"generator_fps": fps, "batch_size": int(batch), "goal": GOAL_MUSETALK_FPS,
                                "met": fps >= GOAL_MUSETALK_FPS, "note": "generator only: an upper bound of end to end"}
    e2e = (report.get("e2e_720p") or {}).get("nvenc") or {}
    if gen and e2e.get("per_job_fps"):
        job_fps = e2e["per_job_fps"]
        jobs = jobs_per_replica(gen["fps"], job_fps)
        out["max_ongoing_requests"] = jobs
        why(f"max_ongoing_requests {jobs}: one 720p job runs at {job_fps:.0f} f/s, its generator can do "
            f"{gen['fps']:.0f} f/s")
        stages = e2e.get("stage_seconds") or {}
        if e2e.get("frames") and stages.get("write"):
            # write seconds are summed over the job's segments: one writer's rate is frames / write.
            writer_fps = e2e["frames"] / stages["write"]
            replica_fps = min(gen["fps"], job_fps * jobs)
            pool = max(1, math.ceil(replica_fps / writer_fps))
            out["writer_pool_size"] = pool
            why(f"writer.pool_size {pool}: a replica's {replica_fps:.0f} f/s against {writer_fps:.0f} f/s "
                f"per writer")
    return out


def yaml_snippet(rec: dict) -> str:
    """The lines of ``configs/gpu.yaml`` the figures decide, as comments say why."""
    lines = [f"# {r}" for r in rec.get("reasons", [])]
    if "generator" in rec:
        lines.append(f"generator.batch_size: {rec['generator']['batch_size']}")
    if "num_gpus" in rec:
        lines.append(f"generator.num_gpus: {rec['num_gpus']}")
    if "writer_pool_size" in rec:
        lines.append(f"writer.pool_size: {rec['writer_pool_size']}")
    if "max_ongoing_requests" in rec:
        lines.append(f"pipeline.max_ongoing_requests: {rec['max_ongoing_requests']}")
    return "\n".join(lines)
