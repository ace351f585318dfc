"""Pipeline benchmark: peak memory versus clip length, and frames/s per stage.

Proves two goals of the in-process renderer (``actors.pipeline.LocalRenderer``) with printed figures:

1. **Memory does not grow with clip length.** Frames are streamed one segment at a time, so the peak
   RSS of a 60 s render must be at most 1.3x that of a 10 s render. Every render runs in a FRESH
   Python process (``subprocess.run([sys.executable, __file__, "--child", ...])``, an argument list,
   no shell), which reports its own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) when
   it is done, so one render's peak never hides behind another's.
2. **Speed.** frames/s of every stage (``RenderSummary.stage_seconds``: audio, avatar, generate,
   write, finalize; frames/s = output frames / stage seconds) and of the whole render.

Inputs: the bundled ``assets/demo_template.mp4`` (real face, real Haar detection; 4 s, so longer
audio ping-pongs through it) and speech-like audio of each length from ``tests.media.speech_like``,
written as WAV into a temporary folder.

Avatar cache, measured both ways (each clip length gets one child of each):

* ``warm``: the parent builds the avatar once into a shared cache before any child runs, so those
  children measure only the audio-dependent work (what a repeat job on a known template costs).
  The PASS/FAIL verdict is taken on these.
* ``cold``: each child gets its own empty cache folder, so its render includes the avatar build
  (probe + face tracking + crops) as a first job on a new template would. Also reported, also judged.

Usage (from the repository root)::

    .venv/bin/python bench/bench_pipeline.py                       # default weight-free backend, 10 s and 60 s
    .venv/bin/python bench/bench_pipeline.py --seconds 10 30 60
    .venv/bin/python bench/bench_pipeline.py --backend wav2lip     # random-init Wav2Lip checkpoint, torch CPU
    .venv/bin/python bench/bench_pipeline.py --backend wav2lip --onnx   # torch AND the exported ONNX (onnxruntime CPU)
    .venv/bin/python bench/bench_pipeline.py --json                # also one JSON line at the end

Exit status: 0 when every verdict is PASS, 1 when any is FAIL, 2 when a render failed.
"""

from __future__ import annotations

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


def _current_rss_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------------
# Child: one render in a fresh process, reports its own figures as one tagged JSON line on stdout.


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench_pipeline.py --child")
    p.add_argument("--audio", required=True)
    p.add_argument("--template", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--backend", default="default")
    p.add_argument("--checkpoint", default=None)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    from actors.pipeline import LocalRenderer, RenderOptions

    opts = RenderOptions(backend=a.backend, checkpoint=a.checkpoint, device="cpu", cache_dir=a.cache_dir)
    renderer = LocalRenderer(opts)  # imports + generator load (+ codec pick), outside the render
    setup_s = time.perf_counter() - t0
    rss_before_kib = _maxrss_kib()  # peak so far: interpreter + libraries + generator, no render yet

    summary = renderer.render(a.audio, a.template, a.out)

    result = {
        "setup_seconds": setup_s,
        "rss_before_render_kib": rss_before_kib,
        "peak_rss_kib": _maxrss_kib(),
        "rss_at_end_kib": _current_rss_kib(),
        "grandchildren_peak_rss_kib": _maxrss_kib(resource.RUSAGE_CHILDREN),  # 0: the pipeline forks nothing
        "frames": summary.frames,
        "fps": summary.fps,
        "audio_seconds": summary.audio_seconds,
        "template_frames": summary.template_frames,
        "template_faces_found": summary.template_faces_found,
        "frames_without_face": summary.frames_without_face,
        "wall_seconds": summary.wall_seconds,
        "stage_seconds": summary.stage_seconds,
        "generator": repr(renderer.generator),
        "out_bytes": os.path.getsize(a.out),
    }
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# Parent.


def run_child(audio: Path, out: Path, cache_dir: Path, backend: str, checkpoint: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
           "--audio", str(audio), "--template", str(TEMPLATE), "--out", str(out),
           "--cache-dir", str(cache_dir), "--backend", backend]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child render failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"child printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_seconds"] = process_s
    return result


