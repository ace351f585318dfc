"""The Duix/HeyGem task service: ``submit`` and ``query`` over ``JobIntake`` and the job store. The
wire format and every rule of the protocol are in ``protocol.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import uuid
from pathlib import Path

from fastapi.responses import JSONResponse

from actors.errors import InputError, InsufficientStorageError, LipserveError, QueueFullError
from serve_app.api.auth import ANONYMOUS, Tenant
from serve_app.api.duix.protocol import (
    CODE_RE, DONE, ERROR, FLAGS, LOCK_ERROR, MISSING_PARAM, NOT_FOUND, OK, PENDING, REQUIRED, STAGE_TEXT,
    SYSTEM_ERROR, data_dir, flag, job_id_for, parse_body, pingpong, publish_result, remove_staging, reply,
    resolve_source, resubmit_reply, temp_dir,
)
from serve_app.api.inputs import is_url
from serve_app.api.intake import Input, Submission
from serve_app.api.services import ApiServices
from serve_app.jobs.outbox import key_scope
from serve_app.jobs.records import ACTIVE, JobRecord, JobStatus
from serve_app.jobs.store import DuplicateJobError

FOREVER = math.inf  # a used code stays used


def _fingerprint(duix: dict) -> str:
    return hashlib.sha256(json.dumps([duix["audio_url"], duix["video_url"], duix["pn"]]).encode()).hexdigest()

log = logging.getLogger("lipserve.duix")


# ---------------------------------------------------------------------------------------- submit

async def submit(svc: ApiServices, raw_body: bytes, tenant: Tenant = ANONYMOUS) -> JSONResponse:
    try:
        body = parse_body(raw_body)
    except ValueError as exc:
        return reply(MISSING_PARAM, False, f"请求体无法解析: {exc}")
    values: dict[str, str] = {}
    for name in REQUIRED:
        v = body.get(name)
        v = "" if v is None else str(v).strip()
        if not v:
            return reply(MISSING_PARAM, False, f"{name}参数缺失")
        values[name] = v
    code = values["code"]
    if not CODE_RE.fullmatch(code):
        return reply(MISSING_PARAM, False,
                     f"code参数非法: {code!r} must be 1-128 characters of A-Z a-z 0-9 _ . - "
                     "starting with a letter or digit")
    duix = {"code": code, "audio_url": values["audio_url"], "video_url": values["video_url"],
            "pn": int(pingpong(body.get("pn"))), **{k: flag(body.get(k)) for k in FLAGS}}

    job_id = job_id_for(tenant.name, code)
    existing = await svc.store.get(job_id)
    if existing is not None:
        return resubmit_reply(existing, duix)
    try:
        await svc.intake.admit(tenant)
    except (QueueFullError, InsufficientStorageError) as full:
        return reply(SYSTEM_ERROR, False, f"队列已满: {full.message}", status=429,
                     headers={"Retry-After": str(getattr(full, "retry_after", None) or svc.args.jobs.retry_after_s)})
    # The code is taken for good (a tombstone that outlives delete_after_report): reserve it first.
    scope = key_scope(tenant.name, "duix", code)
    taken = await svc.store.reserve_key(scope, _fingerprint(duix), job_id, FOREVER)
    if taken is not None:
        rec = await svc.store.get(job_id)
        if rec is not None:
            return resubmit_reply(rec, duix)
        return reply(LOCK_ERROR, False, f"任务{code}已存在: code {code!r} was already used; use a new code")

    staging: Path | None = None
    try:
        root = data_dir(svc.args)
        roots = [str(root), *(svc.args.jobs.input_roots or [])]
        display = {"audio": duix["audio_url"], "video": duix["video_url"]}
        inputs: dict[str, Input] = {}
        staging = svc.intake.inputs_dir(job_id) / f"duix-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        for field in ("audio", "video"):
            source = resolve_source(display[field], root)
            if is_url(source):
                fetched = await svc.intake.fetch_url(source, staging, field)
                inputs[field] = Input(fetched.path, display[field])
            else:  # confined to the data root (+ input_roots) after resolving symlinks, then linked in
                linked = await svc.intake.acquire(source, staging, field, roots, what="the Duix data dir")
                inputs[field] = Input(linked.path, display[field])
        await svc.intake.enqueue(Submission(audio=inputs["audio"], video=inputs["video"], pingpong=bool(duix["pn"]),
                                            meta={"duix": duix}, tenant=tenant), job_id=job_id)
    except DuplicateJobError:  # a concurrent submit of the same code won the race
        remove_staging(staging)
        return resubmit_reply(await svc.store.get(job_id), duix)
    except InputError as err:
        remove_staging(staging)
        await svc.store.release_key(scope)  # no task was created: the code may be used again
        svc.intake.rejected(err)
        return reply(MISSING_PARAM, False, err.message)
    except LipserveError as err:
        remove_staging(staging)
        await svc.store.release_key(scope)
        return reply(SYSTEM_ERROR, False, f"系统异常: {err.message}")
    except Exception as exc:  # noqa: BLE001 - the original's catch-all reply
        remove_staging(staging)
        await svc.store.release_key(scope)
        log.exception("duix submit %s failed", code)
        return reply(SYSTEM_ERROR, False, f"系统异常: {type(exc).__name__}")
    log.info("duix task %s queued (audio %s, video %s, pn %s)", code, duix["audio_url"], duix["video_url"],
             duix["pn"])
    return reply(OK, True, OK)


# ---------------------------------------------------------------------------------------- query

def _stage_text(rec: JobRecord) -> str:
    if rec.status == JobStatus.QUEUED:
        if rec.error:  # waiting for a retry after a failed attempt
            return f"重试排队中 (queued for retry after: {rec.error.message})"
        return "排队中 (queued)"
    stage = rec.stage or "queued"
    return f"{STAGE_TEXT.get(stage, '处理中')} ({stage})"


def _forget(svc: ApiServices, rec: JobRecord) -> None:
    """``delete_after_report``: drop the record and lipserve's copy of the result; the code stays
    used (its tombstone in the request keys)."""
    duix = rec.meta.get("duix") if isinstance(rec.meta.get("duix"), dict) else {}
    if duix.get("code"):
        svc.store.sync.reserve_key(key_scope(rec.tenant, "duix", duix["code"]), _fingerprint(duix), rec.id, FOREVER)
    svc.store.sync.delete(rec.id)
    if rec.result_path:
        Path(rec.result_path).unlink(missing_ok=True)
    svc.storage.remove_job_work(rec.id)


async def query(svc: ApiServices, code: str | None, tenant: Tenant = ANONYMOUS) -> JSONResponse:
    code = (code or "").strip()
    if not code:
        return reply(MISSING_PARAM, False, "code参数缺失")
    rec = await svc.store.get(job_id_for(tenant.name, code)) if CODE_RE.fullmatch(code) else None
    if rec is None or rec.tenant != tenant.name:
        return reply(NOT_FOUND, True, "任务不存在")
    if rec.status in ACTIVE:
        progress = min(99, max(0, int(rec.progress * 100)))
        return reply(OK, True, "", {"code": code, "status": PENDING, "progress": progress, "result": "",
                                    "msg": _stage_text(rec)})
    if rec.status == JobStatus.SUCCEEDED:
        try:
            info = await asyncio.to_thread(publish_result, rec, temp_dir(svc.args))
        except Exception as exc:  # noqa: BLE001 - reported to the client as a failed task
            log.warning("duix task %s: cannot publish its result: %s", code, exc)
            data = {"code": code, "status": ERROR, "progress": 0, "result": "",
                    "msg": f"结果不可用: {type(exc).__name__}: {exc}"}
        else:
            start = rec.started_at if rec.started_at is not None else rec.created_at
            cost = round(max(0.0, (rec.finished_at or rec.updated_at) - start), 3)
            data = {"code": code, "status": DONE, "progress": 100, "result": f"/{code}-r.mp4",
                    "msg": "任务完成", "cost": cost, **info}
    else:  # failed or cancelled
        message = rec.error.message if rec.error else f"task {rec.status}"
        data = {"code": code, "status": ERROR, "progress": 0, "result": "", "msg": message}
    if svc.args.duix.delete_after_report:
        await asyncio.to_thread(_forget, svc, rec)
    return reply(OK, True, "", data)
