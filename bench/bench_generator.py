"""Wav2Lip generator throughput on CPU: onnxruntime settings, batch size, int8, OpenVINO.

Every figure is the median of ``--repeats`` passes over the same 128 frames (real crops of the
bundled demo, its speech's mel windows), after one warm-up batch:

* onnxruntime graph optimisation level (basic / extended / all) at the default threads;
* intra-op threads (1, 2, ..., cores) with and without spin-waiting;
* batch size (8 .. 128) at the chosen settings;
* torch fp32 CPU for comparison;
* int8 (static QDQ, ``actors/models/wav2lip_quantize.py``), an option only: frames/s and the
  output PSNR against fp32 on the bundled demo (all 100 frames);
* OpenVINO execution provider: ``onnxruntime-openvino`` replaces onnxruntime-gpu's module, so it
  lives in a separate virtual environment; pass its python with ``--openvino-python`` (or set
  ``LIPSERVE_OPENVINO_PYTHON``); skipped with a note otherwise.

Usage: python bench/bench_generator.py [--repeats 3] [--work DIR] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
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

N = 128

# Runs under the OpenVINO venv's python: numpy + onnxruntime-openvino only, no project imports.
_OV_SCRIPT = r"""
import json, sys, time, numpy as np, onnxruntime as ort
path, data, reps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = np.load(data); mel, face, ref = d["mel"], d["face"], d["ref"]
o = ort.SessionOptions(); o.add_session_config_entry("session.intra_op.allow_spinning", "0")
res = {"available": ort.get_available_providers(), "version": ort.__version__, "by_precision": {}}
for prec in ("FP32", "ACCURACY"):
    prov = [("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": prec, "num_of_threads": str(threads)})]
    s = ort.InferenceSession(path, o, providers=prov)
    s.run(None, {"mel": mel[:32], "face": face[:32]})
    fps = []
    for _ in range(reps):
        t0 = time.perf_counter()
        outs = [s.run(None, {"mel": mel[lo:lo + 32], "face": face[lo:lo + 32]})[0] for lo in range(0, len(mel), 32)]
        fps.append(len(mel) / (time.perf_counter() - t0))
    out = np.concatenate(outs)
    mse = float(np.mean((np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8).astype(np.float64) - ref) ** 2))
    res["by_precision"][prec] = {"fps": sorted(fps)[len(fps) // 2], "providers": s.get_providers(),
                                 "psnr_vs_cpu_ep_db": None if mse == 0 else 10 * np.log10(255 ** 2 / mse)}
print("OVRESULT " + json.dumps(res))
"""


def demo_inputs(work: Path):
    """(faces uint8[100,96,96,3], mels float32[100,80,16]) of the bundled demo (Haar-detected)."""
    from actors.avatar import AvatarCache, AvatarParams
    from actors.generators.mel import mel_features
    from actors.media.audio import decode_audio

    demo = REPO / "assets" / "demo_template.mp4"
    avatar = AvatarCache(work / "cache-demo").get_or_build(demo, AvatarParams(crop_size=96))
    faces = np.asarray(avatar.crops())
    mels = mel_features(decode_audio(REPO / "assets" / "demo_speech.wav"), avatar.info.fps, len(faces))
    return faces, mels


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


def measure(work: Path, repeats: int, quick: bool, openvino_python: str | None) -> dict:
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

    ov_py = openvino_python or os.environ.get("LIPSERVE_OPENVINO_PYTHON")
    if ov_py and Path(ov_py).exists():
        data = work / "ov-inputs.npz"
        ref = _uint8(_ort_run(sess)(mel, face)[0]).astype(np.float64)
        np.savez(data, mel=mel, face=face, ref=ref)
        proc = subprocess.run([ov_py, "-c", _OV_SCRIPT, inp.onnx, str(data), str(repeats), str(cores)],
                              capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OVRESULT ")]
        r["openvino"] = (json.loads(lines[-1][9:]) if lines
                         else {"error": proc.stderr.strip().splitlines()[-1:] or ["no output"]})
        print(f"  OpenVINO EP: {r['openvino']}", flush=True)
    else:
        r["openvino"] = {"skipped": "onnxruntime-openvino conflicts with onnxruntime-gpu (one 'onnxruntime' "
                         "module); install it in its own venv (pip install onnxruntime-openvino==1.24.1 numpy) "
                         "and pass --openvino-python VENV/bin/python"}
    r["best_batch"] = max(r["batch_fps"], key=r["batch_fps"].get)
    r["loadavg_end"] = os.getloadavg()[0]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default=None)
    ap.add_argument("--quick", action="store_true", help="fewer levels and batch sizes (make bench)")
    ap.add_argument("--openvino-python", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="lipserve-gen-"))
    r = measure(work, a.repeats, a.quick, a.openvino_python)
    print(f"best batch: {r['best_batch']}")
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
