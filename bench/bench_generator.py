"""Wav2Lip generator throughput on CPU: onnxruntime settings, batch size, int8, OpenVINO, mouth window.

Every figure is the median of ``--repeats`` passes over the same 128 frames (real crops of the
bundled demo, its speech's mel windows), after one warm-up batch:

* onnxruntime graph optimisation level (basic / extended / all) at the default threads;
* intra-op threads (1, 2, ..., cores) with and without spin-waiting;
* batch size (8 .. 128) at the chosen settings;
* torch fp32 CPU for comparison;
* int8 (static QDQ, ``actors/models/wav2lip_quantize.py``), an option only: frames/s and the
  output PSNR against fp32 on the bundled demo (all 100 frames);
* OpenVINO's CPU runtime (``actors/models/wav2lip_openvino.py``, the default CPU engine): fp32,
  with its largest difference from onnxruntime, and bf16 (an option) with its PSNR against fp32 on
  the bundled demo;
* the mouth-window export (the default, ``actors/models/wav2lip_window.py``) against the whole-crop
  one, on both engines.

Usage: python bench/bench_generator.py [--repeats 3] [--work DIR] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

N = 128

def demo_inputs(work: Path):
    """(faces uint8[n,96,96,3], mels float32[n,80,16]) of the bundled demo's frames with a face
    (Haar-detected): the same inputs ``lipserve quantize-onnx`` calibrates on."""
    from actors.models.wav2lip_quantize import calibration_inputs

    return calibration_inputs(REPO / "assets" / "demo_template.mp4", REPO / "assets" / "demo_speech.wav",
                              work / "cache-demo", max_frames=10**6)


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([x] * (n // len(x) + 1))[:n]


def _session(path: str, threads: int | None, spin: bool, level: str):
    import onnxruntime as ort

    from actors.models.wav2lip_runtime import cpu_session_options

    o = cpu_session_options(ort, threads, spin)
    o.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])


def _fps(run, mel, face, batch: int, repeats: int) -> float:
    run(mel[:batch], face[:batch])
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for lo in range(0, len(mel), batch):
            run(mel[lo:lo + batch], face[lo:lo + batch])
        out.append(len(mel) / (time.perf_counter() - t0))
    return statistics.median(out)


def _ort_run(sess):
    return lambda m, f: sess.run(None, {"mel": m, "face": f})


def _uint8(pred: np.ndarray) -> np.ndarray:
    return np.clip(pred * 255.0 + 0.5, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def measure(work: Path, repeats: int, quick: bool) -> dict:
    from actors.generators.wav2lip import build_face_input, build_mel_input
    from actors.models.wav2lip_quantize import quantize_int8
    from actors.models.wav2lip_runtime import load_wav2lip
    from bench.presenter import prepare

    import logging

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing advice
    inp = prepare(work)
    faces, mels = demo_inputs(work)
    mel, face = build_mel_input(_tile(mels, N)), build_face_input(_tile(faces, N))
    cores = os.cpu_count() or 1
    r: dict = {"frames_per_pass": N, "repeats": repeats, "cpus": cores, "loadavg_start": os.getloadavg()[0]}

    levels = ("basic", "all") if quick else ("basic", "extended", "all")
    r["opt_level_fps"] = {lv: _fps(_ort_run(_session(inp.onnx, None, False, lv)), mel, face, 32, repeats)
                          for lv in levels}
    print(f"  graph optimisation level (batch 32): {r['opt_level_fps']}", flush=True)
    threads = sorted({1, cores})
    r["threads_fps"] = {}
    for th in threads:
        for spin in (False, True):
            key = f"{th}{' spin' if spin else ''}"
            r["threads_fps"][key] = _fps(_ort_run(_session(inp.onnx, th, spin, "all")), mel, face, 32, repeats)
    print(f"  intra-op threads (batch 32): {r['threads_fps']}", flush=True)
    sess = _session(inp.onnx, None, False, "all")
    batches = (8, 32, 128) if quick else (8, 16, 32, 64, 128)
    r["batch_fps"] = {b: _fps(_ort_run(sess), mel, face, b, repeats) for b in batches}
    print(f"  batch size (all, default threads, no spin): {r['batch_fps']}", flush=True)

    torch_runner = load_wav2lip(inp.checkpoint, "cpu")
    r["torch_fp32_fps"] = _fps(torch_runner, mel, face, 32, max(1, repeats - 1) if quick else repeats)
    print(f"  torch fp32 CPU (batch 32): {r['torch_fp32_fps']:.1f}", flush=True)

    # int8 (option): calibrated on the demo's own crops and mel windows; PSNR on its 100 frames.
    int8_path = work / "wav2lip.int8.onnx"
    if not int8_path.exists():
        quantize_int8(inp.onnx, int8_path, faces, mels)
    fp32_out = _uint8(_ort_run(sess)(build_mel_input(mels), build_face_input(faces))[0])
    s8 = _session(str(int8_path), None, False, "all")
    int8_out = _uint8(_ort_run(s8)(build_mel_input(mels), build_face_input(faces))[0])
    r["int8"] = {"fps": _fps(_ort_run(s8), mel, face, 32, repeats), "psnr_vs_fp32_db": psnr(int8_out, fp32_out),
                 "note": "static QDQ, per-channel weights, calibrated on the bundled demo; random-init weights"}
    print(f"  int8 static QDQ (batch 32): {r['int8']['fps']:.1f} f/s, PSNR vs fp32 {r['int8']['psnr_vs_fp32_db']:.1f} dB",
          flush=True)

    # OpenVINO (fp32: same results as onnxruntime to rounding; bf16: an option) and the window.
    from actors.models.wav2lip_export import export_onnx

    full_path = work / "wav2lip_full.onnx"
    if not full_path.exists():
        export_onnx(inp.checkpoint, full_path, window=None)
    ort_out = _ort_run(sess)(build_mel_input(mels), build_face_input(faces))[0]
    ov = {}
    for prec in ("fp32", "bf16"):
        runner = load_wav2lip(inp.onnx, "cpu", engine="openvino", precision=prec)
        out = runner(build_mel_input(mels), build_face_input(faces))
        ov[prec] = {"fps": _fps(runner, mel, face, 32, repeats), "compiled_precision": runner.precision,
                    "max_abs_diff_vs_onnxruntime": float(np.abs(out - ort_out).max()),
                    "psnr_vs_fp32_db": psnr(_uint8(out), fp32_out)}
    int8_ov = load_wav2lip(str(int8_path), "cpu", engine="openvino")
    ov["int8"] = {"fps": _fps(int8_ov, mel, face, 32, repeats),
                  "psnr_vs_fp32_db": psnr(_uint8(int8_ov(build_mel_input(mels), build_face_input(faces))), fp32_out)}
    ov["fp32_whole_crop_fps"] = _fps(load_wav2lip(str(full_path), "cpu", engine="openvino"), mel, face, 32, repeats)
    r["openvino"] = ov
    r["onnxruntime_whole_crop_fps"] = _fps(_ort_run(_session(str(full_path), None, False, "all")), mel, face, 32,
                                           repeats)
    r["onnxruntime_mouth_fps"] = r["batch_fps"][32] if 32 in r["batch_fps"] else None
    print(f"  OpenVINO fp32 {ov['fp32']['fps']:.1f} f/s (max diff vs onnxruntime {ov['fp32']['max_abs_diff_vs_onnxruntime']:.2g}), "
          f"bf16 {ov['bf16']['fps']:.1f} f/s (compiled {ov['bf16']['compiled_precision']}, PSNR vs fp32 "
          f"{ov['bf16']['psnr_vs_fp32_db'] or float('inf'):.1f} dB), int8 {ov['int8']['fps']:.1f} f/s (PSNR "
          f"{ov['int8']['psnr_vs_fp32_db'] or float('inf'):.1f} dB); whole crop: OpenVINO {ov['fp32_whole_crop_fps']:.1f}, "
          f"onnxruntime {r['onnxruntime_whole_crop_fps']:.1f} f/s", flush=True)
    r["best_batch"] = max(r["batch_fps"], key=r["batch_fps"].get)
    r["loadavg_end"] = os.getloadavg()[0]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer levels and batch sizes (make bench)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="lipserve-gen-"))
    r = measure(work, a.repeats, a.quick)
    print(f"best batch: {r['best_batch']}")
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
