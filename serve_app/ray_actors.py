"""The pipeline's Ray actors: thin wrappers that make the plain stages of ``actors/`` remote.

``GeneratorActor`` owns the (GPU) generator of one backend (a replica that serves several backends
has one per backend); ``WriterActor`` decodes template frames, pastes the generated crops and
encodes segments. Operators find them as ``ray::GeneratorActor`` /
``ray::WriterActor`` processes. Both are created by the pipeline replica, die with it (they are not
detached: no leaked actors), and are restarted by Ray (``max_restarts``) with in-flight calls retried
(``max_task_retries``) when their process dies. Every result carries the actor's pid so the job
runner can notice (and record) that a restart happened underneath it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import ray

from actors.avatar import Avatar, AvatarCache, AvatarParams
from actors.avatar_latents import ensure_latents
from actors.crop_geometry import CropGeometry
from actors.errors import InvalidParameterError, OutOfMemoryError, as_lipserve_error
from actors.generators import make_generator
from actors.limits import MediaLimits
from actors.media.audio import decode_audio
from actors.media.encode import pick_video_codec
from actors.resources import generator_memory, gpu_stats
from actors.segment_writer import NEVER, SegmentWriter, writer_threads
from actors.stop_token import StopToken
from serve_app.chaos import ChaosHooks, writer_stop
from serve_app.config import GeneratorSettings, LipserveArgs


# Small control calls (health checks, pids) get a thread of their own so they never wait behind a
# long generate / encode call; the work methods stay one at a time per actor.
CONTROL_GROUPS = {"control": 1}


class GeneratorActor:
    """Loads one backend's generator once; runs batched forward passes over face crops (or their
    cached latents) + per-frame audio features."""

    def __init__(self, settings: GeneratorSettings, chaos_dir: str | None = None, threads: int | None = None):
        g = settings
        self.generator = make_generator(g.backend, g.checkpoint, g.device, g.batch_size, g.precision,
                                        threads=threads, engine=g.engine)
        self.device = g.device
        self.chaos = ChaosHooks(chaos_dir)
        self.pid = os.getpid()

    @ray.method(concurrency_group="control")
    def info(self) -> dict:
        # Its own concurrency group: answers health checks while a long forward pass runs.
        g = self.generator
        return {"pid": self.pid, "name": g.name, "crop_size": g.crop_size, "geometry": g.crop_geometry,
                "node_id": ray.get_runtime_context().get_node_id(),
                # What runs the forward pass (Wav2Lip: torch / onnxruntime / openvino, its precision and
                # the decoded window of the crop), for operators; None where a backend has no such choice.
                "engine": getattr(g, "backend", None), "precision": getattr(g, "precision", None),
                "window": getattr(g, "window", None)}

    @ray.method(concurrency_group="control")
    def resources(self) -> dict:
        """Memory (peak CUDA on a GPU, else peak RSS) and the utilisation / memory of its GPUs."""
        memory, kind = generator_memory(self.device)
        return {"actor": f"GeneratorActor:{self.pid}", "memory_bytes": memory, "memory_kind": kind,
                "gpus": gpu_stats([str(g) for g in ray.get_gpu_ids()])}

    def prepare_latents(self, avatar: Avatar) -> str | None:
        """The avatar's cached per-frame latents for this model (encoded here, once per template,
        when missing), or None when the backend has no latent path."""
        try:
            return ensure_latents(self.generator, avatar)
        except Exception as exc:  # typed and never empty when it crosses the process boundary
            raise as_lipserve_error(exc, stage="latents") from exc

    def prepare_audio(self, samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        """The backend's per-frame audio features for the whole track (e.g. whisper on the GPU)."""
        try:
            return self.generator.prepare_audio(samples_16k, fps, n_frames)
        except Exception as exc:  # typed and never empty when it crosses the process boundary
            raise as_lipserve_error(exc, stage="features") from exc

    def generate(self, faces: np.ndarray, features: np.ndarray, from_latents: bool = False) -> tuple[np.ndarray, int]:
        """``faces``: crops, or (``from_latents``) the avatar's cached latents of the same frames."""
        if self.chaos.take("generator_oom"):
            raise OutOfMemoryError("injected out-of-memory in GeneratorActor.generate", stage="generate")
        hang = self.chaos.take("generator_hang")
        if hang:
            # A stuck call: the job runner must notice the missing progress and recover.
            time.sleep(float(hang) if hang != "1" else 3600.0)
        slow = self.chaos.seconds("generator_slow")
        if slow:  # a slow GPU: keeps the chaos tests' jobs running long enough to be hit mid-job
            time.sleep(slow)
        if len(faces) == 0:
            return faces, self.pid
        try:
            if from_latents:
                return self.generator.generate_from_latents(faces, features), self.pid
            return self.generator.generate(faces, features), self.pid
        except Exception as exc:  # typed and never empty when it crosses the process boundary
            raise as_lipserve_error(exc, stage="generate") from exc


