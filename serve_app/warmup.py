"""Warm-up: one tiny synthetic job through every stage, run by the pipeline replica's constructor.

Serve routes traffic to a replica only after its constructor returns, so a replica that has
finished ``run_warmup`` has loaded its models, started its actors and produced a valid MP4 through
the same segment driver a real job uses. No fixed paths (the media are made in memory and written
to a fresh temp dir) and no sleeps.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import wave
from fractions import Fraction
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from actors.avatar import AvatarParams
from actors.driver import DrivePolicy, RenderRequest, SegmentDriver
from actors.errors import InternalError
from actors.media.encode import encode_segment
from serve_app.ray_actors import PipelineActors
from serve_app.ray_stages import RayStages

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


def run_warmup(actors: PipelineActors, work_root: str | Path, timeout_s: float = 300.0) -> dict:
    """Push a tiny job through every stage with the segment driver (the same path as a real job:
    audio, avatar, latents, features, generate, write, finalize) for every served backend, and
    verify each MP4. Returns the total seconds and, per backend, its seconds and frames."""
    t0 = time.perf_counter()
    per_backend = {name: _warm_one(actors, name, work_root, timeout_s) for name in actors.generators}
    return {"seconds": time.perf_counter() - t0, "frames": sum(b["frames"] for b in per_backend.values()),
            "backends": per_backend}


def _warm_one(actors: PipelineActors, backend: str, work_root: str | Path, timeout_s: float) -> dict:
    """One backend's warm-up job.

    ``work_root`` must be storage every actor can read (the shared ``storage_dir`` on a cluster):
    the writers may run on other nodes than this replica. Runs on a private event loop: the
    replica's constructor is synchronous.
    """
    t0 = time.perf_counter()
    Path(work_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"warmup-{backend}-", dir=work_root))
    try:
        video, audio, out = tmp / "template.mp4", tmp / "speech.wav", tmp / "out.mp4"
        box = _synthetic_template(video)
        _synthetic_speech(audio)
        # Small segments so that every writer gets at least one.
        geometry = actors.geometries[backend]
        request = RenderRequest(audio_path=str(audio), video_path=str(video), out_path=str(out),
                                work_dir=str(tmp / "segments"),
                                avatar=AvatarParams(crop_size=geometry.crop_size, box=box, geometry=geometry),
                                segment_frames=max(1, 15 // max(1, len(actors.writers))))
        driver = SegmentDriver(RayStages(actors, backend),
                               DrivePolicy(prepare_timeout_s=timeout_s, min_stuck_s=timeout_s))
        with ThreadPoolExecutor(1, thread_name_prefix="lipserve-warmup") as loop_thread:
            result = loop_thread.submit(asyncio.run, driver.render(request)).result(timeout=4 * timeout_s)
        with av.open(str(out)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        if frames != result.plan.n_out:
            raise InternalError(f"warm-up of backend {backend!r} produced {frames} frames, expected "
                                f"{result.plan.n_out}", stage="warmup")
        return {"seconds": time.perf_counter() - t0, "frames": frames}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
