"""``JobIntake``: how every API (native, Duix, the studio) turns a request into a queued job.

1. admit     the global and the tenant's queue bound (429 + Retry-After), the disk watermark (507)
             (``admission.py``), before an upload is read
2. acquire   the inputs into the job's own dir (``inputs.py``): an upload, a confined server path
             (linked in), or an http(s) URL (SSRF-safe fetch)
3. validate  cheap header checks (``actors/media``) and the work bounds: bad inputs fail now with a
             typed 4xx that names the client's file, not minutes later in a worker
4. enqueue   a durable record with typed ``JobParams``, owned by the tenant; the dispatcher is nudged

A failed submission leaves no files behind. Routes stay thin: they parse the request and call this.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from starlette.datastructures import UploadFile

from actors.errors import InvalidParameterError, LipserveError, with_client_names
from actors.media.audio import probe_audio
from actors.media.digest import file_digest
from actors.media.template import probe_template
from serve_app.api.address_policy import AddressPolicy, parse_target, vet_target
from serve_app.api.admission import Admission
from serve_app.api.auth import ANONYMOUS, Tenant
from serve_app.api.idempotency import Idempotency
from serve_app.api.inputs import Input, InputAcquirer
from serve_app.api.url_fetch import SafeHttp
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore, BlockingLane
from serve_app.jobs import avatar_registry
from serve_app.jobs.records import JobParams, JobRecord
from serve_app.jobs.storage import Storage

log = logging.getLogger("lipserve.intake")

__all__ = ["Input", "JobIntake", "Submission"]
_AVATAR_ID = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass
class Submission:
    """A request, parsed: the inputs plus the options the runner needs."""

    audio: Input
    video: Input
    backend: str | None = None
    pingpong: bool = True
    priority: int = 0
    box: tuple[int, int, int, int] | None = None
    meta: dict = field(default_factory=dict)
    tenant: Tenant = ANONYMOUS
    callback_url: str | None = None


class JobIntake:
    def __init__(self, args: LipserveArgs, store: AsyncJobStore, storage: Storage, metrics=None,
                 on_enqueued: Callable[[], None] | None = None, http: SafeHttp | None = None):
        self.args = args
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.on_enqueued = on_enqueued or (lambda: None)
        self.io = BlockingLane("lipserve-io", 4)  # header checks, hashing, cleanup
        self.inputs = InputAcquirer(args.jobs, http)
        self.admission = Admission(args, store, metrics)
        self.idempotency = Idempotency(store, args.jobs.idempotency_ttl_s)
        self.webhook_policy = AddressPolicy(allow_private=args.webhooks.allow_private)

    # -- 1. admit ---------------------------------------------------------------------------
    async def admit(self, tenant: Tenant = ANONYMOUS) -> None:
        """``QueueFullError`` (429 + Retry-After) or ``InsufficientStorageError`` (507)."""
        await self.admission.admit(tenant)

    # -- 2. acquire -------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return uuid.uuid4().hex

    def inputs_dir(self, job_id: str) -> Path:
        return self.storage.inputs_dir(job_id)

    async def save_upload(self, upload: UploadFile, dest_dir: Path, field_name: str) -> Input:
        return await self.inputs.save_upload(upload, dest_dir, field_name)

    async def fetch_url(self, url: str, dest_dir: Path, field_name: str) -> Input:
        return await self.inputs.fetch_url(url, dest_dir, field_name)

    async def acquire(self, source: str, dest_dir: Path, field_name: str, roots: list[str] | None,
                      what: str = "jobs.input_roots") -> Input:
        return await self.inputs.acquire(source, dest_dir, field_name, roots, what)

    def avatar(self, avatar_id: str, tenant: Tenant = ANONYMOUS) -> Input:
        """A template the tenant registered (another tenant's id is unknown here)."""
        if not _AVATAR_ID.fullmatch(avatar_id or ""):
            raise InvalidParameterError(f"avatar_id {avatar_id!r} is not valid", path="avatar_id")
        for p in self.storage.registered_dir(tenant.name).glob(f"{avatar_id}.*"):
            return Input(p, f"avatar {avatar_id}")
        raise InvalidParameterError(f"avatar_id {avatar_id!r} is not registered (POST /v1/avatars first)",
                                    path="avatar_id")

    async def check_callback(self, url: str | None) -> str | None:
        """A webhook target: http(s), and (unless ``webhooks.allow_private``) public addresses only.
        Checked again, address by address, on every delivery."""
        if url is None or not url.strip():
            return None
        url = url.strip()
        target = parse_target(url)
        try:
            await vet_target(target, self.webhook_policy)
        except LipserveError as err:
            raise InvalidParameterError(f"callback_url {url}: {err.message}", path="callback_url") from err
        return url

    # -- 3. validate ------------------------------------------------------------------------
    def served_backend(self, backend: str | None) -> str:
        """The served backend a submission names (``mouth_warp`` = ``default``); none named: the
        deployment's default (the first of ``generators``)."""
        return self.args.resolve_backend(backend)

    def _check_media(self, audio: Input, video: Input, backend: str) -> None:
        limits = self.args.media_limits()
        names = {str(audio.path): audio.display, str(video.path): video.display}
        try:
            audio_s = probe_audio(audio.path, limits)  # headers + first samples: never a full decode
            template = probe_template(video.path, limits)  # headers + first frame
            self.admission.check_work(audio_s, template, backend, str(video.path))
        except LipserveError as err:
            raise with_client_names(err, names) from err

    async def validate(self, audio: Input, video: Input, backend: str | None = None) -> None:
        await self.io.run(self._check_media, audio, video, backend or self.args.generator.backend)

    # -- 4. enqueue -------------------------------------------------------------------------
    async def enqueue(self, sub: Submission, job_id: str) -> JobRecord:
        """Validate and record a job (queued), then nudge the dispatcher. Raises
        ``DuplicateJobError`` if ``job_id`` is taken."""
        backend = self.served_backend(sub.backend)
        self.admission.check_priority(sub.tenant, sub.priority)
        await self.validate(sub.audio, sub.video, backend)
        params = JobParams(audio_path=str(sub.audio.path), video_path=str(sub.video.path), backend=backend,
                           pingpong=sub.pingpong, box=sub.box,
                           display={"audio": sub.audio.display, "video": sub.video.display})
        meta = dict(sub.meta)
        if sub.callback_url:
            meta["callback_url"] = sub.callback_url
        rec = await self.store.create(params, priority=sub.priority, job_id=job_id, meta=meta,
                                      tenant=sub.tenant.name)
        if self.metrics:
            self.metrics.submitted.inc()
        self.on_enqueued()
        return rec

    def rejected(self, err: LipserveError) -> None:
        if self.metrics:
            self.metrics.rejected.inc(tags={"reason": err.code.value})

    async def discard(self, job_id: str) -> None:
        """Drop a failed submission's files."""
        await self.io.run(self.storage.remove_job_work, job_id)

    # -- avatars ----------------------------------------------------------------------------
    async def register_avatar(self, upload: UploadFile, tenant: Tenant = ANONYMOUS) -> dict:
        """Store a template once (per tenant) under its content hash; later jobs pass its ``avatar_id``."""
        registered = self.storage.registered_dir(tenant.name)
        tmp_dir = registered / f".upload-{uuid.uuid4().hex}"
        tmp_dir.mkdir()
        try:
            inp = await self.save_upload(upload, tmp_dir, "video")
            try:
                info = await self.io.run(probe_template, inp.path, self.args.media_limits())
                await self.io.run(self.admission.check_work, None, info, self.args.generator.backend, str(inp.path))
            except LipserveError as err:
                raise with_client_names(err, {str(inp.path): inp.display}) from err
            avatar_id = (await self.io.run(file_digest, inp.path))[:24]
            os.replace(inp.path, registered / f"{avatar_id}{inp.path.suffix}")
            view = {"width": info.width, "height": info.height, "fps": float(info.fps), "frames": info.n_frames}
            await self.io.run(avatar_registry.record, registered, avatar_id, inp.display, view)
        finally:
            await self.io.run(_remove_tree, tmp_dir)
        return {"avatar_id": avatar_id, "name": inp.display, **view}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
