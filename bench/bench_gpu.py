"""The GPU set, in one go (``bash bench/gpu.sh``; budget < 10 min on one H200). Writes
``bench/results/gpu-<date>-<machine>.json`` and prints a table. Random-init weights throughout.

1. Wav2Lip generator frames/s by batch size: torch fp16, onnxruntime CUDA EP, TensorRT EP (when
   onnxruntime offers it; fp16, engine cache in the work folder);
2. MuseTalk 1.5 (full-size random weights, ``write_random_models``) fp16 by batch size, and with
   ``torch.compile`` of the UNet at the best batch;
3. end to end at 720p (the demo scaled to 1280x720, 10 s, fixed box): ``LocalRenderer`` with the
   ONNX CUDA generator, NVENC vs libx264;
4. GPU memory of one generator (process peak, ``torch.cuda`` / device-level ``mem_get_info``);
5. concurrent jobs per GPU: 1, 2, 4, 8 render processes at once (each its own generator, as
   separate generator actors would be): per-job and total frames/s; the knee is where per-job
   speed drops;
6. the sizing ``configs/gpu.yaml`` takes from those figures (``bench/gpu_sizing.py``: generator
   batch, ``num_gpus``, ``max_ongoing_requests``, ``writer.pool_size``, each with its reason).

Without a usable CUDA device it exits at once with status 3 and a message. Each section has a time
budget; a section that fails is recorded with its error and the rest still run.

``--device cpu`` is a dry run of every code path on the CPU (tiny batches, a 2 s clip, libx264,
MuseTalk's reduced random models in fp32 without ``torch.compile``), so the one GPU run a session
gets does not fail on a slip in this script; its figures are CPU figures and say so
(``dry_run`` in the JSON). ``tests/unit/test_bench_gpu_dry_run.py`` runs it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

WAV2LIP_BATCHES = (16, 32, 64, 128, 256)
MUSETALK_BATCHES = (4, 8, 16, 32)
TAG = "GPUJOB "


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, frames: int, repeats: int = 3) -> float:
    fn()
    _sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(frames / (time.perf_counter() - t0))
    return statistics.median(out)


def _device_used_mib() -> float:
    import torch

    if not torch.cuda.is_available():  # the CPU dry run: no device memory to read
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def _peak_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def wav2lip_by_batch(inp, work: Path, device: str = "cuda", batches=WAV2LIP_BATCHES) -> dict:
    import onnxruntime as ort
    import torch

    from actors.models.wav2lip_runtime import load_wav2lip

    n = 512 if device == "cuda" else 2 * max(batches)
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((n, 1, 80, 16)).astype(np.float32)
    face = rng.random((n, 6, 96, 96)).astype(np.float32)
    res: dict = {}

    def sweep(runner) -> dict:
        return {b: _timed(lambda: [runner(mel[lo:lo + b], face[lo:lo + b]) for lo in range(0, n, b)], n)
                for b in batches}

    base = _device_used_mib()
    _peak_reset()
    res["torch_fp16"] = sweep(load_wav2lip(inp.checkpoint, device))
    res["torch_fp16_peak_allocated_mib"] = _peak_mib()
    from actors.models.wav2lip_window import MOUTH_WINDOW

    res["torch_fp16_mouth_window"] = sweep(load_wav2lip(inp.checkpoint, device, window=MOUTH_WINDOW))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    before = _device_used_mib()
    ort_runner = load_wav2lip(inp.onnx, device)
    res["onnx_cuda_providers"] = ort_runner.providers
    res["onnx_cuda"] = sweep(ort_runner)
    res["onnx_cuda_device_mib"] = _device_used_mib() - before
    res["device_baseline_mib"] = base
    del ort_runner
    if device == "cuda" and "TensorrtExecutionProvider" in ort.get_available_providers():
        try:
            opts = ort.SessionOptions()
            trt = ("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                                 "trt_engine_cache_path": str(work / "trt-cache"),
                                                 "trt_profile_min_shapes": "mel:1x1x80x16,face:1x6x96x96",
                                                 "trt_profile_max_shapes": "mel:256x1x80x16,face:256x6x96x96",
                                                 "trt_profile_opt_shapes": "mel:64x1x80x16,face:64x6x96x96"})
            sess = ort.InferenceSession(inp.onnx, opts, providers=[trt, "CUDAExecutionProvider"])
            run = lambda m, f: sess.run(None, {"mel": m, "face": f})  # noqa: E731
            res["tensorrt_fp16"] = sweep(run)
            res["tensorrt_providers"] = sess.get_providers()
        except Exception as exc:  # noqa: BLE001 - recorded
            res["tensorrt_fp16"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    else:
        res["tensorrt_fp16"] = {"skipped": "onnxruntime offers no TensorrtExecutionProvider "
                                "(needs the TensorRT libraries on the machine)"}
    return res


def musetalk_by_batch(work: Path, device: str = "cuda", batches=MUSETALK_BATCHES) -> dict:
    """``device="cpu"`` (the dry run): the reduced random models in fp32, no ``torch.compile``."""
    import torch

    from actors.generators.musetalk import MuseTalkGenerator
    from actors.models.musetalk.random_weights import write_random_models

    dry = device == "cpu"
    models = work / ("musetalk-reduced" if dry else "musetalk-random")
    if not (models / ".complete").exists():
        write_random_models(models, reduced=dry)
        (models / ".complete").write_text("ok")
    gen = MuseTalkGenerator(models, device=device, batch_size=8, dtype="fp32" if dry else "fp16")
    n = 2 * max(batches) if dry else 64
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 255, (n, gen.crop_size, gen.crop_size, 3), dtype=np.uint8)
    feats = rng.standard_normal((n, *gen.feature_shape)).astype(np.float32)
    latents = gen.encode_faces(faces)
    res: dict = {"frames": n}
    _peak_reset()
    full, unet_only = {}, {}
    for b in batches:
        gen.batch_size = b
        full[b] = _timed(lambda: gen.generate(faces, feats), n)
        unet_only[b] = _timed(lambda: gen.generate_from_latents(latents, feats), n)
    res["fp16_generate"] = full
    res["fp16_from_cached_latents"] = unet_only
    res["peak_allocated_mib"] = _peak_mib()
    best = max(unet_only, key=unet_only.get)
    if dry:
        res["compiled_from_cached_latents"] = {"skipped": "cpu dry run (torch.compile takes minutes on the CPU)"}
        return res
    try:
        gen.batch_size = best
        gen.models.unet = torch.compile(gen.models.unet, mode="max-autotune-no-cudagraphs", dynamic=False)
        t0 = time.perf_counter()
        gen.generate_from_latents(latents[:best], feats[:best])
        res["compile_seconds"] = time.perf_counter() - t0
        res["compiled_from_cached_latents"] = {best: _timed(lambda: gen.generate_from_latents(latents, feats), n)}
    except Exception as exc:  # noqa: BLE001 - recorded
        res["compiled_from_cached_latents"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    return res


def make_720p(work: Path, seconds: float = 10.0):
    import cv2

    from actors.media.template import iter_frames
    from actors.plan import source_index_map
    from bench.presenter import DEMO
    from tests.media import write_video

    path = work / "presenter_1280x720.mp4"
    if not path.exists():
        src = [cv2.resize(f, (720, 720), interpolation=cv2.INTER_CUBIC) for _, f in iter_frames(DEMO)]
        canvas = [cv2.copyMakeBorder(f, 0, 0, 280, 280, cv2.BORDER_REPLICATE) for f in src]
        write_video(path, (canvas[int(i)] for i in source_index_map(int(seconds * 25), len(canvas))))
    return path


def job_child(a) -> int:
    from actors.pipeline import LocalRenderer, RenderOptions

    opts = RenderOptions(backend="wav2lip", checkpoint=a.onnx, device=a.device, box=tuple(a.box),
                         cache_dir=a.cache_dir, prefer_nvenc=a.nvenc, batch_size=a.batch_size,
                         max_inflight=a.inflight)
    r = LocalRenderer(opts)
    r.render(a.audio, a.template, a.out + ".warm.mp4")  # warm cache, CUDA kernels, encoder
    if a.barrier:  # start together with the other job processes: once every one of them is warm
        barrier = Path(a.barrier)
        (barrier / f"{os.getpid()}.ready").write_text("ok")
        deadline = time.time() + 180
        while len(list(barrier.glob("*.ready"))) < a.jobs:  # a condition wait on the others' files
            if time.time() > deadline:
                raise RuntimeError(f"only {len(list(barrier.glob('*.ready')))} of {a.jobs} job processes got ready")
            time.sleep(0.01)
    s = r.render(a.audio, a.template, a.out)
    print(TAG + json.dumps({"frames": s.frames, "seconds": s.wall_seconds, "codec": r.writer.codec,
                            "stage_seconds": s.stage_seconds}), flush=True)
    return 0


def _jobs(inp, template: Path, work: Path, n: int, nvenc: bool, batch: int, device: str = "cuda") -> dict:
    # Box scaled from the presenter's: the 720p clip is the demo at 720x720 centred in 1280.
    x1, y1, x2, y2 = (int(v * 720 / 480) for v in inp.demo_box)
    box = (x1 + 280, y1, x2 + 280, y2)
    barrier = work / f"barrier-{n}-{'nvenc' if nvenc else 'x264'}"
    if n > 1:
        barrier.mkdir(parents=True, exist_ok=True)
        for stale in barrier.glob("*.ready"):
            stale.unlink()
    procs = []
    for k in range(n):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--job-child", "--onnx", inp.onnx,
               "--template", str(template), "--audio", inp.audio, "--cache-dir", str(work / f"cache-job{k}"),
               "--out", str(work / f"job{n}-{k}.mp4"), "--box", *map(str, box), "--batch-size", str(batch),
               "--device", device, "--jobs", str(n)] + (["--barrier", str(barrier)] if n > 1 else []) \
            + (["--nvenc"] if nvenc else [])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO)))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        lines = [ln for ln in out.splitlines() if ln.startswith(TAG)]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"job process failed: {err[-800:]}")
        results.append(json.loads(lines[-1][len(TAG):]))
    per_job = [r["frames"] / r["seconds"] for r in results]
    return {"jobs": n, "per_job_fps": statistics.median(per_job), "total_fps": sum(per_job),
            "frames": results[0]["frames"], "codec": results[0]["codec"], "stage_seconds": results[0]["stage_seconds"]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--job-child"]:
        p = argparse.ArgumentParser()
        for name in ("--onnx", "--template", "--audio", "--cache-dir", "--out"):
            p.add_argument(name, required=True)
        p.add_argument("--box", type=int, nargs=4, required=True)
        p.add_argument("--batch-size", type=int, default=64)
        p.add_argument("--inflight", type=int, default=3)
        p.add_argument("--device", default="cuda")
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--barrier", default=None)
        p.add_argument("--nvenc", action="store_true")
        return job_child(p.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=None)
    ap.add_argument("--skip", nargs="*", default=[], choices=("wav2lip", "musetalk", "e2e", "concurrency"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: a dry run of every code path with tiny sizes (CPU figures)")
    a = ap.parse_args(argv)

    import torch

    dry = a.device == "cpu"
    if not dry and not torch.cuda.is_available():
        print("bench_gpu: no usable CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}). Run this on a GPU machine.", file=sys.stderr)
        return 3
    from bench.presenter import prepare

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="lipserve-gpu-"))
    seconds = 2.0 if dry else 10.0
    inp = prepare(work, seconds=seconds)
    from actors.face.detector import make_detector
    from actors.media.template import iter_frames
    from bench.presenter import DEMO

    demo_box = tuple(int(v) for v in make_detector(None).detect(next(iter_frames(DEMO))[1])[0][:4])
    inp = type("Inputs", (), {**inp.__dict__, "demo_box": demo_box})()
    t_start = time.perf_counter()
    report: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": socket.gethostname(),
                    "gpu": None if dry else torch.cuda.get_device_name(0), "torch": torch.__version__}
    if dry:
        report["dry_run"] = "cpu: every section's code path on the CPU with tiny sizes; not GPU figures"

    def section(name, fn):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # noqa: BLE001 - recorded, the other sections still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        print(f"[{name}] {time.perf_counter() - t0:.0f} s: {json.dumps(report[name], default=str)[:600]}", flush=True)

    batch = 8 if dry else 64
    if "wav2lip" not in a.skip:
        section("wav2lip_generator_fps",
                lambda: wav2lip_by_batch(inp, work, a.device, (4, 8) if dry else WAV2LIP_BATCHES))
    if "musetalk" not in a.skip:
        section("musetalk_generator_fps",
                lambda: musetalk_by_batch(work, a.device, (1, 2) if dry else MUSETALK_BATCHES))
    template = make_720p(work, seconds)
    if "e2e" not in a.skip:
        section("e2e_720p", lambda: {"libx264": _jobs(inp, template, work, 1, False, batch, a.device),
                                     "nvenc": _jobs(inp, template, work, 1, not dry, batch, a.device)})
    if "concurrency" not in a.skip:
        def conc():
            out = []
            for n in (1, 2) if dry else (1, 2, 4, 8):
                if time.perf_counter() - t_start > 420:
                    out.append({"jobs": n, "skipped": "time budget"})
                    continue
                out.append(_jobs(inp, template, work, n, not dry, batch, a.device))
            return out
        section("concurrent_jobs_720p_nvenc", conc)
    from bench.gpu_sizing import recommend, yaml_snippet

    device_mib = None if dry else torch.cuda.get_device_properties(0).total_memory / 2**20
    report["sizing"] = recommend(report, device_mib)
    print("configs/gpu.yaml from these figures (bench/gpu_sizing.py):\n" + yaml_snippet(report["sizing"]), flush=True)
    report["total_seconds"] = time.perf_counter() - t_start
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = f"gpu-{'dry-' if dry else ''}{dt.date.today().isoformat()}-{socket.gethostname().split('.')[0]}.json"
    out = Path(os.environ.get("OUT", results)) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
