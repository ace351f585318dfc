"""Pipeline benchmark: peak memory versus clip length, and frames/s per stage.

Proves two goals of the in-process renderer (``actors.pipeline.LocalRenderer``) with printed figures:

1. **Memory does not grow with clip length.** Frames are streamed one segment at a time, so the peak
   RSS of a 60 s render must be at most 1.3x that of a 10 s render. Every render runs in a FRESH
   Python process (``subprocess.run([sys.executable, __file__, "--child", ...])``, an argument list,
   no shell), which reports its own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) when
   it is done, so one render's peak never hides behind another's.

   Linux carries the *parent's* high-water RSS into a child's ``ru_maxrss`` across fork/exec. So this
   parent stays lean (standard library only) and everything heavy (audio synthesis, checkpoint, ONNX
   export, avatar pre-build) runs in a separate ``--prepare`` child. Each render child also reports
   ``VmHWM`` from ``/proc/self/status`` (the peak of its own address space only) as a cross-check;
   the two agree when the parent is lean, and the verdict is taken on the larger of the two.
2. **Speed.** frames/s of every stage (``RenderSummary.stage_seconds``: audio, avatar, generate,
   write, finalize; frames/s = output frames / stage seconds) and of the whole render.

Inputs: the bundled ``assets/demo_template.mp4`` (real face, real Haar detection; 4 s, so longer
audio ping-pongs through it) and speech-like audio of each length from ``tests.media.speech_like``,
written as WAV into a temporary folder (removed afterwards unless ``--keep``).

Avatar cache, measured both ways by default (each clip length gets one child of each):

* ``warm``: the avatar is built once (by the ``--prepare`` child) into a shared cache before any
  render child runs, so those children measure only the audio-dependent work (what a repeat job on a
  known template costs).
* ``cold``: each child gets its own empty cache folder, so its render includes the avatar build
  (probe + face tracking + crops), as a first job on a new template would.

Both are judged against the 1.3 limit.

Usage (from the repository root)::

    .venv/bin/python bench/bench_pipeline.py                       # default weight-free backend, 10 s and 60 s
    .venv/bin/python bench/bench_pipeline.py --seconds 10 30 60
    .venv/bin/python bench/bench_pipeline.py --backend wav2lip     # random-init Wav2Lip checkpoint, torch CPU
    .venv/bin/python bench/bench_pipeline.py --backend wav2lip --onnx   # torch AND the exported ONNX (onnxruntime CPU)
    .venv/bin/python bench/bench_pipeline.py --cache warm          # only the warm-cache renders (half the time)
    .venv/bin/python bench/bench_pipeline.py --json                # also one JSON line at the end

Exit status: 0 when every verdict is PASS, 1 when any is FAIL, 2 when a child failed.
"""

from __future__ import annotations

# Standard library only at module level: the parent must stay small (see the docstring).
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script (`python bench/bench_pipeline.py`): make actors/ and tests/ importable
    sys.path.insert(0, str(REPO))

TEMPLATE = REPO / "assets" / "demo_template.mp4"
STAGES = ("audio", "avatar", "generate", "write", "finalize")
RSS_LIMIT = 1.3  # peak RSS of the longest clip / that of the shortest must stay at or below this
RESULT_TAG = "BENCH_PIPELINE_RESULT "


def _maxrss_kib(who: int = resource.RUSAGE_SELF) -> int:
    return int(resource.getrusage(who).ru_maxrss)  # KiB on Linux


