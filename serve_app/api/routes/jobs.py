"""``/v1/jobs``: submit, list, get, result, events (SSE), cancel."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from actors.errors import (InvalidParameterError, LipserveError, NotFoundError, ResultExpiredError,
                           ResultNotReadyError)
from serve_app.api import idempotency
from serve_app.api.auth import Tenant, tenant_of
from serve_app.api.errors import error_response, responses
from serve_app.api.file_response import MediaFileResponse
from serve_app.api.forms import read_form
from serve_app.api.intake import Submission
from serve_app.api.json_guard import read_json
from serve_app.api.schemas import SUBMIT_BODY, JobList, JobSubmission, JobView
from serve_app.api.services import ApiServices, services
from serve_app.jobs.outbox import delivery_view
from serve_app.jobs.records import TERMINAL, JobRecord, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_TRUE = ("1", "true", "yes", "on")
FORM_FILES = ("audio", "video")
FORM_FIELDS = ("avatar_id", "backend", "pingpong", "priority", "box", "callback_url")


def visible(rec: JobRecord | None, tenant: Tenant) -> bool:
    return rec is not None and (tenant.is_admin or rec.tenant == tenant.name)


async def job_or_404(svc: ApiServices, job_id: str, tenant: Tenant) -> JobRecord:
    """The job, if this tenant may see it: another tenant's job looks exactly like a missing one."""
    rec = await svc.store.get(job_id)
    if not visible(rec, tenant):
        raise NotFoundError(f"job {job_id} does not exist")
    return rec


async def job_view(svc: ApiServices, rec: JobRecord, tenant: Tenant) -> dict:
    d = rec.to_api(admin=tenant.is_admin)
    if rec.callback_url:
        d["webhook"] = delivery_view(await svc.store.deliveries(rec.id))
    return d


def _box(text: str | None) -> tuple[int, int, int, int] | None:
    if not text:
        return None
    try:
        values = [int(x) for x in str(text).replace(",", " ").split()]
    except ValueError as exc:
        raise InvalidParameterError(f"box must be four integers x1 y1 x2 y2, got {text!r}") from exc
    if len(values) != 4:
        raise InvalidParameterError(f"box must be four integers x1 y1 x2 y2, got {text!r}")
    return tuple(values)


def _int(text, name: str) -> int:
    try:
        return int(text or 0)
    except ValueError as exc:
        raise InvalidParameterError(f"{name} must be an integer, got {text!r}") from exc


async def _multipart(svc: ApiServices, request: Request, job_id: str, tenant: Tenant) -> tuple[Submission, dict]:
    form = await read_form(request, files=FORM_FILES, fields=FORM_FIELDS)
    fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
    if not isinstance(form.get("audio"), UploadFile):
        raise InvalidParameterError("multipart field 'audio' (a file) is required", path="audio")
    priority = _int(fields.get("priority"), "priority")
    JobSubmission.model_validate({"audio": "upload", "priority": priority})  # same bounds as JSON
    callback = await svc.intake.check_callback(fields.get("callback_url"))
    inputs = svc.intake.inputs_dir(job_id)
    audio = await svc.intake.save_upload(form["audio"], inputs, "audio")
    files = {"audio": str(audio.path)}
    if isinstance(form.get("video"), UploadFile):
        video = await svc.intake.save_upload(form["video"], inputs, "video")
        files["video"] = str(video.path)
        avatar_id = None
    elif fields.get("avatar_id"):
        avatar_id = str(fields["avatar_id"])
        video = svc.intake.avatar(avatar_id, tenant)
    else:
        raise InvalidParameterError("a template is required: 'video' or 'avatar_id'", path="video")
    sub = Submission(audio=audio, video=video, backend=fields.get("backend") or None,
                     pingpong=str(fields.get("pingpong", "true")).lower() in _TRUE, priority=priority,
                     box=_box(fields.get("box")), meta={"avatar_id": avatar_id} if avatar_id else {},
                     tenant=tenant, callback_url=callback)
    options = {k: fields.get(k) for k in FORM_FIELDS}
    return sub, {"options": options, "files": files}


async def _json(svc: ApiServices, request: Request, job_id: str, tenant: Tenant) -> tuple[Submission, dict]:
    body = await read_json(request)
    req = JobSubmission.model_validate(body)
    callback = await svc.intake.check_callback(req.callback_url)
    inputs, roots = svc.intake.inputs_dir(job_id), svc.args.jobs.input_roots
    audio = await svc.intake.acquire(req.audio, inputs, "audio", roots)
    if req.video:
        video = await svc.intake.acquire(req.video, inputs, "video", roots)
    elif req.avatar_id:
        video = svc.intake.avatar(req.avatar_id, tenant)
    else:
        raise InvalidParameterError("a template is required: 'video' or 'avatar_id'", path="video")
    sub = Submission(audio=audio, video=video, backend=req.backend, pingpong=req.pingpong, priority=req.priority,
                     box=tuple(req.box) if req.box else None,
                     meta={"avatar_id": req.avatar_id} if req.avatar_id else {}, tenant=tenant,
                     callback_url=callback)
    return sub, {"options": req.model_dump(mode="json"), "files": {}}


