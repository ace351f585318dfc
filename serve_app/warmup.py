"""Warm-up: one tiny synthetic job through every stage, run by the pipeline replica's constructor.

Serve routes traffic to a replica only after its constructor returns, so a replica that has
finished ``run_warmup`` has loaded its models, started its actors and produced a valid MP4. No
fixed paths (the media are made in memory and written to a fresh temp dir) and no sleeps.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import ray

from actors.avatar import AvatarParams
from actors.errors import InternalError
from actors.plan import make_plan
from actors.writer import encode_segment

WARMUP_FPS = Fraction(25)
WARMUP_SIZE = 96


def _synthetic_template(path: Path, n_frames: int = 10) -> tuple[int, int, int, int]:
    """A soft 'face' blob drifting slightly; returns the face box used as the override."""
    s = WARMUP_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)

    def frames():
        for i in range(n_frames):
            cx, cy = s / 2 + np.sin(i / 3), s / 2
            face = np.exp(-(((xx - cx) / (s * 0.3)) ** 2 + ((yy - cy) / (s * 0.38)) ** 2))
            img = np.empty((s, s, 3), np.uint8)
            img[..., 0] = 60 + 100 * face
            img[..., 1] = 80 + 110 * face
            img[..., 2] = 90 + 150 * face
            yield img

    encode_segment(frames(), path, WARMUP_FPS, s, s)
    return (s // 4, s // 8, 3 * s // 4, 7 * s // 8)


def _synthetic_speech(path: Path, seconds: float = 0.6, sr: int = 16000) -> None:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.4 * np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((y * 32767).astype(np.int16).tobytes())


def run_warmup(generator, writers: list, crop_size: int, work_root: str | Path, timeout_s: float = 300.0) -> dict:
    """Push a tiny job through audio, avatar, generate, write and finalize; verify the MP4.

    ``work_root`` must be storage every actor can read (the shared ``storage_dir`` on a cluster):
    the writers may run on other nodes than this replica.
    """
    t0 = time.perf_counter()
    Path(work_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="warmup-", dir=work_root))
    try:
        video, audio, out = tmp / "template.mp4", tmp / "speech.wav", tmp / "out.mp4"
        box = _synthetic_template(video)
        _synthetic_speech(audio)
        n_samples, mel = ray.get(writers[0].prepare_audio.remote(str(audio)), timeout=timeout_s)
        avatar = ray.get(writers[-1].prepare_avatar.remote(str(video), AvatarParams(crop_size=crop_size, box=box)),
                         timeout=timeout_s)
        plan = make_plan(n_samples, avatar, "pingpong", segment_frames=max(1, 15 // max(1, len(writers))))
        crops = avatar.crops()
        refs, paths = [], []
        for seg in plan.segments:  # every writer gets at least one segment
            faces, mels = plan.generator_inputs(seg, crops, mel)
            generated = generator.generate.remote(faces, mels)
            path = str(tmp / seg.file_name)
            writer = writers[seg.index % len(writers)]
            refs.append(writer.write_segment.remote(avatar, plan.segment_sources(seg),
                                                    plan.face_present[seg.start:seg.stop], generated, path))
            paths.append(path)
        ray.get(refs, timeout=timeout_s)
        ray.get(writers[0].finalize.remote(paths, str(audio), str(out), plan.fps), timeout=timeout_s)
        with av.open(str(out)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        if frames != plan.n_out:
            raise InternalError(f"warm-up produced {frames} frames, expected {plan.n_out}", stage="warmup")
        return {"seconds": time.perf_counter() - t0, "frames": frames}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
