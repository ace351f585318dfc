"""The API contract: every request and response body of the native API, in one place."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors.errors import ErrorCode
from serve_app.jobs.records import AttemptResources, ErrorInfo, Incident, JobStatus


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str = Field(min_length=1, description="names the client's file or the request part, and the reason")
    retryable: bool = Field(description="whether the same request may succeed later")


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer of the native API."""

    error: ErrorBody


class JobSubmission(BaseModel):
    """JSON submission: server-side paths or http(s) URLs; ``avatar_id`` instead of a video."""

    model_config = ConfigDict(extra="forbid")

    audio: str = Field(min_length=1, max_length=4096, description="server-side path or http(s) URL of the speech audio")
    video: str | None = Field(None, max_length=4096, description="server-side path or http(s) URL of the template video")
    avatar_id: str | None = Field(None, max_length=64, description="a template registered with POST /v1/avatars")
    backend: str | None = Field(None, max_length=64)
    pingpong: bool = True
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    box: list[int] | None = Field(None, min_length=4, max_length=4, description="face box x1 y1 x2 y2")
    callback_url: str | None = Field(None, max_length=4096,
                                     description="https URL POSTed the signed job JSON on every terminal state")


class AttemptView(BaseModel):
    n: int
    started_at: float
    ended_at: float | None = None
    error: ErrorInfo | None = None
    released: bool = False
    resources: AttemptResources | None = Field(None, description="what the attempt used (memory, frames/s per stage)")
    owner: str | None = Field(None, description="admin keys only")
    incidents: list[Incident] | None = Field(None, description="admin keys only")


class WebhookView(BaseModel):
    status: str = Field(description="pending, delivered or failed (gave up)")
    attempts: int
    last_error: str | None = None
    next_attempt_at: float | None = None


class JobView(BaseModel):
    """A job as the API shows it: no server paths, hostnames or pids unless the key is an admin's."""

    id: str
    status: JobStatus
    priority: int
    tenant: str
    params: dict[str, Any] | None = Field(None, description="backend, pingpong, box and the client's input names")
    meta: dict[str, Any] = {}
    progress: float = Field(ge=0, le=1)
    stage: str | None = None
    timings: dict[str, float] = {}
    attempts: list[AttemptView] = []
    failed_attempts: int = 0
    resources: AttemptResources | None = Field(None, description="resource use of the latest measured attempt")
    error: ErrorInfo | None = None
    result_expired: bool = False
    expired_at: float | None = None
    webhook: WebhookView | None = None
    result_path: str | None = Field(None, description="admin keys only")
    owner: str | None = Field(None, description="admin keys only")
    lease_until: float | None = None
    next_attempt_at: float = 0.0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    limit: int
    offset: int


class AvatarView(BaseModel):
    avatar_id: str
    name: str | None = None  # the registered file's name, as the client sent it
    width: int
    height: int
    fps: float
    frames: int


class AvatarList(BaseModel):
    avatars: list[AvatarView]


class BackendList(BaseModel):
    """The generator backends this deployment serves (what a job's ``backend`` may name)."""

    backends: list[str] = Field(description="served backends, the default first")
    default: str = Field(description="the backend of jobs that name none")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    pipeline_replicas: int | None = None
    reason: str | None = None
    pipeline: dict[str, Any] | None = None


class DuixReply(BaseModel):
    """The Duix envelope, on every answer of ``/easy/*`` (errors too: 429 is ``code`` 9999)."""

    code: int
    data: dict[str, Any] = {}
    msg: Any = None
    success: bool


# Request bodies of the routes that read their body themselves (multipart with streamed limits, or
# hostile-JSON-safe parsing): documented here so clients and the fuzzer see the real contract.
def _multipart(required: list[str], files: tuple[str, ...], fields: dict[str, dict]) -> dict:
    props = {name: {"type": "string", "format": "binary"} for name in files}
    props.update(fields)
    return {"schema": {"type": "object", "required": required, "properties": props}}


SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": _multipart(["audio"], ("audio", "video"), {
        "avatar_id": {"type": "string", "maxLength": 64},
        "backend": {"type": "string", "maxLength": 64},
        "pingpong": {"type": "string", "enum": ["true", "false"]},
        "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
        "box": {"type": "string", "description": "four integers x1 y1 x2 y2"},
        "callback_url": {"type": "string", "maxLength": 4096}}),
    "application/json": {"schema": JobSubmission.model_json_schema()},
}}}
AVATAR_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": _multipart(["video"], ("video",), {})}}}
DUIX_SUBMIT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["audio_url", "video_url", "code"],
    "properties": {"audio_url": {"type": "string"}, "video_url": {"type": "string"}, "code": {"type": "string"}}}}}}}
