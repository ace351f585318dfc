"""Pipeline efficiency and the head-to-head against the public Wav2Lip ``inference.py`` flow.

On the 10 s 576x768 presenter clip of ``bench/presenter.py`` (random-init Wav2Lip weights, fixed
face box, avatar cache warm), every figure the median of ``--repeats`` runs (default 3), each run in
a fresh process:

* **generator only**: ``Wav2LipGenerator.generate`` (the default CPU engine) over the clip's 250 crops +
  mel windows, nothing else running: generator frames/s;
* **end to end**: ``LocalRenderer.render`` (what ``lipserve render`` runs) of the same clip:
  frames/s, and **pipeline efficiency** = end-to-end frames/s / generator-only frames/s (goal >= 0.9);
  beside it the **CPU-bound ceiling** = generator-only CPU-seconds / the render's CPU-seconds: when
  the generator already keeps every core busy, overlap cannot hide the other stages' CPU time, so
  efficiency cannot pass this (efficiency near the ceiling = the stages overlap fully);
* **head-to-head**: the whole ``lipserve render`` process (imports, model load, render) vs the whole
  ``bench/wav2lip_reference_flow.py`` process (the public script's flow, torch, batch 128) on the
  same input, weights and box: wall ratio (goal <= 0.45); CPU-seconds of both are printed too (on a
  shared machine they are steadier than wall times).

Usage: python bench/bench_headtohead.py [--repeats 3] [--work DIR] [--engine auto|onnxruntime|openvino] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TAG = "BENCH_H2H "


def _child_ours(a) -> int:
    t_proc = time.perf_counter()
    import numpy as np

    from actors.media.audio import decode_audio
    from actors.pipeline import LocalRenderer, RenderOptions, avatar_params_for
    from actors.plan import source_index_map

    opts = RenderOptions(backend="wav2lip", checkpoint=a.onnx, box=tuple(a.box), cache_dir=a.cache_dir,
                         batch_size=a.batch_size, threads=a.threads or None, engine=a.engine)
    renderer = LocalRenderer(opts)
    result: dict = {}
    if a.what in ("e2e", "both"):
        c0 = _cpu_self()
        t0 = time.perf_counter()
        s = renderer.render(a.audio, a.template, a.out)
        result.update(e2e_seconds=time.perf_counter() - t0, frames=s.frames, stage_seconds=s.stage_seconds,
                      process_seconds=time.perf_counter() - t_proc, out_bytes=os.path.getsize(a.out),
                      cpu_seconds=_cpu_self(), render_cpu_seconds=_cpu_self() - c0)
    if a.what in ("gen", "both"):
        avatar = renderer.cache.get_or_build(a.template, avatar_params_for(opts, renderer.generator.crop_geometry))
        gen = renderer.generator
        n = avatar.n_frames
        feats = gen.prepare_audio(decode_audio(a.audio), avatar.info.fps, n)
        faces = np.asarray(avatar.crops())[source_index_map(n, avatar.n_frames)]
        c0 = _cpu_self()
        t0 = time.perf_counter()
        gen.generate(faces, feats)
        result.update(gen_seconds=time.perf_counter() - t0, gen_frames=n, gen_cpu_seconds=_cpu_self() - c0,
                      engine=f"{gen.backend} {gen.precision}, window {gen.window}")
    print(TAG + json.dumps(result), flush=True)
    return 0


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run(args: list[str]) -> tuple[dict, float, float]:
    """(tagged JSON or the last stdout JSON line, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(REPO))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith(("{", TAG))]
    return json.loads(lines[-1].removeprefix(TAG)), wall, cpu


