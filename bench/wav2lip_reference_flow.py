"""The public Wav2Lip ``inference.py`` processing flow, rebuilt on our network, as the head-to-head
baseline (we cannot fetch that script; this follows its documented flow step by step):

1. read **every** template frame into memory (``cv2.VideoCapture``), keep the fps;
2. the whole track's mel spectrogram (the same front-end: ``actors.generators.mel.wav2lip_mel``),
   cut into chunks of 16 columns starting at ``int(i * 80 / fps)``; when a chunk would run past the
   end, the last 16 columns are taken and the loop stops (hence its ``25 s - 3`` frames);
3. frames truncated to the number of chunks; with a fixed ``--box`` (its ``-box y1 y2 x1 x2``), every
   frame's face is that rectangle (the script applies ``--pads`` only to detected faces, so the box
   given here is the already padded crop region, the same region our pipeline crops);
4. batches of 128 (``--wav2lip_batch_size``): crops resized to 96x96 (``cv2.resize``, bilinear),
   lower half masked, concatenated with the unmasked crop, /255, NHWC -> NCHW ``torch.FloatTensor``;
   mel chunks reshaped to ``[B, 80, 16, 1]`` -> ``[B, 1, 80, 16]``; model loaded on the first
   batch; forward under ``torch.no_grad()`` on CPU;
5. paste-back: each prediction ``* 255``, ``astype(uint8)``, ``cv2.resize`` to the box and written
   over the frame (a hard rectangle, no blending), the frame written with ``cv2.VideoWriter``
   (DIVX) to ``temp/result.avi``;
6. mux: the script then runs ``ffmpeg -i audio -i result.avi -strict -2 -q:v 1 out.mp4``, i.e. it
   re-encodes the video with FFmpeg's default MP4 encoder (libx264, preset medium, CRF 23) and the
   audio as AAC. Here with PyAV (the ffmpeg CLI is not used in this project).

Usage: python bench/wav2lip_reference_flow.py --face T.mp4 --audio A.wav --checkpoint W.pth
       --box X1 Y1 X2 Y2 --outfile out.mp4   (prints one JSON line of timings)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

MEL_STEP = 16
IMG_SIZE = 96
BATCH = 128


def mel_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    chunks, mult, i = [], 80.0 / fps, 0
    while True:
        start = int(i * mult)
        if start + MEL_STEP > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - MEL_STEP:])
            break
        chunks.append(mel[:, start:start + MEL_STEP])
        i += 1
    return chunks


def datagen(frames, mels, box):
    x1, y1, x2, y2 = box
    img_batch, mel_batch, frame_batch, coords_batch = [], [], [], []
    for i, m in enumerate(mels):
        idx = i % len(frames)
        frame_to_save = frames[idx].copy()
        face = cv2.resize(frames[idx][y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE))
        img_batch.append(face)
        mel_batch.append(m)
        frame_batch.append(frame_to_save)
        coords_batch.append((y1, y2, x1, x2))
        if len(img_batch) >= BATCH:
            yield _batch(img_batch, mel_batch) + (frame_batch, coords_batch)
            img_batch, mel_batch, frame_batch, coords_batch = [], [], [], []
    if img_batch:
        yield _batch(img_batch, mel_batch) + (frame_batch, coords_batch)


def _batch(img_batch, mel_batch):
    img = np.asarray(img_batch)
    mel = np.asarray(mel_batch)
    masked = img.copy()
    masked[:, IMG_SIZE // 2:] = 0
    img = np.concatenate((masked, img), axis=3) / 255.0
    mel = np.reshape(mel, [len(mel), mel.shape[1], mel.shape[2], 1])
    return img, mel


def mux_like_ffmpeg(avi: str, audio: str, out: str) -> None:
    """``ffmpeg -i audio -i avi -strict -2 -q:v 1 out.mp4``: libx264 (FFmpeg's defaults) + AAC."""
    with av.open(avi) as vin, av.open(audio) as ain, av.open(out, "w") as dst:
        vs_in = vin.streams.video[0]
        fps = Fraction(vs_in.average_rate)
        vs = dst.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = vs_in.codec_context.width, vs_in.codec_context.height, "yuv420p"
        as_in = ain.streams.audio[0]
        aus = dst.add_stream("aac", rate=as_in.codec_context.sample_rate or 16000)
        for k, frame in enumerate(vin.decode(vs_in)):
            frame = frame.reformat(format="yuv420p")
            frame.pts = k
            frame.time_base = 1 / fps
            for p in vs.encode(frame):
                dst.mux(p)
        for p in vs.encode(None):
            dst.mux(p)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=aus.codec_context.sample_rate)
        for frame in ain.decode(as_in):
            for f in resampler.resample(frame):
                for p in aus.encode(f):
                    dst.mux(p)
        for p in aus.encode(None):
            dst.mux(p)


def run(face: str, audio: str, checkpoint: str, box: tuple[int, int, int, int], outfile: str) -> dict:
    from actors.media.audio import decode_audio
    from actors.generators.mel import wav2lip_mel
    from actors.models.wav2lip import build_wav2lip_from_checkpoint

    t = {}
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(face)
    fps = cap.get(cv2.CAP_PROP_FPS)
    full_frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            cap.release()
            break
        full_frames.append(frame)
    t["read_frames"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mel = wav2lip_mel(decode_audio(audio))
    chunks = mel_chunks(mel, fps)
    full_frames = full_frames[:len(chunks)]
    t["mel"] = time.perf_counter() - t0

    tmp = tempfile.mkdtemp(prefix="wav2lip-ref-")
    avi = str(Path(tmp) / "result.avi")
    t_loop = time.perf_counter()
    t_model = t_forward = 0.0
    model = writer = None
    for img_batch, mel_batch, frames, coords in datagen(full_frames.copy(), chunks, box):
        if model is None:
            t0 = time.perf_counter()
            model = build_wav2lip_from_checkpoint(checkpoint).eval()
            t_model = time.perf_counter() - t0
            h, w = full_frames[0].shape[:-1]
            writer = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"DIVX"), fps, (w, h))
        img_t = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2)))
        mel_t = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2)))
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = model(mel_t, img_t)
        t_forward += time.perf_counter() - t0
        pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
        for p, f, c in zip(pred, frames, coords):
            y1, y2, x1, x2 = c
            f[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            writer.write(f)
    writer.release()
    t["model_load"] = t_model
    t["forward"] = t_forward
    t["loop"] = time.perf_counter() - t_loop
    t0 = time.perf_counter()
    mux_like_ffmpeg(avi, audio, outfile)
    t["mux"] = time.perf_counter() - t0
    return {"frames": len(chunks), "fps": fps, "seconds": t}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--face", required=True)
    ap.add_argument("--audio", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--box", type=int, nargs=4, required=True, metavar=("X1", "Y1", "X2", "Y2"),
                    help="the crop region (already padded)")
    ap.add_argument("--outfile", required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    r = run(a.face, a.audio, a.checkpoint, tuple(a.box), a.outfile)
    r["wall_seconds"] = time.perf_counter() - t0
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