def _proc_status_kib(field: str) -> int | None:
    """``VmHWM`` (peak RSS of this address space) or ``VmRSS`` (current) in KiB, None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _emit(result: dict) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------
# Child processes. Each prints one tagged JSON line on stdout.


def prepare_main(argv: list[str]) -> int:
    """Heavy set-up, kept out of the parent: audio files, wav2lip checkpoint/ONNX, avatar pre-build."""
    p = argparse.ArgumentParser(prog="bench_pipeline.py --prepare")
    p.add_argument("--work", required=True)
    p.add_argument("--seconds", type=float, nargs="+", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--onnx", action="store_true")
    p.add_argument("--prebuild", action="store_true")
    a = p.parse_args(argv)
    work = Path(a.work)

    from actors.avatar import AvatarCache
    from actors.generators import make_generator
    from actors.pipeline import RenderOptions, avatar_params_for
    from tests.media import speech_like, write_audio

    notes: list[str] = []
    configs: list[dict] = []  # label, backend, checkpoint, warm cache dir, build seconds, crop size
    if a.backend == "wav2lip":
        ckpt = a.checkpoint
        if not ckpt:
            from actors.models.wav2lip import save_random_checkpoint

            ckpt = str(save_random_checkpoint(work / "wav2lip_random.pth"))
            notes.append(f"wav2lip: random-init checkpoint {ckpt} (random weights: speed and memory only)")
        if ckpt.lower().endswith(".onnx"):
            configs.append({"label": "wav2lip-onnx", "backend": "wav2lip", "checkpoint": ckpt})
        else:
            configs.append({"label": "wav2lip-torch", "backend": "wav2lip", "checkpoint": ckpt})
            if a.onnx:
                from actors.models.wav2lip_export import export_onnx

                t0 = time.perf_counter()
                onnx_path = str(export_onnx(ckpt, work / "wav2lip.onnx"))
                notes.append(f"wav2lip: exported {onnx_path} in {time.perf_counter() - t0:.1f} s "
                             f"(verified against torch)")
                configs.append({"label": "wav2lip-onnx", "backend": "wav2lip", "checkpoint": onnx_path})
    else:
        configs.append({"label": a.backend, "backend": a.backend, "checkpoint": None})

    for cfg in configs:
        cfg["warm_cache"] = str(work / f"cache-warm-{cfg['label']}")
        geometry = make_generator(cfg["backend"], cfg["checkpoint"], "cpu").crop_geometry
        cfg["crop_size"] = geometry.crop_size
        cfg["prebuild_seconds"] = None
        if a.prebuild:
            opts = RenderOptions(backend=cfg["backend"], checkpoint=cfg["checkpoint"], device="cpu",
                                 cache_dir=cfg["warm_cache"])
            t0 = time.perf_counter()
            AvatarCache(opts.cache_dir, opts.limits).get_or_build(TEMPLATE, avatar_params_for(opts, geometry))
            cfg["prebuild_seconds"] = time.perf_counter() - t0

    audio = {}
    for s in a.seconds:
        audio[f"{s:g}"] = str(write_audio(work / f"speech_{s:g}s.wav", speech_like(s, seed=0)))
    _emit({"configs": configs, "audio": audio, "notes": notes})
    return 0


def child_main(argv: list[str]) -> int:
    """One render in a fresh process; reports its own peak RSS and the render summary."""
    p = argparse.ArgumentParser(prog="bench_pipeline.py --child")
    p.add_argument("--audio", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--backend", default="default")
    p.add_argument("--checkpoint", default=None)
    a = p.parse_args(argv)

    start_maxrss = _maxrss_kib()  # right after exec: the floor inherited from the parent, if any
    t0 = time.perf_counter()
    from actors.pipeline import LocalRenderer, RenderOptions

    opts = RenderOptions(backend=a.backend, checkpoint=a.checkpoint, device="cpu", cache_dir=a.cache_dir)
    renderer = LocalRenderer(opts)  # imports + generator load, outside the render
    setup_s = time.perf_counter() - t0
    before = {"ru_maxrss_kib": _maxrss_kib(), "vmhwm_kib": _proc_status_kib("VmHWM")}

    summary = renderer.render(a.audio, a.template, a.out)

    _emit({
        "setup_seconds": setup_s,
        "start_ru_maxrss_kib": start_maxrss,
        "before_render_ru_maxrss_kib": before["ru_maxrss_kib"],
        "before_render_vmhwm_kib": before["vmhwm_kib"],
        "peak_ru_maxrss_kib": _maxrss_kib(),
        "peak_vmhwm_kib": _proc_status_kib("VmHWM"),
        "rss_at_end_kib": _proc_status_kib("VmRSS"),
        "grandchildren_peak_rss_kib": _maxrss_kib(resource.RUSAGE_CHILDREN),  # 0: the pipeline starts no process
        "frames": summary.frames,
        "fps": summary.fps,
        "audio_seconds": summary.audio_seconds,
        "template_frames": summary.template_frames,
        "template_faces_found": summary.template_faces_found,
        "frames_without_face": summary.frames_without_face,
        "wall_seconds": summary.wall_seconds,
        "stage_seconds": summary.stage_seconds,
        "out_bytes": os.path.getsize(a.out),
    })
    return 0


# --------------------------------------------------------------------------------------------------
# Parent.


def run_tagged(args: list[str]) -> dict:
    """Run this file again in a fresh interpreter with ``args``; return its tagged JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"{args[0]} process printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = process_s
    return result


def peak_kib(r: dict) -> int:
    """The figure judged: the larger of ru_maxrss and VmHWM (equal unless the parent was heavy)."""
    return max(r["peak_ru_maxrss_kib"], r["peak_vmhwm_kib"] or 0)