def measure(work: Path, repeats: int, batch_size: int = 32, threads: int = 0, engine: str = "auto") -> dict:
    from bench.presenter import prepare

    inp = prepare(work)
    cache = work / "cache-h2h"
    base = [str(Path(__file__).resolve()), "--child", "--onnx", inp.onnx, "--template", inp.template,
            "--audio", inp.audio, "--cache-dir", str(cache), "--box", *map(str, inp.box),
            "--batch-size", str(batch_size), "--threads", str(threads), "--engine", engine]
    _run(base + ["--what", "e2e", "--out", str(work / "h2h-warm.mp4")])  # builds the avatar cache
    runs = []
    for k in range(repeats):
        gen, _, _ = _run(base + ["--what", "gen", "--out", str(work / "unused.mp4")])
        ours, ours_wall, ours_cpu = _run(base + ["--what", "e2e", "--out", str(work / f"h2h-ours-{k}.mp4")])
        ref, ref_wall, ref_cpu = _run([str(REPO / "bench" / "wav2lip_reference_flow.py"), "--face", inp.template,
                                       "--audio", inp.audio, "--checkpoint", inp.checkpoint,
                                       "--box", *map(str, inp.padded_box), "--outfile", str(work / f"h2h-ref-{k}.mp4")])
        runs.append({
            "gen_fps": gen["gen_frames"] / gen["gen_seconds"], "gen_cpu_seconds": gen["gen_cpu_seconds"],
            "engine": gen.get("engine"),
            "e2e_fps": ours["frames"] / ours["e2e_seconds"], "e2e_seconds": ours["e2e_seconds"],
            "render_cpu_seconds": ours["render_cpu_seconds"],
            "cpu_ceiling": gen["gen_cpu_seconds"] / ours["render_cpu_seconds"],
            "stage_seconds": ours["stage_seconds"], "out_bytes": ours["out_bytes"],
            "ours_process_seconds": ours_wall, "ours_cpu_seconds": ours_cpu,
            "ref_process_seconds": ref_wall, "ref_cpu_seconds": ref_cpu, "ref_frames": ref["frames"],
            "ref_stage_seconds": ref["seconds"], "loadavg_1m": os.getloadavg()[0],
        })
        print(f"  run {k + 1}/{repeats}: generator {runs[-1]['gen_fps']:.1f} f/s, end to end "
              f"{runs[-1]['e2e_fps']:.1f} f/s; lipserve render {ours_wall:.1f} s vs reference {ref_wall:.1f} s "
              f"(load {runs[-1]['loadavg_1m']:.1f})", flush=True)
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    eff = [r["e2e_fps"] / r["gen_fps"] for r in runs]
    ratio = [r["ours_process_seconds"] / r["ref_process_seconds"] for r in runs]
    cpu_ratio = [r["ours_cpu_seconds"] / r["ref_cpu_seconds"] for r in runs]
    return {
        "clip": {"template": Path(inp.template).name, "size": "576x768", "seconds": inp.seconds,
                 "frames": inp.frames, "box": inp.box, "crop_region": inp.padded_box},
        "repeats": repeats, "batch_size": batch_size, "threads": threads or None, "runs": runs,
        "engine": runs[0]["engine"] if runs else None,
        "generator_fps": med("gen_fps"), "e2e_fps": med("e2e_fps"),
        "pipeline_efficiency": statistics.median(eff), "efficiency_goal": 0.9,
        "cpu_ceiling": med("cpu_ceiling"), "cpus": os.cpu_count(),
        "ours_process_seconds": med("ours_process_seconds"), "ref_process_seconds": med("ref_process_seconds"),
        "ours_cpu_seconds": med("ours_cpu_seconds"), "ref_cpu_seconds": med("ref_cpu_seconds"),
        "headtohead_ratio": statistics.median(ratio), "headtohead_cpu_ratio": statistics.median(cpu_ratio),
        "headtohead_goal": 0.45,
    }


def print_report(r: dict) -> None:
    rows = [
        ("generator only (" + r.get("engine", "CPU") + ")", f"{r['generator_fps']:.1f} f/s", ""),
        ("end to end (LocalRenderer.render)", f"{r['e2e_fps']:.1f} f/s", ""),
        ("pipeline efficiency (e2e / generator)", f"{r['pipeline_efficiency']:.3f}",
         f">= 0.9 {'PASS' if r['pipeline_efficiency'] >= 0.9 else 'FAIL'}"),
        (f"  CPU-bound ceiling (generator CPU / render CPU, {r['cpus']} cores)", f"{r['cpu_ceiling']:.3f}", ""),
        ("lipserve render process (wall)", f"{r['ours_process_seconds']:.2f} s", ""),
        ("reference inference.py flow process (wall)", f"{r['ref_process_seconds']:.2f} s", ""),
        ("head-to-head wall ratio", f"{r['headtohead_ratio']:.3f}",
         f"<= 0.45 {'PASS' if r['headtohead_ratio'] <= 0.45 else 'FAIL'}"),
        ("CPU-seconds ours / reference",
         f"{r['ours_cpu_seconds']:.1f} / {r['ref_cpu_seconds']:.1f} = {r['headtohead_cpu_ratio']:.3f}", ""),
    ]
    print(f"Head-to-head on {r['clip']['template']} ({r['clip']['frames']} frames), median of {r['repeats']}")
    for name, value, goal in rows:
        print(f"  {name:<44} {value:>22}  {goal}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        p = argparse.ArgumentParser()
        for name in ("--onnx", "--template", "--audio", "--cache-dir", "--out", "--what"):
            p.add_argument(name, required=True)
        p.add_argument("--box", type=int, nargs=4, required=True)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--engine", default="auto")
        return _child_ours(p.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="generator threads (0: onnxruntime's default)")
    ap.add_argument("--work", default=None, help="folder for inputs (reused) and outputs")
    ap.add_argument("--engine", default="auto", choices=["auto", "onnxruntime", "openvino"],
                    help="what runs the .onnx (auto: OpenVINO when installed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="lipserve-h2h-"))
    r = measure(work, a.repeats, a.batch_size, a.threads, a.engine)
    print_report(r)
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
