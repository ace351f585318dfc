"""Typed job records: what the store keeps and what every layer reads.

``JobParams`` is the contract between the API (which writes it at submission) and the runner (which
reads it): it carries only what the runner uses. What the client sent beyond that (the Duix task's
original fields, the avatar id) lives in ``JobRecord.meta``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # f-strings and logs show "queued", not "JobStatus.QUEUED"
        return self.value


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class ErrorInfo(BaseModel):
    """A typed error as recorded and as sent to clients; the message is never empty."""

    code: str
    message: str
    retryable: bool = False

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, v: Any) -> str:
        return str(getattr(v, "value", v) or "internal")

    @classmethod
    def of(cls, error: Any) -> "ErrorInfo | None":
        """From a ``LipserveError``, a dict or an ``ErrorInfo``; fills in an empty message."""
        if error is None or isinstance(error, ErrorInfo):
            return error
        if not isinstance(error, dict) and hasattr(error, "to_dict"):
            error = error.to_dict()
        if not isinstance(error, dict):
            error = {"code": "internal", "message": str(error), "retryable": True}
        code = str(getattr(error.get("code"), "value", error.get("code")) or "internal")
        message = str(error.get("message") or "").strip() or f"{code} without further detail"
        return cls(code=code, message=message, retryable=bool(error.get("retryable", False)))


class Incident(BaseModel):
    """A fault recovered inside an attempt (e.g. an actor restarted and its calls were retried)."""

    code: str
    message: str
    at: float

    @field_validator("message", mode="before")
    @classmethod
    def _message(cls, v: Any) -> str:
        return str(v or "").strip() or "incident without further detail"


class AttemptResources(BaseModel):
    """What one attempt used: generator memory (peak CUDA memory on a GPU, else the generator
    process's peak RSS) and output frames per second of each stage that handles every frame."""

    generator_memory_bytes: int | None = None
    generator_memory_kind: str | None = None  # "cuda_peak" | "rss"
    stage_fps: dict[str, float] = Field(default_factory=dict)
    frames: int = 0


class Attempt(BaseModel):
    n: int
    owner: str
    started_at: float
    ended_at: float | None = None
    error: ErrorInfo | None = None
    released: bool = False  # given back on drain: does not count against max_attempts
    incidents: list[Incident] = Field(default_factory=list)
    resources: AttemptResources | None = None


class JobParams(BaseModel):
    """What the runner needs to render the job, written once at submission."""

    model_config = ConfigDict(extra="forbid")

    audio_path: str
    video_path: str
    backend: str = "default"
    pingpong: bool = True
    box: tuple[int, int, int, int] | None = None
    # Server path -> the name the client knows (upload file name, URL, "avatar <id>"): error
    # messages raised while rendering name the client's file, never the server path.
    display: dict[str, str] = Field(default_factory=dict)

    def client_names(self) -> dict[str, str]:
        return {self.audio_path: self.display.get("audio", "audio"),
                self.video_path: self.display.get("video", "video")}


DEFAULT_TENANT = "default"  # every job when auth is off


class JobRecord(BaseModel):
    """One job as stored. Mutable on purpose: store transitions change a fresh copy in place."""

    model_config = ConfigDict(validate_assignment=False)

    id: str
    status: JobStatus
    tenant: str = DEFAULT_TENANT  # who owns it: other tenants cannot see, cancel or download it
    priority: int = 0
    params: JobParams | None = None
    meta: dict[str, Any] = Field(default_factory=dict)  # client-side extras (duix task, avatar id)
    progress: float = 0.0
    stage: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    attempts: list[Attempt] = Field(default_factory=list)
    error: ErrorInfo | None = None
    result_path: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    next_attempt_at: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    expired_at: float | None = None  # retention removed the result (GET .../result answers 410)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def failed_attempts(self) -> int:
        """Attempts closed with an error: what ``max_attempts`` limits (released ones don't count)."""
        return sum(1 for a in self.attempts if a.error is not None)

    @property
    def open_attempt(self) -> Attempt | None:
        if self.attempts and self.attempts[-1].ended_at is None:
            return self.attempts[-1]
        return None

    @property
    def callback_url(self) -> str | None:
        url = self.meta.get("callback_url")
        return url if isinstance(url, str) and url else None

    def to_api(self, admin: bool = False) -> dict[str, Any]:
        """A JSON-able dict for the HTTP API (a deep copy). Without ``admin``: no server paths,
        hostnames or pids (no ``result_path``, ``owner``, attempt owners or incident messages;
        ``params`` shows the client's own names for its inputs)."""
        d = self.model_dump(mode="json")
        d["failed_attempts"] = self.failed_attempts
        # The latest measured attempt's resource use (each attempt keeps its own in ``attempts``).
        measured = [a for a in d["attempts"] if a.get("resources")]
        d["resources"] = measured[-1]["resources"] if measured else None
        d["result_expired"] = self.expired_at is not None
        if admin:
            return d
        for key in ("result_path", "owner"):
            d.pop(key, None)
        if self.params is not None:
            d["params"] = {"backend": self.params.backend, "pingpong": self.params.pingpong,
                           "box": list(self.params.box) if self.params.box else None,
                           "inputs": dict(self.params.display)}
        d["attempts"] = [{k: a.get(k) for k in ("n", "started_at", "ended_at", "error", "released", "resources")}
                         for a in d["attempts"]]
        return d