def before_kib(r: dict) -> int:
    return max(r["before_render_ru_maxrss_kib"], r["before_render_vmhwm_kib"] or 0)


def fps_of(frames: int, seconds: float) -> float:
    return frames / seconds if seconds > 0 else float("inf")


def fmt_fps(x: float) -> str:
    if x == float("inf"):
        return "inf"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    if argv[:1] == ["--prepare"]:
        return prepare_main(argv[1:])

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0],
                    help="clip lengths in seconds (default: 10 60); the RSS ratio is longest / shortest")
    ap.add_argument("--backend", default="default", choices=("default", "mouth_warp", "wav2lip"),
                    help="generator backend (default: the weight-free mouth warp)")
    ap.add_argument("--checkpoint", default=None,
                    help="wav2lip checkpoint (.pth/.pt/.onnx); default: a random-init one made for the run")
    ap.add_argument("--onnx", action="store_true",
                    help="wav2lip: also export the torch checkpoint to ONNX and bench onnxruntime CPU against torch")
    ap.add_argument("--cache", choices=("both", "warm", "cold"), default="both",
                    help="avatar cache modes to run (default: both)")
    ap.add_argument("--json", action="store_true", help="also print all figures as one JSON line at the end")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (audio, outputs, caches)")
    args = ap.parse_args(argv)

    seconds = sorted(set(args.seconds))
    if any(s <= 0 for s in seconds):
        ap.error("--seconds must be positive")
    if args.backend != "wav2lip" and (args.checkpoint or args.onnx):
        ap.error("--checkpoint and --onnx only apply to --backend wav2lip")
    if args.onnx and args.checkpoint and args.checkpoint.lower().endswith(".onnx"):
        ap.error("--onnx exports a torch checkpoint; --checkpoint is already .onnx")
    if args.checkpoint:
        args.checkpoint = str(Path(args.checkpoint).resolve())
    cache_modes = ("warm", "cold") if args.cache == "both" else (args.cache,)

    work = Path(tempfile.mkdtemp(prefix="lipserve-bench-"))
    try:
        prep_args = ["--prepare", "--work", str(work), "--seconds", *map(str, seconds), "--backend", args.backend]
        if args.checkpoint:
            prep_args += ["--checkpoint", args.checkpoint]
        if args.onnx:
            prep_args.append("--onnx")
        if "warm" in cache_modes:
            prep_args.append("--prebuild")
        prep = run_tagged(prep_args)
        for note in prep["notes"]:
            print(note)
        configs = prep["configs"]
        audio = prep["audio"]

        print(f"template: {TEMPLATE.relative_to(REPO)}   clips: {', '.join(f'{s:g} s' for s in seconds)}   "
              f"cpus: {os.cpu_count()}   python: {sys.version.split()[0]}")
        print(f"each render runs in a fresh process; this parent's own peak RSS is {mib(_maxrss_kib())} MiB "
              f"(the floor Linux puts under every child's ru_maxrss)\n")

        results: list[dict] = []
        for cfg in configs:
            label = cfg["label"]
            if cfg["prebuild_seconds"] is not None:
                print(f"[{label}] avatar pre-built once: {cfg['prebuild_seconds']:.2f} s (crop {cfg['crop_size']} px); "
                      f"'warm' children reuse it" + (", 'cold' children build their own" if "cold" in cache_modes else ""))
            else:
                print(f"[{label}] crop {cfg['crop_size']} px; 'cold' children build their own avatar")
            for cache_mode in cache_modes:
                for s in seconds:
                    cache_dir = cfg["warm_cache"] if cache_mode == "warm" else str(work / f"cache-cold-{label}-{s:g}")
                    child_args = ["--child", "--audio", audio[f"{s:g}"], "--template", str(TEMPLATE),
                                  "--out", str(work / f"out-{label}-{cache_mode}-{s:g}.mp4"),
                                  "--cache-dir", cache_dir, "--backend", cfg["backend"]]
                    if cfg["checkpoint"]:
                        child_args += ["--checkpoint", cfg["checkpoint"]]
                    r = run_tagged(child_args)
                    r.update(config=label, cache=cache_mode, clip_seconds=s)
                    results.append(r)
                    print(f"  {cache_mode} {s:>5g} s: {r['frames']} frames, render {r['wall_seconds']:.2f} s, "
                          f"peak RSS {mib(peak_kib(r))} MiB", flush=True)
        print()

        # --- speed
        headers = ["config", "cache", "clip s", "frames"] + [f"{st} f/s" for st in STAGES] + ["overall f/s", "render s"]
        rows = []
        for r in results:
            st = r["stage_seconds"]
            rows.append([r["config"], r["cache"], f"{r['clip_seconds']:g}", str(r["frames"])]
                        + [fmt_fps(fps_of(r["frames"], st[k])) if k in st else "-" for k in STAGES]
                        + [fmt_fps(fps_of(r["frames"], r["wall_seconds"])), f"{r['wall_seconds']:.2f}"])
        print("Speed: frames/s = output frames / stage seconds; overall = output frames / whole render "
              "(warm 'avatar' is a cache hit)")
        print_table(headers, rows)
        print()

        headers = ["config", "cache", "clip s"] + [f"{st} s" for st in STAGES] + ["setup s", "process s"]
        rows = [[r["config"], r["cache"], f"{r['clip_seconds']:g}"]
                + [f"{r['stage_seconds'].get(k, 0.0):.3f}" for k in STAGES]
                + [f"{r['setup_seconds']:.2f}", f"{r['process_seconds']:.2f}"] for r in results]
        print("Stage seconds: setup = imports + generator load in the child before the render; "
              "process = the whole child process")
        print_table(headers, rows)
        print()

        # --- memory
        headers = ["config", "cache", "clip s", "before render MiB", "peak ru_maxrss MiB", "peak VmHWM MiB",
                   "render growth MiB"]
        rows = [[r["config"], r["cache"], f"{r['clip_seconds']:g}", mib(before_kib(r)),
                 mib(r["peak_ru_maxrss_kib"]), mib(r["peak_vmhwm_kib"]), mib(peak_kib(r) - before_kib(r))]
                for r in results]
        print("Memory: peak RSS of each render child; before render = peak after imports + generator load; "
              "growth = peak - before render")
        print_table(headers, rows)
        print()

        verdicts = []
        lo, hi = seconds[0], seconds[-1]
        if len(seconds) >= 2:
            print(f"Peak RSS ratio {hi:g} s / {lo:g} s (goal: <= {RSS_LIMIT})")
            for cfg in configs:
                for cache_mode in cache_modes:
                    by_s = {r["clip_seconds"]: r for r in results
                            if r["config"] == cfg["label"] and r["cache"] == cache_mode}
                    long_kib, short_kib = peak_kib(by_s[hi]), peak_kib(by_s[lo])
                    ratio = long_kib / short_kib
                    growth_diff = (long_kib - before_kib(by_s[hi])) - (short_kib - before_kib(by_s[lo]))
                    ok = ratio <= RSS_LIMIT
                    verdicts.append({"config": cfg["label"], "cache": cache_mode, "short_s": lo, "long_s": hi,
                                     "long_peak_kib": long_kib, "short_peak_kib": short_kib, "ratio": ratio,
                                     "limit": RSS_LIMIT, "pass": ok, "render_growth_diff_kib": growth_diff})
                    print(f"  {cfg['label']:<14} {cache_mode}: {mib(long_kib)} / {mib(short_kib)} MiB = {ratio:.3f}  "
                          f"{'PASS' if ok else 'FAIL'}   (render growth {growth_diff / 1024:+.1f} MiB "
                          f"for {hi - lo:g} s more audio)")
        else:
            print("one clip length only: no RSS ratio")

        labels = {c["label"] for c in configs}
        if {"wav2lip-torch", "wav2lip-onnx"} <= labels:
            mode = cache_modes[0]
            g = {r["config"]: r for r in results if r["cache"] == mode and r["clip_seconds"] == hi}
            t_fps = fps_of(g["wav2lip-torch"]["frames"], g["wav2lip-torch"]["stage_seconds"]["generate"])
            o_fps = fps_of(g["wav2lip-onnx"]["frames"], g["wav2lip-onnx"]["stage_seconds"]["generate"])
            print(f"\nwav2lip generate stage on CPU ({mode} cache, {hi:g} s clip): torch {fmt_fps(t_fps)} f/s, "
                  f"onnxruntime {fmt_fps(o_fps)} f/s -> onnxruntime is {o_fps / t_fps:.2f}x torch")

        if args.json:
            print(json.dumps({"bench": "pipeline", "seconds": seconds, "cpus": os.cpu_count(),
                              "parent_peak_rss_kib": _maxrss_kib(), "configs": configs,
                              "results": results, "verdicts": verdicts}))
        return 0 if all(v["pass"] for v in verdicts) else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as exc:
        print(f"bench_pipeline: {exc}", file=sys.stderr)
        sys.exit(2)
