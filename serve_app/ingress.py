"""The HTTP ingress: the job API. Light and CPU-only — it validates, stores inputs, records the job
and dispatches it; it never touches frames.

Routes are declared on a module-level FastAPI app; ``serve_app/app.py`` wraps ``IngressServer``
with ``serve.ingress(api)`` and ``serve.deployment`` using options from the typed config.
"""


import asyncio
import functools
import json
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from actors.audio import probe_audio
from actors.avatar import file_digest
from actors.errors import (
    ErrorCode,
    InputError,
    InvalidParameterError,
    LipserveError,
    MediaTooLargeError,
    UnreadableFileError,
    as_lipserve_error,
)
from actors.template import probe_template
from serve_app import duix_compat
from serve_app.config import LipserveArgs
from serve_app.dispatcher import JobDispatcher
from serve_app.job_store import TERMINAL, JobStore
from serve_app.job_store_actor import open_job_store
from serve_app.pipeline_server import limits_from
from serve_app.storage import Storage

log = logging.getLogger("lipserve.ingress")


_STATUS_FOR_CODE = {
    ErrorCode.MEDIA_TOO_LARGE: 413,
    ErrorCode.MEDIA_TOO_LONG: 413,
}


def error_response(err: LipserveError, status: int | None = None, headers: dict | None = None) -> JSONResponse:
    status = status or _STATUS_FOR_CODE.get(err.code, 422 if isinstance(err, InputError) else 500)
    return JSONResponse({"error": err.to_dict()}, status_code=status, headers=headers)


class JobRequest(BaseModel):
    """JSON submission: server-side paths or http(s) URLs; ``avatar_id`` instead of a video."""

    audio: str = Field(description="server-side path or http(s) URL of the speech audio")
    video: str | None = Field(None, description="server-side path or http(s) URL of the template video")
    avatar_id: str | None = Field(None, description="a template registered with POST /v1/avatars")
    backend: str | None = None
    pingpong: bool = True
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first")
    box: list[int] | None = Field(None, min_length=4, max_length=4, description="face box x1 y1 x2 y2")


def _job_or_404(store: JobStore, job_id: str):
    rec = store.get(job_id)
    if rec is None:
        raise HTTPException(404, detail={"code": "not_found", "message": f"job {job_id} does not exist"})
    return rec