@router.post("", status_code=202, response_model=JobView, openapi_extra=SUBMIT_BODY,
             responses={200: {"model": JobView, "description": "Idempotency-Key replay: the first job"},
                        **responses(401, 409, 413, 422, 429, 507)},
             summary="Submit a job (multipart upload, or JSON with server paths / URLs)")
async def submit(request: Request, svc: ApiServices = Depends(services)):
    tenant = tenant_of(request)
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    await svc.intake.admit(tenant)
    job_id = svc.intake.new_job_id()
    reserved = False
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            sub, what = await _multipart(svc, request, job_id, tenant)
        else:
            sub, what = await _json(svc, request, job_id, tenant)
        if key is not None:
            fp = await svc.intake.io.run(idempotency.fingerprint, what["options"], what["files"])
            earlier = await svc.intake.idempotency.reserve(tenant.name, key, fp, job_id)
            if earlier is not None:  # a replay: the first job, nothing new
                await svc.intake.discard(job_id)
                rec = await svc.store.get(earlier)
                if rec is None:
                    raise ResultNotReadyError(f"the request with Idempotency-Key {key!r} is still being taken in")
                return JSONResponse(await job_view(svc, rec, tenant), status_code=200,
                                    headers={"Location": f"/v1/jobs/{rec.id}", "Idempotent-Replayed": "true"})
            reserved = True
        rec = await svc.intake.enqueue(sub, job_id)
    except ValidationError as exc:
        await _undo(svc, job_id, tenant, key if reserved else None)
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) or str(exc)
        return error_response(InvalidParameterError(f"invalid request: {msg}"))
    except LipserveError as err:
        await _undo(svc, job_id, tenant, key if reserved else None)
        svc.intake.rejected(err)
        raise
    except BaseException:
        await _undo(svc, job_id, tenant, key if reserved else None)
        raise
    return JSONResponse(await job_view(svc, rec, tenant), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


async def _undo(svc: ApiServices, job_id: str, tenant: Tenant, key: str | None) -> None:
    await svc.intake.discard(job_id)
    if key is not None:
        await svc.intake.idempotency.release(tenant.name, key)


@router.get("", response_model=JobList, response_model_exclude_unset=True, responses=responses(401), summary="List jobs, newest first")
async def list_jobs(request: Request, status: JobStatus | None = None, limit: int = Query(100, ge=1, le=1000),
                    offset: int = Query(0, ge=0, le=10**9), svc: ApiServices = Depends(services)):
    tenant = tenant_of(request)
    recs = await svc.store.list(status, limit, offset, tenant=None if tenant.is_admin else tenant.name)
    return {"jobs": [r.to_api(admin=tenant.is_admin) for r in recs], "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=JobView, response_model_exclude_unset=True, responses=responses(401, 404),
            summary="Job status, progress, stage, error, attempts, timings, webhook delivery")
async def get_job(job_id: str, request: Request, svc: ApiServices = Depends(services)):
    tenant = tenant_of(request)
    return await job_view(svc, await job_or_404(svc, job_id, tenant), tenant)


@router.get("/{job_id}/result", response_class=MediaFileResponse, responses=responses(401, 404, 409, 410),
            summary="The finished video (video/mp4); 410 once retention removed it")
async def get_result(job_id: str, request: Request, svc: ApiServices = Depends(services)):
    rec = await job_or_404(svc, job_id, tenant_of(request))
    if rec.expired_at is not None:
        raise ResultExpiredError(f"the result of job {job_id} has expired (retention.result_ttl_s) and was removed")
    if rec.status != JobStatus.SUCCEEDED or not rec.result_path or not os.path.exists(rec.result_path):
        err = ResultNotReadyError(f"job {job_id} is {rec.status}; no result")
        err.retryable = rec.status not in TERMINAL
        raise err
    return MediaFileResponse(rec.result_path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.get("/{job_id}/events", responses=responses(401, 404, 429),
            summary="Server-Sent Events: `progress` events, then one `final` event with the job")
async def events(job_id: str, request: Request, svc: ApiServices = Depends(services)):
    tenant = tenant_of(request)
    await job_or_404(svc, job_id, tenant)
    client = f"{tenant.name}@{request.client.host if request.client else '?'}"
    slot = svc.watchers.client_slot(client)
    slot.__enter__()  # raises 429 here, before the response starts

    async def stream():
        try:
            async for event in svc.watchers.stream(job_id, lambda r: r.to_api(admin=tenant.is_admin)):
                yield event
        finally:
            slot.__exit__(None, None, None)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.delete("/{job_id}", response_model=JobView, response_model_exclude_unset=True, responses=responses(401, 404),
                summary="Cancel a job")
async def cancel(job_id: str, request: Request, svc: ApiServices = Depends(services)):
    tenant = tenant_of(request)
    before = await job_or_404(svc, job_id, tenant)
    rec = await svc.store.cancel(job_id)
    if rec.status == JobStatus.CANCELLED and before.status == JobStatus.QUEUED:
        # A job that is not running has no owner to clean up after it: drop its inputs here.
        # A running job's owner sees the cancel on its next heartbeat and cleans up itself.
        await svc.intake.discard(job_id)
    return await job_view(svc, rec, tenant)
