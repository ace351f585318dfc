"""The pipeline's Ray actors: thin wrappers that make the plain stages of ``actors/`` remote.

``GeneratorActor`` owns the (GPU) generator; ``WriterActor`` decodes template frames, pastes the
generated crops and encodes segments. Operators find them as ``ray::GeneratorActor`` /
``ray::WriterActor`` processes. Both are created by the pipeline replica, die with it (they are not
detached: no leaked actors), and are restarted by Ray (``max_restarts``) with in-flight calls retried
(``max_task_retries``) when their process dies. Every result carries the actor's pid so the job
runner can notice (and record) that a restart happened underneath it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import ray

from actors.audio import decode_audio, wav2lip_mel
from actors.avatar import Avatar, AvatarCache, AvatarParams
from actors.errors import OutOfMemoryError, as_lipserve_error
from actors.generators import make_generator
from actors.limits import MediaLimits
from actors.segment_writer import SegmentWriter


# Small control calls (health checks, pids) get a thread of their own so they never wait behind a
# long generate / encode call; the work methods stay one at a time per actor.
CONTROL_GROUPS = {"control": 1}


class ChaosHooks:
    """Fault injection for the chaos tests: a marker file in ``chaos_dir`` triggers one fault.

    A marker is consumed atomically (rename), so exactly one call sees it even across restarts.
    Disabled (``chaos_dir=None``) in every shipped config.
    """

    def __init__(self, chaos_dir: str | None):
        self.dir = Path(chaos_dir) if chaos_dir else None

    def take(self, name: str) -> str | None:
        if self.dir is None:
            return None
        marker = self.dir / name
        taken = self.dir / f"{name}.taken.{os.getpid()}.{time.monotonic_ns()}"
        try:
            os.rename(marker, taken)
        except FileNotFoundError:
            return None
        payload = taken.read_text().strip()
        taken.unlink(missing_ok=True)
        return payload or "1"

    def present(self, name: str) -> bool:
        return self.dir is not None and (self.dir / name).exists()


class GeneratorActor:
    """Loads the generator once; runs batched forward passes over face crops + mel windows."""

    def __init__(self, backend: str, checkpoint: str | None, device: str, batch_size: int,
                 chaos_dir: str | None = None):
        self.generator = make_generator(backend, checkpoint, device, batch_size)
        self.chaos = ChaosHooks(chaos_dir)
        self.pid = os.getpid()

    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        # Its own concurrency group: answers health checks while a long forward pass runs.
        return {"pid": self.pid, "name": self.generator.name, "crop_size": self.generator.crop_size}

    def generate(self, faces: np.ndarray, mels: np.ndarray) -> tuple[np.ndarray, int]:
        if self.chaos.take("generator_oom"):
            raise OutOfMemoryError("injected out-of-memory in GeneratorActor.generate", stage="generate")
        hang = self.chaos.take("generator_hang")
        if hang:
            # A stuck call: the job runner must notice the missing progress and recover.
            time.sleep(float(hang) if hang != "1" else 3600.0)
        if len(faces) == 0:
            return faces, self.pid
        try:
            return self.generator.generate(faces, mels), self.pid
        except Exception as exc:  # typed and never empty when it crosses the process boundary
            raise as_lipserve_error(exc, stage="generate") from exc


class WriterActor:
    """CPU stages: audio features, avatar preparation, segment compositing + encoding, final mux."""

    def __init__(self, cache_dir: str, codec: str, crf: int, limits: MediaLimits):
        self.cache = AvatarCache(cache_dir, limits)
        self.limits = limits
        self.writer = SegmentWriter(codec=codec, crf=crf)
        self.pid = os.getpid()

    @ray.method(concurrency_group="control")
    def ping(self) -> int:
        return self.pid

    def prepare_audio(self, audio_path: str) -> tuple[int, np.ndarray]:
        samples = decode_audio(audio_path, self.limits)
        return len(samples), wav2lip_mel(samples)

    def prepare_avatar(self, video_path: str, params: AvatarParams) -> Avatar:
        return self.cache.get_or_build(video_path, params)

    def write_segment(self, avatar: Avatar, sources: np.ndarray, present: np.ndarray,
                      generated: tuple[np.ndarray, int], out_path: str) -> tuple[int, int, int]:
        """Returns (frames written, writer pid, generator pid that made the crops)."""
        crops, generator_pid = generated
        n = self.writer.write_segment(avatar, sources, present, crops, out_path)
        return n, self.pid, generator_pid

    def finalize(self, segment_paths: list[str], audio_path: str, out_path: str, fps) -> str:
        self.writer.finalize(segment_paths, audio_path, out_path, fps)
        return out_path