class IngressServer:
    def __init__(self, args: LipserveArgs | dict, pipeline):
        self.args = LipserveArgs.from_any(args)
        self._db_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lipserve-db")
        self._io_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lipserve-io")
        self.storage = Storage(self.args.storage_dir)
        self.store = open_job_store(self.args.job_store, self.args.database_path)
        self.pipeline = pipeline
        limit = self.args.pipeline.autoscaling.max_replicas * self.args.pipeline.max_ongoing_requests
        self.dispatcher = JobDispatcher(self._claimable, self._run_on_pipeline, limit=limit,
                                        poll_s=min(1.0, self.args.jobs.lease_s / 3))
        try:
            from serve_app.metrics import IngressMetrics

            self.metrics = IngressMetrics()
        except Exception:  # outside a Ray worker (unit use): no metrics
            self.metrics = None
        try:  # start at once when constructed on the event loop, else on the first health check
            self.dispatcher.ensure_started()
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ plumbing
    def _claimable(self) -> list[str]:
        return self.store.claimable(limit=self.dispatcher.limit * 2)

    async def _run_on_pipeline(self, job_id: str):
        return await self.pipeline.run_job.remote(job_id)

    async def check_health(self) -> None:
        self.dispatcher.ensure_started()
        await self._db(self.store.count, "queued")

    async def _db(self, fn, *a, **kw):
        # Store calls get a pool of their own: Serve sizes the default executor by the replica's
        # (fractional) CPUs, and status / SSE / dispatch must not wait behind media checks.
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, functools.partial(fn, *a, **kw))

    async def _io(self, fn, *a, **kw):
        """Blocking media / file work (header checks, hashing, cleanup), bounded separately."""
        return await asyncio.get_running_loop().run_in_executor(self._io_pool, functools.partial(fn, *a, **kw))

    # ------------------------------------------------------------------ inputs
    async def _save_upload(self, upload: UploadFile, dest_dir: Path, field: str) -> Path:
        name = Path(upload.filename or field).name or field
        dest = dest_dir / f"{field}{Path(name).suffix.lower() or '.bin'}"
        limit = self.args.jobs.max_upload_bytes
        size = 0
        with open(dest, "wb") as f:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise MediaTooLargeError(f"upload '{field}' ({name}) is larger than {limit} bytes", path=name)
                f.write(chunk)
        if size == 0:
            raise UnreadableFileError(f"upload '{field}' ({name}) is empty", path=name)
        return dest

    async def _fetch(self, source: str, dest_dir: Path, field: str) -> Path:
        if source.startswith(("http://", "https://")):
            dest = dest_dir / f"{field}{Path(source.split('?')[0]).suffix.lower() or '.bin'}"
            limit = self.args.jobs.max_upload_bytes
            try:
                async with httpx.AsyncClient(follow_redirects=True, timeout=60) as client:
                    async with client.stream("GET", source) as resp:
                        if resp.status_code != 200:
                            raise UnreadableFileError(f"download failed with HTTP {resp.status_code}", path=source)
                        size = 0
                        with open(dest, "wb") as f:
                            async for chunk in resp.aiter_bytes(1 << 20):
                                size += len(chunk)
                                if size > limit:
                                    raise MediaTooLargeError(f"download is larger than {limit} bytes", path=source)
                                f.write(chunk)
            except httpx.HTTPError as exc:
                raise UnreadableFileError(f"download failed: {type(exc).__name__}: {exc}", path=source) from exc
            return dest
        path = Path(source).expanduser()
        roots = self.args.jobs.input_roots
        if roots is not None:  # checked before existence, so outside paths reveal nothing
            resolved = path.resolve()
            if not any(resolved.is_relative_to(Path(r).resolve()) for r in roots):
                raise InvalidParameterError(
                    f"server paths must lie under {', '.join(roots)} (jobs.input_roots)", path=source)
        if not path.is_file():
            raise UnreadableFileError("no such file on the server", path=source)
        return path.resolve()

    def _validate_media(self, audio_path: Path, video_path: Path, display: dict[str, str]) -> None:
        """Cheap header checks so bad inputs fail at submission with a typed 4xx, not minutes later."""
        limits = limits_from(self.args)
        try:
            probe_audio(audio_path, limits)  # headers + first samples; frames are never decoded here
        except LipserveError as err:
            raise type(err)(err.message.replace(str(audio_path), display["audio"]), path=display["audio"]) from err
        try:
            probe_template(video_path, limits)
        except LipserveError as err:
            raise type(err)(err.message.replace(str(video_path), display["video"]), path=display["video"]) from err

    def _avatar_path(self, avatar_id: str) -> Path:
        if not avatar_id.isalnum():
            raise InvalidParameterError(f"avatar_id {avatar_id!r} is not valid")
        for p in self.storage.registered_dir().glob(f"{avatar_id}.*"):
            return p
        raise InvalidParameterError(f"avatar_id {avatar_id!r} is not registered (POST /v1/avatars first)")

    def _check_backend(self, backend: str | None) -> None:
        configured = self.args.generator.backend
        aliases = {"default", "mouth_warp"} if configured in ("default", "mouth_warp") else {configured}
        if backend and backend not in aliases:
            raise InvalidParameterError(
                f"backend {backend!r} is not served by this deployment (it serves {configured!r})")

    async def _queue_full(self) -> str | None:
        """Why a new job is refused now (the queue is at its bound), or None. Shared with the Duix API."""
        queued = await self._db(self.store.count, "queued")
        if self.metrics:
            self.metrics.queue_depth.set(queued)
        if queued >= self.args.jobs.max_queued_jobs:
            if self.metrics:
                self.metrics.rejected.inc(tags={"reason": "queue_full"})
            return (f"{queued} jobs are queued (limit {self.args.jobs.max_queued_jobs}); "
                    f"retry in {self.args.jobs.retry_after_s} s")
        return None

    async def _queue_full_response(self) -> JSONResponse | None:
        message = await self._queue_full()
        if message is None:
            return None
        return JSONResponse({"error": {"code": "queue_full", "retryable": True, "message": message}},
                            status_code=429, headers={"Retry-After": str(self.args.jobs.retry_after_s)})

    async def _enqueue(self, params: dict, priority: int = 0, job_id: str | None = None):
        """Record a validated job (queued) and nudge the dispatcher. Shared with the Duix API.
        Raises ``DuplicateJobError`` if ``job_id`` is taken."""
        rec = await self._db(self.store.create, params, priority=priority, job_id=job_id)
        if self.metrics:
            self.metrics.submitted.inc()
        self.dispatcher.ensure_started()
        self.dispatcher.nudge()
        return rec

    async def create_job(self, request: Request) -> JSONResponse:
        """Shared by the native API and the Duix-compatible one."""
        full = await self._queue_full_response()
        if full is not None:
            return full
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > 2 * self.args.jobs.max_upload_bytes + (1 << 20):
            return error_response(MediaTooLargeError(f"request body of {length} bytes is over the upload limit",
                                                     path="request"), 413)
        job_id = uuid.uuid4().hex
        inputs = self.storage.inputs_dir(job_id)
        try:
            ctype = request.headers.get("content-type", "")
            if ctype.startswith("multipart/form-data"):
                form = await request.form()
                fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
                req = JobRequest.model_validate({
                    "audio": "upload", "video": "upload" if isinstance(form.get("video"), UploadFile) else None,
                    "avatar_id": fields.get("avatar_id") or None,
                    "backend": fields.get("backend") or None,
                    "pingpong": str(fields.get("pingpong", "true")).lower() in ("1", "true", "yes", "on"),
                    "priority": int(fields.get("priority", 0) or 0),
                    "box": [int(x) for x in str(fields["box"]).replace(",", " ").split()] if fields.get("box") else None,
                })
                if not isinstance(form.get("audio"), UploadFile):
                    raise InvalidParameterError("multipart field 'audio' (a file) is required")
                audio_path = await self._save_upload(form["audio"], inputs, "audio")
                display = {"audio": form["audio"].filename or "audio"}
                if isinstance(form.get("video"), UploadFile):
                    video_path = await self._save_upload(form["video"], inputs, "video")
                    display["video"] = form["video"].filename or "video"
                else:
                    video_path = None
            else:
                try:
                    body = json.loads(await request.body() or b"{}")
                except json.JSONDecodeError as exc:
                    raise InvalidParameterError(f"request body is not JSON or multipart: {exc}") from exc
                req = JobRequest.model_validate(body)
                audio_path = await self._fetch(req.audio, inputs, "audio")
                video_path = await self._fetch(req.video, inputs, "video") if req.video else None
                display = {"audio": req.audio, "video": req.video or ""}
            self._check_backend(req.backend)
            if video_path is None:
                if not req.avatar_id:
                    raise InvalidParameterError("a template is required: 'video' or 'avatar_id'")
                video_path = self._avatar_path(req.avatar_id)
                display["video"] = f"avatar {req.avatar_id}"
            await self._io(self._validate_media, audio_path, video_path, display)
        except ValidationError as exc:
            await self._io(self.storage.remove_job_work, job_id)
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) or str(exc)
            return error_response(InvalidParameterError(f"invalid request: {msg}"), 422)
        except (ValueError, TypeError) as exc:
            await self._io(self.storage.remove_job_work, job_id)
            return error_response(InvalidParameterError(f"invalid request: {exc}"), 422)
        except LipserveError as err:
            await self._io(self.storage.remove_job_work, job_id)
            if self.metrics:
                self.metrics.rejected.inc(tags={"reason": err.code.value})
            return error_response(err)
        except Exception as exc:  # noqa: BLE001 - never a bare 500 or leftover files
            await self._io(self.storage.remove_job_work, job_id)
            log.exception("submission %s failed", job_id)
            err = as_lipserve_error(exc, stage="submit")
            return error_response(err, 500)
        params = {"audio_path": str(audio_path), "video_path": str(video_path), "pingpong": req.pingpong,
                  "box": req.box, "backend": self.args.generator.backend, "inputs": display,
                  "avatar_id": req.avatar_id}
        rec = await self._enqueue(params, priority=req.priority, job_id=job_id)
        return JSONResponse(rec.to_api(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


    # ------------------------------------------------------------------ handlers (routes: build_api)
    async def submit(self, request: Request):
        return await self.create_job(request)

    async def get_job(self, job_id: str):
        return (await self._db(_job_or_404, self.store, job_id)).to_api()

    async def list_jobs(self, status: str | None = None, limit: int = 100, offset: int = 0):
        recs = await self._db(self.store.list, status, min(limit, 1000), offset)
        return {"jobs": [r.to_api() for r in recs]}

    async def get_result(self, job_id: str):
        rec = await self._db(_job_or_404, self.store, job_id)
        if rec.status != "succeeded" or not rec.result_path or not os.path.exists(rec.result_path):
            return JSONResponse({"error": {"code": "not_ready", "retryable": rec.status not in TERMINAL,
                                           "message": f"job {job_id} is {rec.status}; no result"}},
                                status_code=409)
        return FileResponse(rec.result_path, media_type="video/mp4", filename=f"{job_id}.mp4")

    async def events(self, job_id: str):
        await self._db(_job_or_404, self.store, job_id)

        async def stream():
            last = None
            while True:
                rec = await self._db(self.store.get, job_id)
                if rec is None:
                    return
                snapshot = (rec.status, round(rec.progress, 3), rec.stage, len(rec.attempts))
                if snapshot != last:
                    last = snapshot
                    kind = "final" if rec.status in TERMINAL else "progress"
                    yield f"event: {kind}\ndata: {json.dumps(rec.to_api())}\n\n"
                    if kind == "final":
                        return
                await asyncio.sleep(0.25)  # polling interval of the durable record, not a readiness wait

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def cancel(self, job_id: str):
        before = await self._db(_job_or_404, self.store, job_id)
        rec = await self._db(self.store.cancel, job_id)
        if rec.status == "cancelled" and before.status == "queued":
            # A job that is not running has no owner to clean up after it: drop its inputs here.
            # A running job's owner sees the cancel on its next heartbeat and cleans up itself.
            await self._io(self.storage.remove_job_work, job_id)
        return rec.to_api()

    async def register_avatar(self, request: Request):
        form = await request.form()
        video = form.get("video")
        if not isinstance(video, UploadFile):
            return error_response(InvalidParameterError("multipart field 'video' (a file) is required"), 422)
        tmp_dir = self.storage.registered_dir() / f".upload-{uuid.uuid4().hex}"
        tmp_dir.mkdir()
        try:
            path = await self._save_upload(video, tmp_dir, "video")
            info = await self._io(probe_template, path, limits_from(self.args))
            digest = await self._io(file_digest, path)
            avatar_id = digest[:24]
            final = self.storage.registered_dir() / f"{avatar_id}{path.suffix}"
            os.replace(path, final)
        except LipserveError as err:
            return error_response(err)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return JSONResponse({"avatar_id": avatar_id, "width": info.width, "height": info.height,
                             "fps": float(info.fps), "frames": info.n_frames}, status_code=201)

    async def healthz(self):
        return {"status": "ok"}

    async def readyz(self):
        # Readiness comes from Serve's own view: a RUNNING PipelineServer replica has finished its
        # constructor, warm-up included. Asking a replica directly would queue behind its running
        # jobs (max_ongoing_requests) and report a busy service as not ready.
        try:
            running = await self._db(_running_pipeline_replicas)
        except Exception as exc:  # noqa: BLE001 - controller unreachable: not ready, say why
            return JSONResponse({"status": "not_ready", "reason": f"cannot read Serve status: {exc!r}"},
                                status_code=503)
        if running == 0:
            return JSONResponse({"status": "not_ready", "reason": "no warm pipeline replica yet"}, status_code=503)
        body = {"status": "ready", "pipeline_replicas": running}
        try:  # details of one replica's warm-up, when one has a free slot to answer quickly
            body["pipeline"] = await asyncio.wait_for(self.pipeline.ready.remote(), timeout=1.0)
        except Exception:  # noqa: BLE001 - optional detail only
            pass
        return body


def _running_pipeline_replicas() -> int:
    from ray import serve

    app = serve.get_replica_context().app_name
    deployment = serve.status().applications[app].deployments.get("PipelineServer")
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0


def _current_server() -> "IngressServer":
    """The ingress replica's instance (Serve keeps it as the replica's servable object)."""
    from ray import serve

    return serve.get_replica_context().servable_object


def build_api() -> FastAPI:
    """The HTTP routes, built on each replica (``serve.ingress(build_api)``); each route is a thin
    call into the plain ``IngressServer``. OpenAPI is served at /docs."""
    api = FastAPI(
        title="lipserve",
        version="0.1.0",
        description="Lip-synced talking-head videos from an audio track and a template video, as durable jobs.",
    )
    S = Depends(_current_server)

    @api.post("/v1/jobs", status_code=202, summary="Submit a job (multipart upload or JSON paths/URLs)")
    async def submit(request: Request, srv: IngressServer = S):
        return await srv.submit(request)

    @api.get("/v1/jobs", summary="List jobs, newest first")
    async def list_jobs(status: str | None = None, limit: int = 100, offset: int = 0, srv: IngressServer = S):
        return await srv.list_jobs(status, limit, offset)

    @api.get("/v1/jobs/{job_id}", summary="Job status, progress, stage, error, attempts, timings")
    async def get_job(job_id: str, srv: IngressServer = S):
        return await srv.get_job(job_id)

    @api.get("/v1/jobs/{job_id}/result", summary="The finished video (video/mp4)")
    async def get_result(job_id: str, srv: IngressServer = S):
        return await srv.get_result(job_id)

    @api.get("/v1/jobs/{job_id}/events", summary="Server-Sent Events: progress and the final state")
    async def events(job_id: str, srv: IngressServer = S):
        return await srv.events(job_id)

    @api.delete("/v1/jobs/{job_id}", summary="Cancel a job")
    async def cancel(job_id: str, srv: IngressServer = S):
        return await srv.cancel(job_id)

    @api.post("/v1/avatars", status_code=201, summary="Register a template video once; jobs pass avatar_id")
    async def register_avatar(request: Request, srv: IngressServer = S):
        return await srv.register_avatar(request)

    # Duix/HeyGem-compatible API: existing clients work unchanged (serve_app/duix_compat.py).
    @api.post("/easy/submit", summary="Duix/HeyGem: submit a task (JSON body, whatever the Content-Type)")
    async def duix_submit(request: Request, srv: IngressServer = S):
        return await duix_compat.submit(srv, request)

    @api.get("/easy/query", summary="Duix/HeyGem: task status; the result is published in the shared temp dir")
    async def duix_query(code: str | None = None, srv: IngressServer = S):
        return await duix_compat.query(srv, code)

    @api.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", summary="Ready only when a warm pipeline replica answers")
    async def readyz(srv: IngressServer = S):
        return await srv.readyz()

    from serve_app.api.studio import mount_studio  # scratch wiring for the studio branch; the lead redoes it

    mount_studio(api)
    return api
