"""Typed configuration of the lipserve application.

One pydantic model, ``LipserveArgs``, is the whole configuration: ``build_app(args)`` derives every
Serve deployment option and every Ray actor option from it, so `serve run`, YAML configs
(``applications[].args``) and KubeRay's ``serveConfigV2`` all speak the same schema.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Mapping

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from actors.errors import InvalidParameterError
from actors.generators import canonical_backend
from actors.limits import MediaLimits

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """``${NAME}`` / ``${NAME:-default}`` in a config value, from the environment of the process that
    validates the config (``build_app``: ``serve run`` / the cluster's app builder). A variable that
    is unset (or empty) with no default is an error, not an empty path."""
    env = os.environ if environ is None else environ

    def one(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        found = env.get(name) or default
        if not found:
            raise ValueError(f"environment variable {name} is not set and {m.group(0)} has no default")
        return found

    return _ENV_REFERENCE.sub(one, value)


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
    # How often handles send Serve's controller the load it scales on (Serve's own default): a
    # burst of jobs shorter than this can come and go unseen.
    metrics_interval_s: float = Field(10.0, gt=0)


class ActorFaultSettings(_Strict):
    """Ray-level recovery of the pipeline's worker actors."""

    max_restarts: int = 3
    max_task_retries: int = 3


class GeneratorSettings(_Strict):
    backend: Literal["default", "mouth_warp", "wav2lip", "musetalk"] = "default"
    # wav2lip: .pth/.pt (torch) or .onnx (OpenVINO on CPU / onnxruntime: ``engine``); musetalk: the
    # models directory in the public layout (musetalkV15/, sd-vae/, whisper/). Never downloaded.
    checkpoint: str | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: int = 32
    # auto = fp16 on CUDA, fp32 on CPU; fp16: musetalk; bf16: wav2lip .onnx on OpenVINO (an option)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # What runs a wav2lip .onnx: auto = OpenVINO on CPU when installed (~1.3x onnxruntime at fp32,
    # same results), onnxruntime otherwise and on CUDA.
    engine: Literal["auto", "onnxruntime", "openvino"] = "auto"
    # CPU threads of the forward pass (onnxruntime intra-op / torch); None = sized to num_cpus
    # (at least 1), so a generator never spreads over the cores its writers were given.
    threads: int | None = Field(default=None, ge=1)
    num_cpus: float = 0.5
    num_gpus: float = 0.0  # fraction of a GPU per generator actor (e.g. 0.5 = two per GPU)


class WriterSettings(_Strict):
    pool_size: int = 2
    num_cpus: float = 0.5
    prefer_nvenc: bool = False
    crf: int = 18
    segment_frames: int = 50
    # Decoded template frames kept with each avatar up to this size (MiB; 0: decode every job):
    # reading them back costs less CPU than decoding (actors/avatar.py).
    frame_cache_mib: int = Field(default=512, ge=0)


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
    # Work bombs, refused at submission (typed 4xx): a few KB of upload must not buy hours of GPU
    # or tens of GB of avatar cache.
    max_fps: float = Field(60.0, gt=0)
    max_work_pixels: float = Field(4e10, gt=0)  # output frames x output pixels (~10 min of 1080p30)
    max_avatar_cache_bytes: int = Field(4 << 30, gt=0)  # template frames x crop bytes
    max_form_fields: int = Field(16, ge=1)  # multipart text parts per request
    # URL inputs (serve_app/api/url_fetch.py). allow_private_urls: tests and trusted networks only.
    allow_private_urls: bool = False
    # Exceptions while the check is on: '10.0.0.0/8' or '10.1.2.3:9000' (e.g. an internal bucket).
    trusted_url_addresses: list[str] = Field(default_factory=list)
    url_deadline_s: float = Field(300.0, gt=0)
    url_connect_timeout_s: float = Field(10.0, gt=0)
    url_min_rate_bytes_s: float = Field(16 * 1024, ge=0)
    url_rate_grace_s: float = Field(10.0, ge=0)
    url_max_redirects: int = Field(3, ge=0, le=10)
    # Server-Sent Events: one watcher per job; streams end after max duration; per-client cap.
    sse_max_duration_s: float = Field(3600.0, gt=0)
    sse_max_streams_per_client: int = Field(8, ge=1)
    sse_poll_s: float = Field(0.25, gt=0)
    idempotency_ttl_s: float = Field(24 * 3600.0, gt=0)


class TenantLimits(_Strict):
    """Per-tenant overrides; ``None`` = the ``auth`` default."""

    max_queued: int | None = Field(None, ge=0)
    max_running: int | None = Field(None, ge=1)
    max_priority: int | None = None


@dataclass(frozen=True)
class ResolvedLimits:
    max_queued: int  # queued jobs of this tenant; past it POST /v1/jobs answers 429 + Retry-After
    max_running: int  # running jobs of this tenant at once; the dispatcher holds back the others
    max_priority: int

    def check_priority(self, requested: int) -> int:
        if requested > self.max_priority:
            raise InvalidParameterError(f"priority {requested} is over this tenant's ceiling of {self.max_priority}",
                                        path="priority")
        return requested


class AuthSettings(_Strict):
    """API keys: env ``LIPSERVE_API_KEYS`` ('tenant:key,...') and/or ``keys_file`` (one
    'tenant:key' per line, '#' comments). No key configured: auth is off (trusted network only)."""

    keys_file: str | None = None
    admin_tenants: list[str] = Field(default_factory=list)  # see owner/attempt details, all tenants' jobs
    max_priority: int = 100  # ceiling of the 'priority' a tenant may ask for (admins: 1000)
    max_queued_per_tenant: int = Field(50, ge=0)
    max_running_per_tenant: int = Field(4, ge=1)
    tenants: dict[str, TenantLimits] = Field(default_factory=dict)

    def limits_for(self, tenant: str, *, is_admin: bool = False) -> ResolvedLimits:
        o = self.tenants.get(tenant, TenantLimits())
        ceiling = o.max_priority if o.max_priority is not None else (1000 if is_admin else self.max_priority)
        return ResolvedLimits(
            max_queued=o.max_queued if o.max_queued is not None else self.max_queued_per_tenant,
            max_running=o.max_running if o.max_running is not None else self.max_running_per_tenant,
            max_priority=ceiling)


class WebhookSettings(_Strict):
    """``callback_url`` deliveries (serve_app/jobs/webhooks.py). Secret: env
    ``LIPSERVE_WEBHOOK_SECRET``; per tenant ``LIPSERVE_WEBHOOK_SECRETS`` ('tenant:secret,...')."""

    enabled: bool = True
    max_attempts: int = Field(8, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    backoff_s: float = Field(5.0, gt=0)  # first retry delay, doubled per attempt
    max_backoff_s: float = Field(3600.0, gt=0)
    poll_s: float = Field(2.0, gt=0)  # how often the worker looks for due deliveries
    concurrency: int = Field(8, ge=1)
    allow_private: bool = False  # targets on private networks (off: the URL-input address checks)


class RetentionSettings(_Strict):
    """The sweeper (serve_app/retention.py) and the disk watermark."""

    result_ttl_s: float = Field(7 * 24 * 3600.0, gt=0)  # then GET .../result answers 410 result_expired
    sweep_interval_s: float = Field(600.0, gt=0)
    avatar_ttl_s: float = Field(30 * 24 * 3600.0, gt=0)  # prepared/registered avatars unused this long
    stale_temp_s: float = Field(6 * 3600.0, gt=0)  # temp dirs of killed processes older than this
    min_free_bytes: int = Field(1 << 30, ge=0)  # below this free under storage_dir: submit answers 507


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


class StoreActorSettings(_Strict):
    """The detached job store actor of ``job_store: actor`` (one SQLite owner per cluster)."""

    pin_to_head: bool = True  # the head node's persistent volume holds the file
    max_restarts: int = -1  # restarted for ever: every replica depends on it
    max_task_retries: int = 5  # calls caught by a restart are re-sent to the new process


class DuixSettings(_Strict):
    """The Duix/HeyGem-compatible API (``POST /easy/submit``, ``GET /easy/query``; see
    ``serve_app/api/duix/``)."""

    enabled: bool = True
    # Root of the volume Duix clients share with the server (the original's /code/data). Relative
    # input names resolve under ``<data_dir>/temp``, where results are published as ``{code}-r.mp4``.
    # Default: ``<storage_dir>/duix``; a relative path is taken from the project root; ``${VAR}`` and
    # ``${VAR:-default}`` come from the environment (configs/duix.yaml: ``${LIPSERVE_DUIX_ROOT:-/code/data}``).
    data_dir: str | None = None
    # Forget a task after its first success/error reply (a later query answers 10004), as the
    # original server does. The code stays used (a tombstone): it cannot name a new task.
    delete_after_report: bool = False
    # "bearer": the same API keys as /v1 when auth is on. "none": no key, for an unchanged legacy
    # client on a private network only (docs/SECURITY.md); its tasks belong to the default tenant.
    auth: Literal["bearer", "none"] = "bearer"
    max_body_bytes: int = Field(64 * 1024, ge=1024)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = os.path.expanduser(expand_env(v))
        return v if os.path.isabs(v) else os.path.join(PROJECT_ROOT, v)


class LipserveArgs(_Strict):
    """Arguments of ``serve_app.app:build_app``."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    storage_dir: str = "var/lipserve"
    # Where job state lives. "local" = every replica opens the SQLite file (one machine only: SQLite
    # locking does not work across machines); "actor" = one detached store actor on the head node
    # owns it; "postgres" = a PostgreSQL database every replica connects to (clusters, blue/green).
    job_store: Literal["local", "actor", "postgres"] = "local"
    # local/actor: the SQLite file (default: jobs.sqlite3 under storage_dir). postgres: a
    # postgresql:// URL; leave it out to take it from LIPSERVE_DATABASE_URL (a Secret on k8s) in
    # each replica's environment. postgres never falls back to an SQLite file.
    database_url: str | None = None
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
    store_actor: StoreActorSettings = Field(default_factory=StoreActorSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
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
    def _store_matches_url(self) -> "LipserveArgs":
        # A URL for the wrong backend is a configuration mistake, caught when the config is loaded
        # (the environment variable is only read where the store is opened, in each replica).
        is_pg = (self.database_url or "").startswith(("postgresql://", "postgres://"))
        if self.job_store == "postgres" and self.database_url and not is_pg:
            raise ValueError("job_store: postgres needs a postgresql:// database_url (or none, to use "
                             "LIPSERVE_DATABASE_URL), not an SQLite path")
        if self.job_store != "postgres" and is_pg:
            raise ValueError(f"database_url is a PostgreSQL URL but job_store is {self.job_store!r}: "
                             "set job_store: postgres")
        return self

    @model_validator(mode="after")
    def _roots_exclude_storage(self) -> "LipserveArgs":
        # storage_dir holds every tenant's uploads and results: a root that is, holds or lies in it
        # would let a JSON path name another tenant's files.
        storage = os.path.realpath(self.storage_dir)
        for root in self.jobs.input_roots or ():
            r = os.path.realpath(os.path.expanduser(root))
            if os.path.commonpath([r, storage]) in (r, storage):
                raise ValueError(f"jobs.input_roots: {root} overlaps storage_dir {self.storage_dir}; "
                                 "storage_dir is never an input root")
        return self

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
        """The SQLite file of ``job_store: local`` / ``actor`` (``backends.open_job_store`` opens
        the configured store, whichever it is)."""
        return self.database_url or os.path.join(self.storage_dir, "jobs.sqlite3")

    @property
    def dispatch_limit(self) -> int:
        """Jobs in flight at once: what every pipeline replica the autoscaler may start can take."""
        return max(1, self.pipeline.autoscaling.max_replicas * self.pipeline.max_ongoing_requests)

    def media_limits(self) -> MediaLimits:
        j = self.jobs
        return MediaLimits(max_width=j.max_width, max_height=j.max_height, max_duration_s=j.max_duration_s,
                           max_fps=j.max_fps)

    @classmethod
    def from_any(cls, args: "LipserveArgs | dict[str, Any] | None") -> "LipserveArgs":
        if isinstance(args, cls):
            return args
        return cls.model_validate(args or {})
