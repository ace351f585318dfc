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
    cache_dir = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    cache = AvatarCache(cache_dir / "cache")
    n = inputs.frames
    print(f"template: {inputs.template}  ({n} frames, 576x768)   cpus: {os.cpu_count()}")
    for kw in ({}, {"keep_yuv420p": True}, {"keep_yuv420p": True, "decode_threads": 1}):
        try:
            ms = min(_decode_only(inputs.template, n, **kw) for _ in range(repeat))
        except TypeError:  # an older tree without these options
            continue
        print(f"decode only {kw or '(BGR, AUTO threads)'}: {ms:.2f} CPU ms/frame")
    variants = [("BGR path (before)", {"yuv_paste": False}),
                ("paste in YUV, AUTO decode threads", {"yuv_paste": True}),
                ("paste in YUV, 1 decode thread", {"yuv_paste": True, "decode_threads": 1})]
    for geometry in (PaddedBoxGeometry(96), MuseTalkGeometry()):
        avatar = cache.get_or_build(inputs.template, AvatarParams(box=inputs.box, geometry=geometry))
        generated = _generated(avatar)
        print(f"\n{geometry.kind} (crop {geometry.crop_size}, box {tuple(int(v) for v in avatar.boxes()[0])}):")
        for label, kw in variants:
            try:
                SegmentWriter(**kw)
            except TypeError:
                kw = {}  # before the change: the only path there is
            cpu, wall, size = [], [], 0
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    c, w, size = _run(SegmentWriter(**kw), avatar, generated, Path(tmp))
                cpu.append(c)
                wall.append(w)
            print(f"  {label:38s} CPU {statistics.median(cpu) / n * 1e3:5.2f} ms/frame "
                  f"(min {min(cpu) / n * 1e3:5.2f})  wall {statistics.median(wall) / n * 1e3:5.2f} ms/frame  "
                  f"{size / 1e6:.2f} MB")
            if not kw:
                break


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def bench_x264(work: Path, repeat: int) -> None:
    import av

    from actors.media import encode
    from bench.presenter import prepare

    inputs = prepare(work)
    with av.open(inputs.template) as c:
        frames = [f.to_ndarray() for f in c.decode(c.streams.video[0])]  # I420, the writer's input
    h, w = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
    fps = 25
    candidates = [
        ("superfast", "superfast", ""),
        ("ultrafast", "ultrafast", ""),
        ("ultrafast+cabac", "ultrafast", "cabac=1"),
        ("ultrafast+cabac+8x8dct", "ultrafast", "cabac=1:8x8dct=1"),
        ("ultrafast+cabac+8x8dct+deblock", "ultrafast", "cabac=1:8x8dct=1:deblock=1,0:0"),
        ("ultrafast+cabac+8x8dct+i8x8/i4x4", "ultrafast", "cabac=1:8x8dct=1:partitions=i8x8,i4x4"),
        ("ultrafast+cabac+8x8dct+p8x8", "ultrafast", "cabac=1:8x8dct=1:partitions=i8x8,i4x4,p8x8"),
        ("ultrafast+cabac+8x8dct+me=dia+subme1", "ultrafast", "cabac=1:8x8dct=1:me=dia:subme=1"),
        ("ultrafast+cabac+8x8dct+subme1+ref1", "ultrafast",
         "cabac=1:8x8dct=1:me=dia:subme=1:partitions=i8x8,i4x4:deblock=1,0:0"),
        ("superfast-no-mbtree", "superfast", "mbtree=0"),
    ]
    print(f"\nx264 at CRF 18 on {len(frames)} frames {w}x{h} (I420 in, encode only; PSNR vs the decoded template):")
    for label, preset, params in candidates:
        times, size = [], 0
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "x.mp4"
                original = encode._encoder_options

                def options(codec, crf, p, _extra=params):
                    opts = original(codec, crf, p)
                    if _extra:
                        opts["x264-params"] = opts["x264-params"] + ":" + _extra
                    return opts

                encode._encoder_options = options
                try:
                    c0 = time.process_time()
                    encode.encode_segment(iter(frames), out, fps, w, h, crf=18, preset=preset)
                    times.append(time.process_time() - c0)
                finally:
                    encode._encoder_options = original
                size = out.stat().st_size
                with av.open(str(out)) as c:
                    decoded = [f.to_ndarray() for f in c.decode(c.streams.video[0])]
        y_psnr = statistics.mean(_psnr(a[:h], b[:h]) for a, b in zip(decoded, frames))
        print(f"  {label:40s} {min(times) / len(frames) * 1e3:5.2f} CPU ms/frame  {size / 1e6:5.2f} MB  "
              f"Y-PSNR {y_psnr:5.2f} dB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/h2h", help="folder of bench/presenter.py's inputs (made if missing)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--x264", action="store_true", help="also compare x264 presets/params")
    ap.add_argument("--x264-only", action="store_true")
    a = ap.parse_args(argv)
    if not a.x264_only:
        bench_writer(Path(a.work), a.repeat)
    if a.x264 or a.x264_only:
        bench_x264(Path(a.work), a.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