def prebuild_avatar(cache_dir: Path, backend: str, checkpoint: str | None) -> tuple[float, int]:
    """Build the template's avatar once, as the renderer would key it; returns (seconds, crop size)."""
    from actors.avatar import AvatarCache
    from actors.generators import make_generator
    from actors.pipeline import RenderOptions, avatar_params_for

    opts = RenderOptions(backend=backend, checkpoint=checkpoint, device="cpu", cache_dir=str(cache_dir))
    crop_size = make_generator(backend, checkpoint, "cpu").crop_size
    t0 = time.perf_counter()
    AvatarCache(cache_dir, opts.limits).get_or_build(TEMPLATE, avatar_params_for(opts, crop_size))
    return time.perf_counter() - t0, crop_size


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

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0],
                    help="clip lengths in seconds (default: 10 60); the RSS ratio is longest / shortest")
    ap.add_argument("--backend", default="default", choices=("default", "mouth_warp", "wav2lip"),
                    help="generator backend (default: the weight-free mouth warp)")
    ap.add_argument("--checkpoint", default=None,
                    help="wav2lip checkpoint (.pth/.pt/.onnx); default: a random-init one made for the run")
    ap.add_argument("--onnx", action="store_true",
                    help="wav2lip: also export the (torch) checkpoint to ONNX and bench onnxruntime CPU against torch")
    ap.add_argument("--json", action="store_true", help="also print all figures as one JSON line at the end")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (audio, outputs, caches)")
    args = ap.parse_args(argv)

    seconds = sorted(set(args.seconds))
    if any(s <= 0 for s in seconds):
        ap.error("--seconds must be positive")
    if args.backend != "wav2lip" and (args.checkpoint or args.onnx):
        ap.error("--checkpoint and --onnx only apply to --backend wav2lip")

    from tests.media import speech_like, write_audio

    work = Path(tempfile.mkdtemp(prefix="lipserve-bench-"))
    try:
        # Generator configurations: (label, backend, checkpoint).
        configs: list[tuple[str, str, str | None]] = []
        if args.backend == "wav2lip":
            ckpt = args.checkpoint
            if not ckpt:
                from actors.models.wav2lip import save_random_checkpoint

                ckpt = str(save_random_checkpoint(work / "wav2lip_random.pth"))
                print(f"wav2lip: random-init checkpoint {ckpt} (weights are random: speed/memory only)")
            if ckpt.lower().endswith(".onnx"):
                if args.onnx:
                    ap.error("--onnx exports a torch checkpoint; --checkpoint is already .onnx")
                configs.append(("wav2lip-onnx", "wav2lip", ckpt))
            else:
                configs.append(("wav2lip-torch", "wav2lip", ckpt))
                if args.onnx:
                    from actors.models.wav2lip import export_onnx

                    t0 = time.perf_counter()
                    onnx_path = str(export_onnx(ckpt, work / "wav2lip.onnx"))
                    print(f"wav2lip: exported {onnx_path} in {time.perf_counter() - t0:.1f} s (verified against torch)")
                    configs.append(("wav2lip-onnx", "wav2lip", onnx_path))
        else:
            configs.append((args.backend, args.backend, None))

        audio: dict[float, Path] = {}
        for s in seconds:
            audio[s] = write_audio(work / f"speech_{s:g}s.wav", speech_like(s, seed=0))

        print(f"template: {TEMPLATE.relative_to(REPO)}   clips: {', '.join(f'{s:g} s' for s in seconds)}   "
              f"cpus: {os.cpu_count()}   python: {sys.version.split()[0]}")
        print("each render runs in a fresh process; peak RSS = the child's own ru_maxrss at the end\n")

        results: list[dict] = []
        for label, backend, ckpt in configs:
            warm_cache = work / f"cache-warm-{label}"
            build_s, crop = prebuild_avatar(warm_cache, backend, ckpt)
            print(f"[{label}] avatar pre-built in the parent: {build_s:.2f} s (crop {crop}px); "
                  f"'warm' children reuse it, 'cold' children build their own")
            for cache_mode in ("warm", "cold"):
                for s in seconds:
                    cache_dir = warm_cache if cache_mode == "warm" else work / f"cache-cold-{label}-{s:g}"
                    r = run_child(audio[s], work / f"out-{label}-{cache_mode}-{s:g}.mp4", cache_dir, backend, ckpt)
                    r.update(config=label, cache=cache_mode, clip_seconds=s)
                    results.append(r)
                    print(f"  {cache_mode} {s:>5g} s: {r['frames']} frames, render {r['wall_seconds']:.2f} s, "
                          f"peak RSS {mib(r['peak_rss_kib'])} MiB", flush=True)
        print()

        # --- speed table
        headers = ["config", "cache", "clip s", "frames"] + [f"{st} f/s" for st in STAGES] + ["overall f/s", "render s"]
        rows = []
        for r in results:
            st = r["stage_seconds"]
            rows.append([r["config"], r["cache"], f"{r['clip_seconds']:g}", str(r["frames"])]
                        + [fmt_fps(fps_of(r["frames"], st.get(k, 0.0))) if k in st else "-" for k in STAGES]
                        + [fmt_fps(fps_of(r["frames"], r["wall_seconds"])), f"{r['wall_seconds']:.2f}"])
        print("Speed (frames/s = output frames / stage seconds; 'overall' = output frames / whole render)")
        print_table(headers, rows)
        print()

        headers = ["config", "cache", "clip s"] + [f"{st} s" for st in STAGES] + ["setup s", "process s"]
        rows = [[r["config"], r["cache"], f"{r['clip_seconds']:g}"]
                + [f"{r['stage_seconds'].get(k, 0.0):.3f}" for k in STAGES]
                + [f"{r['setup_seconds']:.2f}", f"{r['process_seconds']:.2f}"] for r in results]
        print("Stage seconds ('setup' = imports + generator load in the child, before the render; "
              "'process' = the whole child process)")
        print_table(headers, rows)
        print()

        # --- memory table + verdicts
        headers = ["config", "cache", "clip s", "RSS before render MiB", "peak RSS MiB", "render growth MiB"]
        rows = [[r["config"], r["cache"], f"{r['clip_seconds']:g}", mib(r["rss_before_render_kib"]),
                 mib(r["peak_rss_kib"]), mib(r["peak_rss_kib"] - r["rss_before_render_kib"])] for r in results]
        print("Memory (peak RSS = ru_maxrss of the child; growth = peak - peak before the render started)")
        print_table(headers, rows)
        print()

        verdicts = []
        lo, hi = seconds[0], seconds[-1]
        if len(seconds) >= 2:
            print(f"Peak RSS ratio {hi:g} s / {lo:g} s (goal: <= {RSS_LIMIT})")
            for label, _, _ in configs:
                for cache_mode in ("warm", "cold"):
                    by_s = {r["clip_seconds"]: r for r in results if r["config"] == label and r["cache"] == cache_mode}
                    ratio = by_s[hi]["peak_rss_kib"] / by_s[lo]["peak_rss_kib"]
                    growth_diff = ((by_s[hi]["peak_rss_kib"] - by_s[hi]["rss_before_render_kib"])
                                   - (by_s[lo]["peak_rss_kib"] - by_s[lo]["rss_before_render_kib"]))
                    ok = ratio <= RSS_LIMIT
                    verdicts.append({"config": label, "cache": cache_mode, "short_s": lo, "long_s": hi,
                                     "ratio": ratio, "limit": RSS_LIMIT, "pass": ok,
                                     "render_growth_diff_kib": growth_diff})
                    print(f"  {label:<14} {cache_mode}: {mib(by_s[hi]['peak_rss_kib'])} / "
                          f"{mib(by_s[lo]['peak_rss_kib'])} MiB = {ratio:.3f}  {'PASS' if ok else 'FAIL'}   "
                          f"(render growth differs by {growth_diff / 1024:+.1f} MiB)")
        else:
            print("one clip length only: no RSS ratio")

        if len(configs) == 2:  # torch vs onnxruntime
            print(f"\nwav2lip generate stage, onnxruntime vs torch (CPU, warm cache, {hi:g} s clip)")
            g = {r["config"]: r for r in results if r["cache"] == "warm" and r["clip_seconds"] == hi}
            t_fps = fps_of(g["wav2lip-torch"]["frames"], g["wav2lip-torch"]["stage_seconds"]["generate"])
            o_fps = fps_of(g["wav2lip-onnx"]["frames"], g["wav2lip-onnx"]["stage_seconds"]["generate"])
            print(f"  torch {fmt_fps(t_fps)} f/s, onnxruntime {fmt_fps(o_fps)} f/s: onnxruntime is {o_fps / t_fps:.2f}x")

        if args.json:
            print(json.dumps({"bench": "pipeline", "seconds": seconds, "cpus": os.cpu_count(),
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
