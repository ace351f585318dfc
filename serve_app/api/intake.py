"""``JobIntake``: how every API (native, Duix, the studio) turns a request into a queued job.

1. acquire   the inputs: an upload (streamed to the job's inputs dir under the size limit), a server
             path (only under ``jobs.input_roots``, checked before existence), or an http(s) URL
2. validate  cheap header checks (``actors/media``): bad inputs fail now with a typed 4xx that names
             the client's file, not minutes later in a worker
3. admit     the queue bound (429 + Retry-After)
4. enqueue   a durable record with typed ``JobParams``; the dispatcher is nudged

A failed submission leaves no files behind. Routes stay thin: they parse the request and call this.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
from starlette.datastructures import UploadFile

from actors.errors import (
    InvalidParameterError,
    LipserveError,
    MediaTooLargeError,
    QueueFullError,
    UnreadableFileError,
    with_client_names,
)
from actors.media.audio import probe_audio
from actors.media.digest import file_digest
from actors.media.template import probe_template
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore, BlockingLane
from serve_app.jobs.records import JobParams, JobRecord, JobStatus
from serve_app.jobs.storage import Storage

log = logging.getLogger("lipserve.intake")


@dataclass(frozen=True)
class Input:
    """One acquired input: where it is on the server, and the name the client knows it by."""

    path: Path
    display: str


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


class JobIntake:
    def __init__(self, args: LipserveArgs, store: AsyncJobStore, storage: Storage, metrics=None,
                 on_enqueued: Callable[[], None] | None = None):
        self.args = args
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.on_enqueued = on_enqueued or (lambda: None)
        self.io = BlockingLane("lipserve-io", 4)  # header checks, hashing, cleanup

    # -- 1. acquire -------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return uuid.uuid4().hex

    def inputs_dir(self, job_id: str) -> Path:
        return self.storage.inputs_dir(job_id)

    async def save_upload(self, upload: UploadFile, dest_dir: Path, field_name: str) -> Input:
        """Stream an upload to ``dest_dir`` under the upload limit."""
        name = Path(upload.filename or field_name).name or field_name
        dest = dest_dir / f"{field_name}{Path(name).suffix.lower()[:8] or '.bin'}"
        limit = self.args.jobs.max_upload_bytes
        size = 0
        with open(dest, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise MediaTooLargeError(f"upload '{field_name}' ({name}) is larger than {limit} bytes", path=name)
                f.write(chunk)
        if size == 0:
            raise UnreadableFileError(f"upload '{field_name}' ({name}) is empty", path=name)
        return Input(dest, name)

    async def fetch_url(self, url: str, dest_dir: Path, field_name: str) -> Input:
        dest = dest_dir / f"{field_name}{Path(url.split('?')[0]).suffix.lower()[:8] or '.bin'}"
        limit = self.args.jobs.max_upload_bytes
        try:
            async with httpx.AsyncClient(follow_redirects=True, timeout=60) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise UnreadableFileError(f"download failed with HTTP {resp.status_code}", path=url)
                    size = 0
                    with open(dest, "wb") as f:
                        async for chunk in resp.aiter_bytes(1 << 20):
                            size += len(chunk)
                            if size > limit:
                                raise MediaTooLargeError(f"download is larger than {limit} bytes", path=url)
                            f.write(chunk)
        except httpx.HTTPError as exc:
            raise UnreadableFileError(f"download failed: {type(exc).__name__}: {exc}", path=url) from exc
        return Input(dest, url)

    def server_path(self, source: str, roots: list[str] | None) -> Input:
        """A path on the server, allowed only under ``roots`` (None: any path). The check comes
        before any existence check, so paths outside reveal nothing."""
        path = Path(source).expanduser()
        if roots is not None:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(Path(r).resolve()) for r in roots):
                raise InvalidParameterError(
                    f"server paths must lie under {', '.join(roots)} (jobs.input_roots)", path=source)
        if not path.is_file():
            raise UnreadableFileError("no such file on the server", path=source)
        return Input(path.resolve(), source)

    async def acquire(self, source: str, dest_dir: Path, field_name: str, roots: list[str] | None) -> Input:
        """A JSON submission's input: an http(s) URL or a server path."""
        if source.lower().startswith(("http://", "https://")):
            return await self.fetch_url(source, dest_dir, field_name)
        return self.server_path(source, roots)

    def avatar(self, avatar_id: str) -> Input:
        if not avatar_id.isalnum():
            raise InvalidParameterError(f"avatar_id {avatar_id!r} is not valid")
        for p in self.storage.registered_dir().glob(f"{avatar_id}.*"):
            return Input(p, f"avatar {avatar_id}")
        raise InvalidParameterError(f"avatar_id {avatar_id!r} is not registered (POST /v1/avatars first)")

    # -- 2. validate ------------------------------------------------------------------------
    def served_backend(self, backend: str | None) -> str:
        """The served backend a submission names (``mouth_warp`` = ``default``); none named: the
        deployment's default (the first of ``generators``)."""
        return self.args.resolve_backend(backend)

    def _check_media(self, audio: Input, video: Input) -> None:
        limits = self.args.media_limits()
        for inp, probe in ((audio, probe_audio), (video, probe_template)):
            try:
                probe(inp.path, limits)  # headers + first samples / frame: never a full decode
            except LipserveError as err:
                raise with_client_names(err, {str(inp.path): inp.display}) from err

    async def validate(self, audio: Input, video: Input) -> None:
        await self.io.run(self._check_media, audio, video)

    # -- 3. admit ---------------------------------------------------------------------------
    async def admit(self) -> None:
        """Raise ``QueueFullError`` (429 + Retry-After) when the queue is at its bound."""
        queued = await self.store.count(JobStatus.QUEUED)
        if self.metrics:
            self.metrics.queue_depth.set(queued)
        limit, retry = self.args.jobs.max_queued_jobs, self.args.jobs.retry_after_s
        if queued >= limit:
            if self.metrics:
                self.metrics.rejected.inc(tags={"reason": "queue_full"})
            err = QueueFullError(f"{queued} jobs are queued (limit {limit}); retry in {retry} s")
            err.retry_after = retry
            raise err

    # -- 4. enqueue -------------------------------------------------------------------------
    async def enqueue(self, sub: Submission, job_id: str) -> JobRecord:
        """Validate and record a job (queued), then nudge the dispatcher. Raises
        ``DuplicateJobError`` if ``job_id`` is taken."""
        backend = self.served_backend(sub.backend)
        await self.validate(sub.audio, sub.video)
        params = JobParams(audio_path=str(sub.audio.path), video_path=str(sub.video.path), backend=backend,
                           pingpong=sub.pingpong, box=sub.box,
                           display={"audio": sub.audio.display, "video": sub.video.display})
        rec = await self.store.create(params, priority=sub.priority, job_id=job_id, meta=sub.meta)
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
    async def register_avatar(self, upload: UploadFile) -> dict:
        """Store a template once under its content hash; later jobs pass its ``avatar_id``."""
        tmp_dir = self.storage.registered_dir() / f".upload-{uuid.uuid4().hex}"
        tmp_dir.mkdir()
        try:
            inp = await self.save_upload(upload, tmp_dir, "video")
            try:
                info = await self.io.run(probe_template, inp.path, self.args.media_limits())
            except LipserveError as err:
                raise with_client_names(err, {str(inp.path): inp.display}) from err
            avatar_id = (await self.io.run(file_digest, inp.path))[:24]
            os.replace(inp.path, self.storage.registered_dir() / f"{avatar_id}{inp.path.suffix}")
        finally:
            await self.io.run(_remove_tree, tmp_dir)
        return {"avatar_id": avatar_id, "width": info.width, "height": info.height, "fps": float(info.fps),
                "frames": info.n_frames}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
