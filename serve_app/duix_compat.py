"""The Duix/HeyGem-compatible API: ``POST /easy/submit`` and ``GET /easy/query``, so that existing
Duix.Heygem clients (the Electron app, the Go API service, ComfyUI nodes, proxies) work unchanged.
The protocol is described in the Duix reference (``/easy`` prefix, ``{code, data, msg, success}``
envelope); this module maps it onto lipserve's durable jobs. Routes: ``serve_app/ingress.py``
(``build_api``); settings: ``LipserveArgs.duix`` (``serve_app/config.py``).

Behaviour and the choices made where the original's behaviour cannot or should not be copied:

* **Shared volume.** ``duix.data_dir`` plays the original's ``/code/data`` (default
  ``<storage_dir>/duix``). A bare or relative name resolves under ``<data_dir>/temp`` (``"x.wav"``,
  ``"../characters/x.mp4"``); an absolute path is used as it is, except that a ``/code/data/...``
  path that does not exist here is looked up under ``data_dir`` (clients that hard-code the
  original mount); ``http(s)://`` URLs are downloaded with the native API's fetcher. Local inputs
  are read in place, as the native JSON API does.
* **Body.** Parsed as JSON whatever the Content-Type says; a genuinely form-encoded body
  (``a=1&b=2``) is accepted too. Unknown keys are ignored. ``audio_url``, ``video_url``, ``code``
  are required and non-empty, checked in that order (``10002``, ``"<field>参数缺失"``).
  ``pn`` (ping-pong) is 1 when missing or empty, else ``str(v) == "1"`` (exactly the original's
  rule: ``0``, ``"0"``, ``true`` mean loop). ``watermark_switch``, ``digital_auth`` and ``chaofen``
  are normalised the same way (1 iff ``str(v) == "1"``) and recorded in the job's
  ``params["duix"]``, but have no effect: lipserve adds no watermark and does no super-resolution.
* **Task id.** The client's ``code`` is the job id, so ``GET /v1/jobs/{code}`` (and ``/events``,
  ``/result``, ``DELETE``) work on Duix tasks too. It must match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``
  (UUIDs do; it names files and directories), else ``10002``.
* **Duplicate code.** A re-submit of a code whose task has the same ``audio_url``, ``video_url`` and
  ``pn`` is idempotent: it answers ``10000`` again and creates nothing (a client that retries a
  submit whose reply it lost gets the one task). A code already used with different inputs, or by
  a native job, answers ``10003`` (the original's lock-conflict code). To render again, use a new
  code (every known client makes a fresh UUID per task).
* **Never busy.** The original answers ``10001`` while any task runs; clients treat that as failure
  or poll forever. Here a task is queued (durable queue, priority 0) and ``10000`` is answered. Only
  when the queue is at ``jobs.max_queued_jobs`` is a submit refused: HTTP **429** with
  ``Retry-After`` and the envelope ``{"code": 9999, "success": false, "msg": "队列已满 ..."}``. 9999
  is the code every client treats as a definite failure (10001 would make some of them poll for a
  task that does not exist), and the 429 tells HTTP-aware callers and gateways to back off.
* **Input errors at submission.** The inputs are checked as the native API checks them (files
  exist or download, audio decodes, the template has a video stream, size and duration limits) and
  a typed ``InputError`` answers ``10002`` (the "your parameters are wrong" code) with the typed
  message as ``msg`` (it names the file and the reason), HTTP 200 as the original. Anything else
  unexpected answers ``9999`` with ``msg "系统异常: <reason>"``. No task is created, so a later query
  answers ``10004``. Errors found while rendering (e.g. no face in the template) surface at query
  time as ``status 3``.
* **Query.** Unknown code: ``10004``. Queued/running: ``status 1``, ``progress`` 0–99 (integer
  percent), ``msg`` a stage text ("排队中 (queued)", "视频合成中 (generate_write)", ...).
  Succeeded: ``status 2``, ``progress 100``, ``result "/{code}-r.mp4"``, ``msg "任务完成"``,
  ``cost`` (seconds of processing, first claim to finish), ``video_duration`` (s), ``width``,
  ``height``. Failed or cancelled: ``status 3``, ``progress 0``, ``msg`` the typed error message.
* **Result file.** Clients read ``<data_dir>/temp/{code}-r.mp4`` from the shared volume. It is
  published on the query that first sees the job succeeded (the pipeline does not know about Duix):
  a hard link to ``results/{code}.mp4`` (a copy across file systems) made under a temporary name
  and renamed into place, so a client never sees a partial file. It is published again if a client
  moved it away and queries again, or if the file there is a stale one from an earlier task with
  the same code. If the result cannot be published the reply is ``status 3``.
* **Forgetting.** With ``duix.delete_after_report`` the record (and ``results/{code}.mp4``; the
  published copy stays) is deleted after the first terminal reply, as the original does; a later
  query answers ``10004``. Default off: the task stays queryable.
* ``duix.enabled: false`` makes both routes answer 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import urllib.parse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from actors.errors import InputError, LipserveError, UnreadableFileError
from serve_app.job_store import ACTIVE, SUCCEEDED, DuplicateJobError, JobRecord, normalize_error

if TYPE_CHECKING:
    from serve_app.config import LipserveArgs
    from serve_app.ingress import IngressServer

log = logging.getLogger("lipserve.duix")

# Envelope codes of the original server.
OK = 10000
BUSY = 10001  # never sent: lipserve queues instead
MISSING_PARAM = 10002
LOCK_ERROR = 10003
NOT_FOUND = 10004
SYSTEM_ERROR = 9999

# data.status of a query reply.
PENDING, DONE, ERROR = 1, 2, 3

REQUIRED = ("audio_url", "video_url", "code")
FLAGS = ("watermark_switch", "digital_auth", "chaofen")
ORIGINAL_ROOT = Path("/code/data")  # the original container's data volume
CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")

_STAGE_TEXT = {
    "audio": "音频处理中",
    "avatar": "形象处理中",
    "generate_write": "视频合成中",
    "finalize": "视频封装中",
}


# ---------------------------------------------------------------------------------------- helpers

def data_dir(args: "LipserveArgs") -> Path:
    """The Duix data volume (the original's ``/code/data``)."""
    return Path(args.duix.data_dir or os.path.join(args.storage_dir, "duix"))


def temp_dir(args: "LipserveArgs") -> Path:
    """Where relative inputs resolve and results are published (the original's ``/code/data/temp``)."""
    d = data_dir(args) / "temp"
    d.mkdir(parents=True, exist_ok=True)
    return d


def reply(code: int, success: bool, msg: Any, data: dict | None = None, status: int = 200,
          headers: dict | None = None) -> JSONResponse:
    """The original's envelope: ``{"code", "data", "msg", "success"}``."""
    return JSONResponse({"code": code, "data": data or {}, "msg": msg, "success": success},
                        status_code=status, headers=headers)


def _not_enabled() -> JSONResponse:
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The body as a dict: JSON whatever the Content-Type says, or a form-encoded ``a=1&b=2``."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"body is not UTF-8: {exc}") from exc
    if not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if "=" in text and not text.lstrip().startswith(("{", "[")):
            return {k: v[-1] for k, v in urllib.parse.parse_qs(text, keep_blank_values=True).items()}
        raise ValueError(f"body is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"body is JSON but not an object ({type(obj).__name__})")
    return obj


def flag(value: Any) -> int:
    """The original's rule for switches: 1 iff ``str(v) == "1"``."""
    return int(value is not None and str(value) == "1")


def pingpong(value: Any) -> bool:
    """``pn``: ping-pong when missing or empty, else only if ``str(v) == "1"``."""
    if value is None or str(value).strip() == "":
        return True
    return str(value) == "1"


def resolve_source(value: str, root: Path) -> str:
    """A client's ``audio_url``/``video_url`` as a URL or an absolute server path."""
    if value.lower().startswith(("http://", "https://")):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        return os.path.normpath(root / "temp" / path)
    if not path.exists() and root != ORIGINAL_ROOT:
        try:
            alt = root / path.relative_to(ORIGINAL_ROOT)
        except ValueError:
            alt = None
        if alt is not None and alt.exists():
            return str(alt)
    return str(path)


def _same_task(rec: JobRecord, duix: dict[str, Any]) -> bool:
    prev = rec.params.get("duix")
    return isinstance(prev, dict) and all(prev.get(k) == duix[k] for k in ("audio_url", "video_url", "pn"))


def _resubmit_reply(rec: JobRecord | None, duix: dict[str, Any]) -> JSONResponse:
    if rec is not None and _same_task(rec, duix):
        return reply(OK, True, OK)  # idempotent re-submit: the one task
    return reply(LOCK_ERROR, False,
                 f"任务{duix['code']}已存在: code {duix['code']!r} is already used by a task with other inputs")


def _remove_staging(staging: Path | None) -> None:
    """Drop a failed submission's downloads; the job directory too if nothing else is in it."""
    if staging is None:
        return
    shutil.rmtree(staging, ignore_errors=True)
    for d in (staging.parent, staging.parent.parent):  # jobs/<code>/inputs, jobs/<code>
        try:
            d.rmdir()
        except OSError:  # not empty: another submission of this code uses it
            break


# ---------------------------------------------------------------------------------------- submit

async def submit(srv: "IngressServer", request: Request) -> JSONResponse:
    if not srv.args.duix.enabled:
        return _not_enabled()
    try:
        body = parse_body(await request.body())
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

    existing = await srv._db(srv.store.get, code)
    if existing is not None:
        return _resubmit_reply(existing, duix)
    full = await srv._queue_full()
    if full is not None:
        return reply(SYSTEM_ERROR, False, f"队列已满: {full}", status=429,
                     headers={"Retry-After": str(srv.args.jobs.retry_after_s)})

    staging: Path | None = None
    try:
        root = data_dir(srv.args)
        display = {"audio": duix["audio_url"], "video": duix["video_url"]}
        paths: dict[str, Path] = {}
        for field in ("audio", "video"):
            source = resolve_source(display[field], root)
            if source.lower().startswith(("http://", "https://")):
                if staging is None:
                    staging = srv.storage.inputs_dir(code) / f"duix-{uuid.uuid4().hex}"
                    staging.mkdir(parents=True)
                paths[field] = await srv._fetch(source, staging, field)
            elif os.path.isfile(source):
                paths[field] = Path(source).resolve()
            else:
                raise UnreadableFileError(f"no such file on the server (looked for {source})",
                                          path=display[field])
        await srv._io(srv._validate_media, paths["audio"], paths["video"], display)
        params = {"audio_path": str(paths["audio"]), "video_path": str(paths["video"]),
                  "pingpong": bool(duix["pn"]), "box": None, "backend": srv.args.generator.backend,
                  "inputs": display, "avatar_id": None, "duix": duix}
        await srv._enqueue(params, priority=0, job_id=code)
    except DuplicateJobError:  # a concurrent submit of the same code won the race
        _remove_staging(staging)
        return _resubmit_reply(await srv._db(srv.store.get, code), duix)
    except InputError as err:
        _remove_staging(staging)
        if srv.metrics:
            srv.metrics.rejected.inc(tags={"reason": err.code.value})
        return reply(MISSING_PARAM, False, err.message)
    except LipserveError as err:
        _remove_staging(staging)
        return reply(SYSTEM_ERROR, False, f"系统异常: {err.message}")
    except Exception as exc:  # noqa: BLE001 - the original's catch-all reply
        _remove_staging(staging)
        log.exception("duix submit %s failed", code)
        return reply(SYSTEM_ERROR, False, f"系统异常: {type(exc).__name__}: {exc}")
    log.info("duix task %s queued (audio %s, video %s, pn %s)", code, duix["audio_url"], duix["video_url"],
             duix["pn"])
    return reply(OK, True, OK)


# ---------------------------------------------------------------------------------------- query

def _stage_text(rec: JobRecord) -> str:
    if rec.status == "queued":
        if rec.error:  # waiting for a retry after a failed attempt
            return f"重试排队中 (queued for retry after: {normalize_error(rec.error)['message']})"
        return "排队中 (queued)"
    stage = rec.stage or "queued"
    return f"{_STAGE_TEXT.get(stage, '处理中')} ({stage})"


def _needs_publishing(dest: Path, rec: JobRecord) -> bool:
    """Missing, or a stale file of an earlier task that used the same code (older than this result
    and not a link to it)."""
    if not dest.is_file():
        return True
    if not rec.result_path or not os.path.isfile(rec.result_path):
        return False  # lipserve's copy is gone: the published file is all there is
    if os.path.samefile(dest, rec.result_path):
        return False
    return dest.stat().st_mtime < (rec.finished_at or 0.0)


def publish_result(rec: JobRecord, temp: Path) -> dict[str, Any]:
    """Make ``<temp>/{code}-r.mp4`` exist (atomically) and describe it."""
    import av

    dest = temp / f"{rec.id}-r.mp4"
    if _needs_publishing(dest, rec):
        if not rec.result_path or not os.path.isfile(rec.result_path):
            raise FileNotFoundError(f"the result of task {rec.id} is no longer on the server")
        tmp = temp / f".{rec.id}-r.{uuid.uuid4().hex}.partial"
        try:
            try:
                os.link(rec.result_path, tmp)  # same file system: no copy
            except OSError:
                shutil.copyfile(rec.result_path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    with av.open(str(dest)) as c:
        v = c.streams.video[0]
        if c.duration is not None:
            duration = c.duration / av.time_base
        elif v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        else:
            duration = 0.0
        return {"video_duration": round(float(duration), 3), "width": v.codec_context.width,
                "height": v.codec_context.height}


def _forget(srv: "IngressServer", rec: JobRecord) -> None:
    """``delete_after_report``: drop the record and lipserve's copy of the result."""
    srv.store.delete(rec.id)
    if rec.result_path:
        Path(rec.result_path).unlink(missing_ok=True)
    srv.storage.remove_job_work(rec.id)


async def query(srv: "IngressServer", code: str | None) -> JSONResponse:
    if not srv.args.duix.enabled:
        return _not_enabled()
    code = (code or "").strip()
    if not code:
        return reply(MISSING_PARAM, False, "code参数缺失")
    rec = await srv._db(srv.store.get, code)
    if rec is None:
        return reply(NOT_FOUND, True, "任务不存在")
    if rec.status in ACTIVE:
        progress = min(99, max(0, int(rec.progress * 100)))
        return reply(OK, True, "", {"code": code, "status": PENDING, "progress": progress, "result": "",
                                    "msg": _stage_text(rec)})
    if rec.status == SUCCEEDED:
        try:
            info = await asyncio.to_thread(publish_result, rec, temp_dir(srv.args))
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
        err = normalize_error(rec.error) or {"message": f"task {rec.status}"}
        data = {"code": code, "status": ERROR, "progress": 0, "result": "", "msg": err["message"]}
    if srv.args.duix.delete_after_report:
        await asyncio.to_thread(_forget, srv, rec)
    return reply(OK, True, "", data)
