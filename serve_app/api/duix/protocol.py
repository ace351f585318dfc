"""The Duix/HeyGem-compatible API: ``POST /easy/submit`` and ``GET /easy/query``, so that existing
Duix.Heygem clients (the Electron app, the Go API service, ComfyUI nodes, proxies) work unchanged.
The protocol is described in the Duix reference (``/easy`` prefix, ``{code, data, msg, success}``
envelope); this package maps it onto lipserve's durable jobs: ``protocol.py`` (this file: the wire
format and its rules), ``service.py`` (submit / query over ``JobIntake`` and the store), ``routes.py``.
Settings: ``LipserveArgs.duix`` (``serve_app/config.py``).

Behaviour and the choices made where the original's behaviour cannot or should not be copied:

* **Shared volume.** ``duix.data_dir`` plays the original's ``/code/data`` (default
  ``<storage_dir>/duix``). A bare or relative name resolves under ``<data_dir>/temp`` (``"x.wav"``,
  ``"../characters/x.mp4"``); an absolute path is used as it is, except that a ``/code/data/...``
  path that does not exist here is looked up under ``data_dir`` (clients that hard-code the
  original mount); ``http(s)://`` URLs are downloaded with the native API's SSRF-safe fetcher.
  Local inputs must lie under ``data_dir`` (or ``jobs.input_roots``) once symlinks and ``..`` are
  resolved, checked before anything tests that they exist (10002 otherwise); they are hard-linked
  (else copied) into the job at submission, so a later change of the shared file changes nothing.
* **Body.** Parsed as JSON whatever the Content-Type says; a genuinely form-encoded body
  (``a=1&b=2``) is accepted too. Unknown keys are ignored. ``audio_url``, ``video_url``, ``code``
  are required and non-empty, checked in that order (``10002``, ``"<field>参数缺失"``).
  ``pn`` (ping-pong) is 1 when missing or empty, else ``str(v) == "1"`` (exactly the original's
  rule: ``0``, ``"0"``, ``true`` mean loop). ``watermark_switch``, ``digital_auth`` and ``chaofen``
  are normalised the same way (1 iff ``str(v) == "1"``) and recorded in the job's
  ``params["duix"]``, but have no effect: lipserve adds no watermark and does no super-resolution.
* **Tenants.** When API keys are configured the Duix routes take the same ``Authorization: Bearer``
  key, unless ``duix.auth: none`` (a legacy client on a private network only; its tasks belong to
  the default tenant). Codes are scoped to the tenant: another tenant's code is unknown (10004).
* **Task id.** The client's ``code`` is the job id (``<tenant>~<code>`` for a tenant other than the
  default one), so ``GET /v1/jobs/{id}`` (and ``/events``, ``/result``, ``DELETE``) work on Duix tasks too. It must match ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``
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
  query answers ``10004``. The code stays used (a tombstone): a new submit with it answers 10003.
  Default off: the task stays queryable.
* ``duix.enabled: false`` makes both routes answer 404.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

from actors.media.atomic import publish_link
from serve_app.jobs.records import JobRecord

if TYPE_CHECKING:
    from serve_app.config import LipserveArgs

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

STAGE_TEXT = {
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


def job_id_for(tenant: str, code: str) -> str:
    """The job id of a Duix task: the code itself for the default tenant (auth off, or
    ``duix.auth: none``), else ``<tenant>~<code>`` so that two tenants' codes never meet."""
    from serve_app.jobs.records import DEFAULT_TENANT

    return code if tenant == DEFAULT_TENANT else f"{tenant}~{code}"


def resolve_source(value: str, root: Path) -> str:
    """A client's ``audio_url``/``video_url`` as a URL or an absolute server path (not yet confined:
    the caller confines it to the data root, before anything checks that it exists)."""
    if value.lower().startswith(("http://", "https://")):
        return value
    path = Path(value)
    if not path.is_absolute():
        return os.path.normpath(root / "temp" / path)
    if root != ORIGINAL_ROOT and path.is_relative_to(ORIGINAL_ROOT):
        # Clients that hard-code the original mount: the same file under this data root. Mapped
        # by name only (no existence test, which would tell a caller what the server holds).
        return str(root / path.relative_to(ORIGINAL_ROOT))
    return str(path)


def _same_task(rec: JobRecord, duix: dict[str, Any]) -> bool:
    prev = rec.meta.get("duix")
    return isinstance(prev, dict) and all(prev.get(k) == duix[k] for k in ("audio_url", "video_url", "pn"))


def resubmit_reply(rec: JobRecord | None, duix: dict[str, Any]) -> JSONResponse:
    if rec is not None and _same_task(rec, duix):
        return reply(OK, True, OK)  # idempotent re-submit: the one task
    return reply(LOCK_ERROR, False,
                 f"任务{duix['code']}已存在: code {duix['code']!r} is already used by a task with other inputs")


def remove_staging(staging: Path | None) -> None:
    """Drop a failed submission's downloads; the job directory too if nothing else is in it."""
    if staging is None:
        return
    shutil.rmtree(staging, ignore_errors=True)
    for d in (staging.parent, staging.parent.parent):  # jobs/<code>/inputs, jobs/<code>
        try:
            d.rmdir()
        except OSError:  # not empty: another submission of this code uses it
            break


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
        publish_link(rec.result_path, dest)  # a hard link when it can, renamed into place
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
