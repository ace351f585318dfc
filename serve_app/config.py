"""Typed configuration of the lipserve application.

One pydantic model, ``LipserveArgs``, is the whole configuration: ``build_app(args)`` derives every
Serve deployment option and every Ray actor option from it, so `serve run`, YAML configs
(``applications[].args``) and KubeRay's ``serveConfigV2`` all speak the same schema.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.errors import InvalidParameterError
from actors.generators import canonical_backend
from actors.limits import MediaLimits

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingSettings(_Strict):
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0


class ActorFaultSettings(_Strict):
    """Ray-level recovery of the pipeline's worker actors."""

    max_restarts: int = 3
    max_task_retries: int = 3


class GeneratorSettings(_Strict):
    backend: Literal["default", "mouth_warp", "wav2lip", "musetalk"] = "default"
    # wav2lip: .pth/.pt (torch) or .onnx (onnxruntime); musetalk: the models directory in the
    # public layout (musetalkV15/, sd-vae/, whisper/). Never downloaded.
    checkpoint: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = 32
    precision: Literal["auto", "fp32", "fp16"] = "auto"  # musetalk only: auto = fp16 on CUDA
    num_cpus: float = 0.5
    num_gpus: float = 0.0  # fraction of a GPU per generator actor (e.g. 0.5 = two per GPU)


class WriterSettings(_Strict):
    pool_size: int = 2
    num_cpus: float = 0.5
    prefer_nvenc: bool = False
    crf: int = 18
    segment_frames: int = 50


class JobSettings(_Strict):
    max_queued_jobs: int = 100  # past this, POST answers 429 with Retry-After
    retry_after_s: int = 10
    max_attempts: int = 3
    retry_backoff_s: float = 1.0  # doubled on each attempt
    lease_s: float = 6.0  # a running job whose owner stops heartbeating this long is taken over
    heartbeat_s: float = 1.0
    max_inflight_segments: int = 4  # per job: bounded work in flight (backpressure)
    stuck_factor: float = 10.0  # no progress for factor x expected segment time -> retry
    min_stuck_s: float = 30.0
    prepare_timeout_s: float = 600.0  # audio decode, avatar preparation, final mux
    max_upload_bytes: int = 512 * 1024 * 1024
    # Directories that JSON submissions may name server paths under; None = any path (only for a
    # trusted network: otherwise any readable file could be used as an input).
    input_roots: list[str] | None = None
    max_duration_s: float = 600.0
    max_width: int = 3840
    max_height: int = 3840


class PipelineDeploymentSettings(_Strict):
    max_ongoing_requests: int = 2  # concurrent jobs per pipeline replica
    max_queued_requests: int = 64
    num_cpus: float = 0.25
    graceful_shutdown_timeout_s: float = 120.0
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)


class IngressDeploymentSettings(_Strict):
    num_replicas: int = 1
    num_cpus: float = 0.25
    max_ongoing_requests: int = 100
    max_queued_requests: int = 200


class DuixSettings(_Strict):
    """The Duix/HeyGem-compatible API (``POST /easy/submit``, ``GET /easy/query``; see
    ``serve_app/api/duix/``)."""

    enabled: bool = True
    # Root of the volume Duix clients share with the server (the original's /code/data). Relative
    # input names resolve under ``<data_dir>/temp``, where results are published as ``{code}-r.mp4``.
    # Default: ``<storage_dir>/duix``; a relative path is taken from the project root.
    data_dir: str | None = None
    # Forget a task after its first success/error reply (a later query answers 10004), as the
    # original server does.
    delete_after_report: bool = False

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = os.path.expanduser(v)
        return v if os.path.isabs(v) else os.path.join(PROJECT_ROOT, v)


class LipserveArgs(_Strict):
    """Arguments of ``serve_app.app:build_app``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    storage_dir: str = "var/lipserve"
    database_url: str | None = None  # default: sqlite file under storage_dir
    # Who opens the SQLite file: "local" = every replica (one machine only: SQLite locking does not
    # work across machines); "actor" = one detached store actor on the head node (multi-node).
    job_store: Literal["local", "actor"] = "local"
    # ONNX face detector (SCRFD-style [N,5] output, or YuNet); None = embedded Haar cascade.
    detector_model: str | None = None
    # Face-tracking gaps up to this long get interpolated / held boxes; longer ones pass through.
    max_face_gap_s: float = Field(1.0, ge=0)
    # One backend (``generator``), or several served at once (``generators``; the first is the
    # default of jobs that name none). Each gets its own GeneratorActor per pipeline replica.
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    generators: list[GeneratorSettings] | None = Field(None, min_length=1)
    writer: WriterSettings = Field(default_factory=WriterSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    pipeline: PipelineDeploymentSettings = Field(default_factory=PipelineDeploymentSettings)
    ingress: IngressDeploymentSettings = Field(default_factory=IngressDeploymentSettings)
    actor_faults: ActorFaultSettings = Field(default_factory=ActorFaultSettings)
    duix: DuixSettings = Field(default_factory=DuixSettings)
    warmup: bool = True
    # Directory of fault-injection marker files, for the chaos tests only. None in production.
    chaos_dir: str | None = None

    @field_validator("storage_dir", mode="after")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # Relative paths are taken from the project root, not from whichever process (driver,
        # controller, replica) happens to validate the config, so every process agrees.
        v = os.path.expanduser(v)
        return v if os.path.isabs(v) else os.path.join(PROJECT_ROOT, v)

    @model_validator(mode="after")
    def _one_generator_form(self) -> "LipserveArgs":
        if self.generators is not None:
            # (compared with the defaults, not by "was it set": model_dump() round-trips both keys)
            if self.generator != GeneratorSettings():
                raise ValueError("set either 'generator' (one backend) or 'generators' (several), not both")
            names = [canonical_backend(g.backend) for g in self.generators]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"'generators' lists backend(s) {', '.join(dupes)} more than once")
        return self

    def served_generators(self) -> dict[str, GeneratorSettings]:
        """Backend name -> its settings, the default backend first (``mouth_warp`` is ``default``)."""
        return {canonical_backend(g.backend): g for g in (self.generators or [self.generator])}

    @property
    def default_backend(self) -> str:
        return next(iter(self.served_generators()))

    def resolve_backend(self, backend: str | None) -> str:
        """The served backend a job names (None or "": the default); a typed 422 for any other."""
        served = list(self.served_generators())
        if not backend:
            return served[0]
        name = canonical_backend(backend)
        if name not in served:
            raise InvalidParameterError(
                f"backend {backend!r} is not served by this deployment (it serves {', '.join(served)})",
                path="backend")
        return name

    @property
    def database_path(self) -> str:
        return self.database_url or os.path.join(self.storage_dir, "jobs.sqlite3")

    @property
    def dispatch_limit(self) -> int:
        """Jobs in flight at once: what every pipeline replica the autoscaler may start can take."""
        return max(1, self.pipeline.autoscaling.max_replicas * self.pipeline.max_ongoing_requests)

    def media_limits(self) -> MediaLimits:
        j = self.jobs
        return MediaLimits(max_width=j.max_width, max_height=j.max_height, max_duration_s=j.max_duration_s)

    @classmethod
    def from_any(cls, args: "LipserveArgs | dict[str, Any] | None") -> "LipserveArgs":
        if isinstance(args, cls):
            return args
        return cls.model_validate(args or {})