class WriterActor:
    """CPU stages: audio decoding, avatar preparation, segment compositing + encoding, the AAC
    track, final mux.

    Each work call takes its attempt's ``StopToken`` (``actors/stop_token.py``) and ends with
    ``CancelledError`` once the driver has set it: between frames in ``write_segment``, at the start
    of ``prepare_avatar``, ``encode_audio_track`` and ``finalize`` (also when Ray re-sends the call after a restart)."""

    def __init__(self, cache_dir: str, codec: str, crf: int, limits: MediaLimits, chaos_dir: str | None = None,
                 num_cpus: float = 1.0, frame_cache_mib: int = 512):
        self.cache = AvatarCache(cache_dir, limits, frame_cache_bytes=frame_cache_mib * 2**20)
        self.limits = limits
        threads = writer_threads(num_cpus)  # sized to the CPUs Ray gave this actor
        self.writer = SegmentWriter(codec=codec, crf=crf, decode_threads=threads, encode_threads=threads)
        self.chaos = ChaosHooks(chaos_dir)
        self.pid = os.getpid()

    @ray.method(concurrency_group="control")
    def ping(self) -> int:
        return self.pid

    def decode_audio(self, audio_path: str) -> tuple[int, np.ndarray]:
        """(sample count, 16 kHz samples): called with ``num_returns=2``, so the count travels alone and
        the samples stay in the object store until the generator reads them."""
        samples = decode_audio(audio_path, self.limits)
        return len(samples), samples

    def prepare_avatar(self, video_path: str, params: AvatarParams, stop: StopToken | None = None) -> Avatar:
        if stop is not None:
            stop.check("avatar")
        return self.cache.get_or_build(video_path, params)

    def write_segment(self, avatar: Avatar, sources: np.ndarray, present: np.ndarray,
                      generated: tuple[np.ndarray, int], out_path: str,
                      stop: StopToken | None = None) -> tuple[int, int, int]:
        """Returns (frames written, writer pid, generator pid that made the crops)."""
        crops, generator_pid = generated
        n = self.writer.write_segment(avatar, sources, present, crops, out_path,
                                      stop=writer_stop(self.chaos, stop) or NEVER)
        return n, self.pid, generator_pid

    def encode_audio_track(self, audio_path: str, track_path: str, stop: StopToken | None = None) -> str:
        return self.writer.encode_audio_track(audio_path, track_path, stop=stop or NEVER)

    def finalize(self, segment_paths: list[str], audio_track: str, out_path: str, fps,
                 stop: StopToken | None = None) -> str:
        self.writer.finalize(segment_paths, audio_track, out_path, fps, stop=stop or NEVER)
        return out_path


def generator_threads(args: LipserveArgs, g: GeneratorSettings | None = None) -> int:
    """Forward-pass threads of a generator actor: its ``threads``, else its ``num_cpus`` rounded
    (at least 1). Ray does not pin CPUs, so without this onnxruntime / torch would start one thread
    per core of the node and compete with the writers for them."""
    g = g or args.generator
    return int(g.threads) if g.threads else max(1, int(round(g.num_cpus)))


def generator_actor_options(args: LipserveArgs, g: GeneratorSettings | None = None) -> dict:
    g, f = g or args.generator, args.actor_faults
    return {"num_cpus": g.num_cpus, "num_gpus": g.num_gpus, "max_restarts": f.max_restarts,
            "max_task_retries": f.max_task_retries}


def writer_actor_options(args: LipserveArgs) -> dict:
    w, f = args.writer, args.actor_faults
    return {"num_cpus": w.num_cpus, "max_restarts": f.max_restarts, "max_task_retries": f.max_task_retries}


@dataclass
class PipelineActors:
    """A replica's actors: one generator per served backend (the default first) and the writers."""

    generators: dict[str, "ray.actor.ActorHandle"]
    geometries: dict[str, CropGeometry]
    writers: list

    @property
    def default_backend(self) -> str:
        return next(iter(self.generators))

    def backend(self, name: str | None) -> str:
        """The served backend a job names (None: the default); a typed error for any other."""
        name = self.default_backend if not name else ("default" if name == "mouth_warp" else name)
        if name not in self.generators:
            raise InvalidParameterError(f"backend {name!r} is not served by this deployment "
                                        f"(it serves {', '.join(self.generators)})")
        return name


def create_actors(args: LipserveArgs, avatar_cache_dir: str) -> PipelineActors:
    """One generator actor per served backend and the writer pool of a pipeline replica; they die
    with it."""
    w = args.writer
    generators = {
        name: ray.remote(concurrency_groups=CONTROL_GROUPS)(GeneratorActor).options(
            **generator_actor_options(args, g)).remote(g, args.chaos_dir, generator_threads(args, g))
        for name, g in args.served_generators().items()
    }
    codec = pick_video_codec(w.prefer_nvenc)
    writers = [
        ray.remote(concurrency_groups=CONTROL_GROUPS)(WriterActor).options(**writer_actor_options(args)).remote(
            avatar_cache_dir, codec, w.crf, args.media_limits(), args.chaos_dir, w.num_cpus, w.frame_cache_mib)
        for _ in range(max(1, w.pool_size))
    ]
    infos = ray.get([g.info.remote() for g in generators.values()])
    return PipelineActors(generators=generators, writers=writers,
                          geometries={name: info["geometry"] for name, info in zip(generators, infos)})
