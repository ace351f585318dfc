"""``/v1/jobs``: submit, list, get, result, events (SSE), cancel."""

from __future__ import annotations

import asyncio
import json
import os

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from actors.errors import InvalidParameterError, LipserveError, MediaTooLargeError, NotFoundError, ResultNotReadyError
from serve_app.api.errors import error_response, responses
from serve_app.api.intake import Submission
from serve_app.api.schemas import JobList, JobSubmission, JobView
from serve_app.api.services import ApiServices, services
from serve_app.jobs.records import TERMINAL, JobRecord, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_TRUE = ("1", "true", "yes", "on")


async def job_or_404(svc: ApiServices, job_id: str) -> JobRecord:
    rec = await svc.store.get(job_id)
    if rec is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return rec


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


async def _multipart(svc: ApiServices, request: Request, job_id: str) -> Submission:
    form = await request.form(max_files=2, max_fields=16)
    fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
    if not isinstance(form.get("audio"), UploadFile):
        raise InvalidParameterError("multipart field 'audio' (a file) is required")
    priority = _int(fields.get("priority"), "priority")
    JobSubmission.model_validate({"audio": "upload", "priority": priority})  # same bounds as JSON
    inputs = svc.intake.inputs_dir(job_id)
    audio = await svc.intake.save_upload(form["audio"], inputs, "audio")
    if isinstance(form.get("video"), UploadFile):
        video = await svc.intake.save_upload(form["video"], inputs, "video")
        avatar_id = None
    elif fields.get("avatar_id"):
        avatar_id = str(fields["avatar_id"])
        video = svc.intake.avatar(avatar_id)
    else:
        raise InvalidParameterError("a template is required: 'video' or 'avatar_id'")
    return Submission(audio=audio, video=video, backend=fields.get("backend") or None,
                      pingpong=str(fields.get("pingpong", "true")).lower() in _TRUE, priority=priority,
                      box=_box(fields.get("box")), meta={"avatar_id": avatar_id} if avatar_id else {})


async def _json(svc: ApiServices, request: Request, job_id: str) -> Submission:
    try:
        body = json.loads(await request.body() or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"request body is not JSON or multipart: {exc}") from exc
    req = JobSubmission.model_validate(body)
    inputs, roots = svc.intake.inputs_dir(job_id), svc.args.jobs.input_roots
    audio = await svc.intake.acquire(req.audio, inputs, "audio", roots)
    if req.video:
        video = await svc.intake.acquire(req.video, inputs, "video", roots)
    elif req.avatar_id:
        video = svc.intake.avatar(req.avatar_id)
    else:
        raise InvalidParameterError("a template is required: 'video' or 'avatar_id'")
    return Submission(audio=audio, video=video, backend=req.backend, pingpong=req.pingpong, priority=req.priority,
                      box=tuple(req.box) if req.box else None,
                      meta={"avatar_id": req.avatar_id} if req.avatar_id else {})


@router.post("", status_code=202, response_model=JobView, responses=responses(413, 422, 429, 500),
             summary="Submit a job (multipart upload, or JSON with server paths / URLs)")
async def submit(request: Request, svc: ApiServices = Depends(services)):
    await svc.intake.admit()
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > 2 * svc.args.jobs.max_upload_bytes + (1 << 20):
        raise MediaTooLargeError(f"request body of {length} bytes is over the upload limit", path="request")
    job_id = svc.intake.new_job_id()
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            sub = await _multipart(svc, request, job_id)
        else:
            sub = await _json(svc, request, job_id)
        rec = await svc.intake.enqueue(sub, job_id)
    except ValidationError as exc:
        await svc.intake.discard(job_id)
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()) or str(exc)
        return error_response(InvalidParameterError(f"invalid request: {msg}"))
    except LipserveError as err:
        await svc.intake.discard(job_id)
        svc.intake.rejected(err)
        raise
    except BaseException:
        await svc.intake.discard(job_id)
        raise
    return JSONResponse(rec.to_api(), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.get("", response_model=JobList, responses=responses(422), summary="List jobs, newest first")
async def list_jobs(status: JobStatus | None = None, limit: int = Query(100, ge=1, le=1000),
                    offset: int = Query(0, ge=0, le=10**9), svc: ApiServices = Depends(services)):
    return {"jobs": [r.to_api() for r in await svc.store.list(status, limit, offset)]}


@router.get("/{job_id}", response_model=JobView, responses=responses(404),
            summary="Job status, progress, stage, error, attempts, timings")
async def get_job(job_id: str, svc: ApiServices = Depends(services)):
    return (await job_or_404(svc, job_id)).to_api()


@router.get("/{job_id}/result", response_class=FileResponse, responses=responses(404, 409),
            summary="The finished video (video/mp4)")
async def get_result(job_id: str, svc: ApiServices = Depends(services)):
    rec = await job_or_404(svc, job_id)
    if rec.status != JobStatus.SUCCEEDED or not rec.result_path or not os.path.exists(rec.result_path):
        err = ResultNotReadyError(f"job {job_id} is {rec.status}; no result")
        err.retryable = rec.status not in TERMINAL
        raise err
    return FileResponse(rec.result_path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.get("/{job_id}/events", responses=responses(404),
            summary="Server-Sent Events: `progress` events, then one `final` event with the job")
async def events(job_id: str, svc: ApiServices = Depends(services)):
    await job_or_404(svc, job_id)

    async def stream():
        last = None
        while True:
            rec = await svc.store.get(job_id)
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


@router.delete("/{job_id}", response_model=JobView, responses=responses(404), summary="Cancel a job")
async def cancel(job_id: str, svc: ApiServices = Depends(services)):
    before = await job_or_404(svc, job_id)
    rec = await svc.store.cancel(job_id)
    if rec.status == JobStatus.CANCELLED and before.status == JobStatus.QUEUED:
        # A job that is not running has no owner to clean up after it: drop its inputs here.
        # A running job's owner sees the cancel on its next heartbeat and cleans up itself.
        await svc.intake.discard(job_id)
    return rec.to_api()
