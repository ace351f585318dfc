"""The Duix/HeyGem-compatible API (``POST /easy/submit``, ``GET /easy/query``) over real HTTP on a
real local Ray cluster, driven the way existing clients drive it: relative names under the shared
``temp`` dir, JSON bodies with and without a JSON Content-Type, polling until ``data.status`` is 2/3,
the result read from ``<data_dir>/temp/{code}-r.mp4``. The behaviour choices are documented in
``serve_app/api/duix/``."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path

import av
import httpx
import pytest
from ray import serve

from serve_app.api.duix.protocol import parse_body, pingpong, publish_result, resolve_source
from serve_app.jobs.records import JobRecord
from tests.media import ASSETS, speech_like, synthetic_frames, write_audio, write_video
from tests.service.harness import Client, deploy, small_args, wait_until

ACCEPTED = {"code": 10000, "data": {}, "msg": 10000, "success": True}
UNKNOWN = {"code": 10004, "data": {}, "msg": "任务不存在", "success": True}


def prepare_data_dir(root: Path) -> Path:
    """The shared volume as Duix clients fill it: speech in temp/, the template in characters/."""
    (root / "temp").mkdir(parents=True)
    (root / "characters").mkdir()
    shutil.copy(ASSETS / "demo_speech.wav", root / "temp" / "x.wav")
    shutil.copy(ASSETS / "demo_template.mp4", root / "characters" / "x.mp4")
    write_audio(root / "temp" / "short.wav", speech_like(1.2, seed=3))
    write_audio(root / "temp" / "long.wav", speech_like(30.0, seed=4))
    write_video(root / "temp" / "noface.mp4", synthetic_frames(10, 160, 120), 25)
    (root / "temp" / "garbage.wav").write_bytes(b"this is not audio at all" * 50)
    return root


def code() -> str:
    return str(uuid.uuid4())  # what the Electron client sends


def query(http: httpx.Client, task: str) -> dict:
    r = http.get("/easy/query", params={"code": task})
    assert r.status_code == 200, r.text
    return r.json()


def poll(http: httpx.Client, task: str, timeout: float = 120.0) -> tuple[dict, list[dict]]:
    """Poll like a client until data.status is 2 or 3; every pending reply is checked on the way."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        body = query(http, task)
        assert body["code"] == 10000 and body["success"] is True and body["msg"] == "", body
        data = body["data"]
        seen.append(data)
        if data["status"] in (2, 3):
            return data, seen
        assert data["status"] == 1 and data["code"] == task and data["result"] == "", data
        assert isinstance(data["progress"], int) and 0 <= data["progress"] <= 99, data
        assert data["msg"], data
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task} still pending after {timeout} s: {data}")
        time.sleep(0.2)


def decode(path: Path) -> tuple[int, float, bool, tuple[int, int]]:
    with av.open(str(path)) as c:
        frames = sum(1 for _ in c.decode(video=0))
        v = c.streams.video[0]
        has_aac = any(s.codec_context.name == "aac" for s in c.streams.audio)
        return frames, float(v.average_rate), has_aac, (v.codec_context.width, v.codec_context.height)


# ------------------------------------------------------------------------------- pure functions

def test_parse_body_and_flags():
    assert parse_body(b'{"code": "a", "pn": 0}') == {"code": "a", "pn": 0}
    assert parse_body("\ufeff{\"code\": \"a\"}".encode()) == {"code": "a"}  # BOM
    assert parse_body(b"") == {}
    assert parse_body(b"audio_url=x.wav&code=a&pn=") == {"audio_url": "x.wav", "code": "a", "pn": ""}
    for bad in (b"{not json", b"[1, 2]"):
        with pytest.raises(ValueError):
            parse_body(bad)
    assert [pingpong(v) for v in (None, "", " ", 1, "1")] == [True] * 5
    assert [pingpong(v) for v in (0, "0", True, "true", 2)] == [False] * 5


