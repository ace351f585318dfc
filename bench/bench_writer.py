"""Segment writer CPU per frame: template decode + paste + encode, BGR path vs paste-in-YUV.

Runs ``SegmentWriter.write_segment`` over the 10 s 576x768 presenter clip (``bench/presenter.py``)
in 50-frame segments, the way a job does, with generated crops that differ from the template's
(the cached crops, brightened and noised, so the colour transfer and blend do real work). CPU time
is ``time.process_time`` of this process: it counts the decoder's and x264's threads too, which is
what competes with the generator for the cores.

    PYTHONPATH=$PWD python bench/bench_writer.py [--work /tmp/h2h] [--repeat 3] [--x264]

``--x264`` also prints x264 CPU ms/frame, bytes and PSNR for a few presets/params at CRF 18 on
the clip's frames (encode only, I420 input).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEGMENT_FRAMES = 50


def _generated(avatar, seed: int = 0) -> np.ndarray:
    crops = np.asarray(avatar.crops()).astype(np.int16)
    rng = np.random.default_rng(seed)
    crops += 12 + rng.integers(-6, 7, crops.shape, dtype=np.int16)
    return np.clip(crops, 0, 255).astype(np.uint8)


def _run(writer, avatar, generated, out_dir: Path) -> tuple[float, float, int]:
    """(CPU s, wall s, bytes) for writing the whole clip as 50-frame segments."""
    n = avatar.n_frames
    present = avatar.present()
    nbytes = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for k, start in enumerate(range(0, n, SEGMENT_FRAMES)):
        sources = np.arange(start, min(n, start + SEGMENT_FRAMES))
        pres = present[sources]
        gen = generated[sources[pres]]
        out = out_dir / f"seg_{k:05d}.mp4"
        writer.write_segment(avatar, sources, pres, gen, out)
        nbytes += out.stat().st_size
    return time.process_time() - c0, time.perf_counter() - w0, nbytes


def _decode_only(path: str, n: int, **kw) -> float:
    from actors.media.template import iter_frames

    c0 = time.process_time()
    for _ in iter_frames(path, **kw):
        pass
    return (time.process_time() - c0) / n * 1e3


def bench_writer(work: Path, repeat: int) -> None:
    from actors.avatar import AvatarCache, AvatarParams
    from actors.crop_geometry import MuseTalkGeometry, PaddedBoxGeometry
    from actors.segment_writer import SegmentWriter
    from bench.presenter import prepare

    inputs = prepare(work)
    cache_dir = tempfile.TemporaryDirectory(prefix="bench-writer-")
    cache = AvatarCache(Path(cache_dir.name) / "cache")
    n = inputs.frames
    print(f"template: {inputs.template}  ({n} frames, 576x768)   cpus: {os.cpu_count()}")
    for kw in ({}, {"keep_yuv420p": True}, {"keep_yuv420p": True, "decode_threads": 1}):
        try:
            ms = min(_decode_only(inputs.template, n, **kw) for _ in range(repeat))
        except TypeError:  # an older tree without these options
            continue
        print(f"decode only {kw or '(BGR, AUTO threads)'}: {ms:.2f} CPU ms/frame")
    variants = [("BGR path, superfast (before)", {"yuv_paste": False, "preset": "superfast"}),
                ("paste in YUV, superfast", {"yuv_paste": True, "preset": "superfast"}),
                ("paste in YUV, default x264, AUTO decode", {}),
                ("paste in YUV, default x264, 1 decode thr", {"decode_threads": 1})]
    for geometry in (PaddedBoxGeometry(96), MuseTalkGeometry()):
        avatar = cache.get_or_build(inputs.template, AvatarParams(box=inputs.box, geometry=geometry))
        generated = _generated(avatar)
        print(f"\n{geometry.kind} (crop {geometry.crop_size}, box {tuple(int(v) for v in avatar.boxes()[0])}):")
        for label, kw in variants:
            try:
                SegmentWriter(**kw)
            except TypeError:
                kw = {"preset": "superfast"}  # before the change: the only path there is
            cpu, wall, size = [], [], 0
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    c, w, size = _run(SegmentWriter(**kw), avatar, generated, Path(tmp))
                cpu.append(c)
                wall.append(w)
            print(f"  {label:42s} CPU {statistics.median(cpu) / n * 1e3:5.2f} ms/frame "
                  f"(min {min(cpu) / n * 1e3:5.2f})  wall {statistics.median(wall) / n * 1e3:5.2f} ms/frame  "
                  f"{size / 1e6:.2f} MB")
            if "yuv_paste" not in kw and kw.get("preset") == "superfast":
                break


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two luma planes (Gaussian window 11, sigma 1.5, as in Wang et al.)."""
    import cv2

    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))).mean())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def bench_x264(work: Path, repeat: int, clip: str | None = None) -> None:
    import av

    from actors.media import encode
    from bench.presenter import prepare

    clip = clip or prepare(work).template
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray() for f in c.decode(c.streams.video[0])]  # I420, the writer's input
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    fps = 25
    candidates = [
        ("superfast", "superfast", ""),
        ("ultrafast", "ultrafast", ""),
        ("ultrafast+cabac", "ultrafast", "cabac=1"),
        ("ultrafast+cabac+8x8dct", "ultrafast", "cabac=1:8x8dct=1"),
        ("ultrafast+subme1", "ultrafast", "subme=1"),  # sub-pel motion: halves the bytes
        ("ultrafast+subme1+cabac", "ultrafast", "subme=1:cabac=1"),
        ("ultrafast+subme1+deblock", "ultrafast", "subme=1:deblock=0,0"),
        ("ultrafast+subme1+8x8dct+deblock", "ultrafast", "subme=1:8x8dct=1:deblock=0,0"),
        ("ultrafast+subme1+deblock+aq", "ultrafast", "subme=1:deblock=0,0:aq-mode=1"),
    ]
    print(f"\nx264 at CRF 18 on {clip}: {len(frames)} frames {w}x{h} (I420 in, encode only; PSNR vs the decoded template):")
    for label, preset, params in candidates:
        times, size = [], 0
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "x.mp4"
                c0 = time.process_time()
                encode.encode_segment(iter(frames), out, fps, w, h, crf=18, preset=preset, x264_params=params)
                times.append(time.process_time() - c0)
                size = out.stat().st_size
                with av.open(str(out)) as c:
                    decoded = [f.to_ndarray() for f in c.decode(c.streams.video[0])]
        y_psnr = statistics.mean(_psnr(a[:h], b[:h]) for a, b in zip(decoded, frames))
        y_ssim = statistics.mean(_ssim(a[:h], b[:h]) for a, b in zip(decoded[::5], frames[::5]))
        print(f"  {label:34s} {min(times) / len(frames) * 1e3:5.2f} CPU ms/frame  {size / 1e6:5.2f} MB  "
              f"Y-PSNR {y_psnr:5.2f} dB  Y-SSIM {y_ssim:.5f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/h2h", help="folder of bench/presenter.py's inputs (made if missing)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--x264", action="store_true", help="also compare x264 presets/params")
    ap.add_argument("--x264-only", action="store_true")
    ap.add_argument("--x264-clip", default=None, help="clip for --x264 (default: the presenter clip)")
    a = ap.parse_args(argv)
    if not a.x264_only:
        bench_writer(Path(a.work), a.repeat)
    if a.x264 or a.x264_only:
        bench_x264(Path(a.work), a.repeat, a.x264_clip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