def test_resolve_source(tmp_path):
    root = tmp_path / "data"
    (root / "temp").mkdir(parents=True)
    (root / "temp" / "a.wav").write_bytes(b"x")
    assert resolve_source("a.wav", root) == str(root / "temp" / "a.wav")
    assert resolve_source("../characters/v.mp4", root) == str(root / "characters" / "v.mp4")
    assert resolve_source("/elsewhere/v.mp4", root) == "/elsewhere/v.mp4"
    assert resolve_source("/code/data/temp/a.wav", root) == str(root / "temp" / "a.wav")  # original mount
    assert resolve_source("https://h/a.wav?x=1", root) == "https://h/a.wav?x=1"


def test_publish_result_links_atomically_and_replaces_stale_files(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    result = tmp_path / "results" / "t1.mp4"
    result.parent.mkdir()
    shutil.copy(ASSETS / "demo_template.mp4", result)
    stale = temp / "t1-r.mp4"
    stale.write_bytes(b"an earlier task's video")
    old = time.time() - 60
    os.utime(stale, (old, old))
    rec = JobRecord(id="t1", status="succeeded", result_path=str(result), finished_at=time.time())
    info = publish_result(rec, temp)
    assert info == {"video_duration": 4.0, "width": 480, "height": 480}
    assert os.path.samefile(stale, result)  # replaced by a hard link to the result
    assert [p.name for p in temp.iterdir()] == ["t1-r.mp4"]  # no temporary left behind
    result.unlink()  # lipserve's copy gone: the published file still answers
    assert publish_result(rec, temp)["width"] == 480


# ------------------------------------------------------------------------------- the service

@pytest.fixture(scope="module")
def duix(cluster, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("duix") / "data")
    deploy(small_args(storage, duix={"data_dir": str(data_dir)}))
    client = Client(f"http://127.0.0.1:{cluster}")
    client.wait_http("/readyz", 200)
    yield client, data_dir, storage
    serve.delete("lipserve")


def test_electron_style_submit_poll_and_result(duix):
    client, data_dir, _ = duix
    task = code()
    body = {"audio_url": "x.wav", "video_url": "../characters/x.mp4", "code": task, "chaofen": 0,
            "watermark_switch": 0, "pn": 1, "some_future_key": "ignored"}
    r = client.http.post("/easy/submit", json=body)
    assert r.status_code == 200 and r.json() == ACCEPTED, r.text

    final, seen = poll(client.http, task)
    assert final["status"] == 2, final
    assert final["progress"] == 100 and final["msg"] == "任务完成" and final["code"] == task
    assert final["result"] == f"/{task}-r.mp4"
    assert final["cost"] > 0 and final["width"] == final["height"] == 480
    with av.open(str(ASSETS / "demo_speech.wav")) as c:
        seconds = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    assert abs(final["video_duration"] - seconds) < 0.2

    # Clients read temp + result from the shared volume.
    out = data_dir / "temp" / final["result"].lstrip("/")
    assert out.is_file()
    frames, fps, has_aac, size = decode(out)
    assert frames == math.ceil(seconds * fps) and has_aac and size == (480, 480)
    assert not [p for p in (data_dir / "temp").iterdir() if p.name.endswith(".partial")]

    # The task is a native job too: same id, Duix fields recorded, ping-pong on.
    rec = client.job(task)
    assert rec["status"] == "succeeded" and rec["params"]["pingpong"] is True
    assert rec["meta"]["duix"] == {"code": task, "audio_url": "x.wav", "video_url": "../characters/x.mp4",
                                     "pn": 1, "watermark_switch": 0, "digital_auth": 0, "chaofen": 0}
    # The API record names the client's inputs, never server paths; the store has the job's own copy.
    assert rec["params"]["inputs"] == {"audio": "x.wav", "video": "../characters/x.mp4"}
    assert "result_path" not in rec and str(data_dir) not in json.dumps(rec)

    # delete_after_report is off by default: a later poll answers the same.
    assert query(client.http, task)["data"]["status"] == 2
    # A re-submit with the same inputs is idempotent; the code with other inputs is a conflict.
    assert client.http.post("/easy/submit", json=body).json() == ACCEPTED
    other = client.http.post("/easy/submit", json={**body, "audio_url": "short.wav"}).json()
    assert other["code"] == 10003 and other["success"] is False and task in other["msg"]
    assert len(client.http.get("/v1/jobs", params={"status": "succeeded"}).json()["jobs"]) >= 1


def test_comfyui_style_json_without_json_content_type(duix):
    """JSON sent as form-encoded / with no Content-Type; pn "0" means loop; absolute paths, including
    the original container's /code/data mount, are accepted."""
    client, data_dir, _ = duix
    temp = data_dir / "temp"
    tasks = {}
    for variant, headers in (("form", {"Content-Type": "application/x-www-form-urlencoded"}), ("none", {})):
        task = code()
        audio = str(temp / "short.wav") if variant == "form" else "/code/data/temp/short.wav"
        body = json.dumps({"audio_url": audio, "video_url": str(data_dir / "characters" / "x.mp4"),
                           "code": task, "pn": "0"}).encode()
        r = client.http.post("/easy/submit", content=body, headers=headers)
        assert r.json() == ACCEPTED, (variant, r.text)
        tasks[variant] = task
    for variant, task in tasks.items():
        final, _ = poll(client.http, task)
        assert final["status"] == 2, (variant, final)
        assert (temp / f"{task}-r.mp4").is_file() and decode(temp / f"{task}-r.mp4")[2]
        rec = client.job(task)
        assert rec["params"]["pingpong"] is False and rec["params"]["inputs"]["audio"] == (
            str(temp / "short.wav") if variant == "form" else "/code/data/temp/short.wav")


def test_pn_semantics(duix):
    """pn missing/empty -> ping-pong, else only str(pn) == "1" (the original's rule); checked on the
    native record of the same id."""
    client, _, _ = duix
    cases = [("missing", True), ("", True), (1, True), ("1", True), (0, False), ("0", False), (True, False)]
    tasks = {}
    for pn, expected in cases:
        task = code()
        body = {"audio_url": "short.wav", "video_url": "../characters/x.mp4", "code": task}
        if pn != "missing":
            body["pn"] = pn
        assert client.http.post("/easy/submit", json=body).json() == ACCEPTED
        tasks[task] = expected
    for task, expected in tasks.items():
        assert client.job(task)["params"]["pingpong"] is expected
        assert poll(client.http, task)[0]["status"] == 2


@pytest.mark.parametrize("field", ["audio_url", "video_url", "code"])
def test_missing_parameter_is_10002(duix, field):
    client, _, _ = duix
    body = {"audio_url": "x.wav", "video_url": "../characters/x.mp4", "code": code()}
    for value in (None, ""):
        b = dict(body)
        if value is None:
            del b[field]
        else:
            b[field] = value
        r = client.http.post("/easy/submit", json=b)
        assert r.status_code == 200
        assert r.json() == {"code": 10002, "data": {}, "msg": f"{field}参数缺失", "success": False}
    if field != "code":
        assert query(client.http, body["code"]) == UNKNOWN  # nothing was created


def test_bad_body_and_bad_code_are_10002(duix):
    client, _, _ = duix
    r = client.http.post("/easy/submit", content=b"")
    assert r.json()["code"] == 10002 and r.json()["msg"] == "audio_url参数缺失"
    r = client.http.post("/easy/submit", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.json()["code"] == 10002 and r.json()["success"] is False and r.json()["msg"]
    r = client.http.post("/easy/submit", json={"audio_url": "x.wav", "video_url": "x.mp4", "code": "../../etc"})
    assert r.json()["code"] == 10002 and "code" in r.json()["msg"]


def test_unknown_code_is_10004(duix):
    client, _, _ = duix
    assert query(client.http, code()) == UNKNOWN
    r = client.http.get("/easy/query")
    assert r.json()["code"] == 10002 and r.json()["success"] is False


@pytest.mark.parametrize("audio,expect", [("garbage.wav", "garbage.wav"), ("nope.wav", "no such file")])
def test_bad_audio_is_rejected_at_submit(duix, audio, expect):
    """Inputs are checked at submission as in the native API: a typed error, 10002, its message."""
    client, _, _ = duix
    task = code()
    r = client.http.post("/easy/submit", json={"audio_url": audio, "video_url": "../characters/x.mp4",
                                               "code": task})
    body = r.json()
    assert r.status_code == 200 and body["code"] == 10002 and body["success"] is False, body
    assert audio in body["msg"] and expect in body["msg"]
    assert query(client.http, task) == UNKNOWN


def test_failure_while_rendering_is_status_3(duix):
    """A template without a face passes the submission checks and fails in the job: status 3 with the
    typed message."""
    client, _, _ = duix
    task = code()
    r = client.http.post("/easy/submit", json={"audio_url": "short.wav", "video_url": "noface.mp4", "code": task})
    assert r.json() == ACCEPTED
    final, _ = poll(client.http, task)
    assert final["status"] == 3 and final["progress"] == 0 and final["result"] == ""
    assert "no face" in final["msg"] and "noface.mp4" in final["msg"]
    assert client.job(task)["error"]["code"] == "no_face"


# ------------------------------------------------------------------------------- queue bound, forgetting

@pytest.fixture(scope="module")
def gated(cluster, tmp_path_factory):
    """The pipeline held in warm-up (nothing runs), a queue bound of 1, delete_after_report on."""
    root = tmp_path_factory.mktemp("gated")
    gate = root / "chaos"
    gate.mkdir()
    (gate / "hold_pipeline_ready").write_text("1")
    data_dir = prepare_data_dir(root / "data")
    args = small_args(root / "storage", chaos_dir=str(gate), jobs={"max_queued_jobs": 1, "retry_after_s": 7},
                      duix={"data_dir": str(data_dir), "delete_after_report": True})
    deploy(args, name="duixgated", prefix="/duixgated", blocking=False)
    client = Client(f"http://127.0.0.1:{cluster}/duixgated")
    client.wait_http("/healthz", 200, timeout=90)
    yield client, data_dir, root / "storage", gate
    serve.delete("duixgated")


def test_queue_full_then_result_and_delete_after_report(gated):
    client, data_dir, storage, gate = gated
    # A cancelled task (native DELETE) is status 3 with a message; then it is forgotten.
    cancelled = code()
    assert client.http.post("/easy/submit", json={"audio_url": "short.wav", "video_url": "../characters/x.mp4",
                                                  "code": cancelled}).json() == ACCEPTED
    assert client.http.delete(f"/v1/jobs/{cancelled}").json()["status"] == "cancelled"
    data = query(client.http, cancelled)["data"]
    assert data == {"code": cancelled, "status": 3, "progress": 0, "result": "", "msg": "cancelled by request"}
    assert query(client.http, cancelled) == UNKNOWN

    body = {"audio_url": "short.wav", "video_url": "../characters/x.mp4", "code": code()}
    task = body["code"]
    assert client.http.post("/easy/submit", json=body).json() == ACCEPTED
    data = query(client.http, task)["data"]
    assert data["status"] == 1 and data["progress"] == 0 and "queued" in data["msg"]

    # The queue is at its bound: a definite failure (9999) with HTTP 429 + Retry-After, never 10001.
    full = client.http.post("/easy/submit", json={**body, "code": code()})
    assert full.status_code == 429 and full.headers["retry-after"] == "7"
    assert full.json()["code"] == 9999 and full.json()["success"] is False and full.json()["msg"]
    # ... but an idempotent re-submit of the queued task is still answered 10000.
    assert client.http.post("/easy/submit", json=body).json() == ACCEPTED

    shutil.rmtree(gate)  # let the pipeline finish warming up; the queued task runs
    final, _ = poll(client.http, task)
    assert final["status"] == 2, final
    out = data_dir / "temp" / f"{task}-r.mp4"
    assert out.is_file() and decode(out)[0] > 0
    # Forgotten after the first terminal reply, as the original does; the client's file stays.
    assert query(client.http, task) == UNKNOWN
    assert client.http.get(f"/v1/jobs/{task}").status_code == 404
    assert out.is_file() and not (storage / "results" / f"{task}.mp4").exists()
    wait_until(lambda: not (storage / "jobs" / task).exists(), "job work dir removed")
