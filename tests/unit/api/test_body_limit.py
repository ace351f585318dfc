"""Body limits while reading: over ASGI (httpx.ASGITransport) and over a real uvicorn socket."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from actors.errors import LipserveError
from serve_app.api.body_limit import KIB, BodyLimitMiddleware, BodyLimits
from serve_app.api.errors import error_response
from serve_app.api.forms import read_form
from serve_app.api.json_guard import read_json
from tests.unit.uvicorn_server import serve

pytestmark = pytest.mark.anyio
LIMITS = BodyLimits(default=256, routes={"/easy/*": 1 * KIB, "/v1/jobs": 100 * KIB, "/v1/*": 4 * KIB})


def make_app(calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(LipserveError)
    async def typed(request, err: LipserveError):
        return error_response(err)

    @app.post("/v1/jobs")
    async def upload(request: Request):
        calls.append("jobs")
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"bytes": n}

    @app.post("/v1/form")
    async def form(request: Request):
        calls.append("form")
        f = await read_form(request, files={"audio", "video"}, fields={"priority"})
        return {"names": sorted(k for k, _ in f.multi_items())}

    @app.post("/easy/submit")
    async def easy(request: Request):
        calls.append("easy")
        return {"got": await read_json(request, max_bytes=64 * KIB)}

    @app.post("/v1/swallow")
    async def swallow(request: Request):
        # An app that catches every error from the body and answers 200: still a 413 on the wire.
        calls.append("swallow")
        try:
            await request.body()
        except Exception:
            pass
        return {"ok": True}

    app.add_middleware(BodyLimitMiddleware, limits=LIMITS)
    return app


@pytest.fixture
def calls():
    return []


@pytest.fixture
async def client(calls):
    transport = httpx.ASGITransport(app=make_app(calls))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def chunks(n: int, size: int, sent: list[int]):
    async def gen():
        for _ in range(n):
            sent.append(size)
            yield b"x" * size
    return gen()


def test_route_patterns():
    assert LIMITS.limit_for("/easy/submit") == 1 * KIB
    assert LIMITS.limit_for("/easy") == 1 * KIB
    assert LIMITS.limit_for("/v1/jobs") == 100 * KIB
    assert LIMITS.limit_for("/v1/jobs/") == 100 * KIB
    assert LIMITS.limit_for("/v1/jobs/abc/cancel") == 4 * KIB
    assert LIMITS.limit_for("/healthz") == 256
    service = BodyLimits.for_lipserve(10 * KIB * KIB)
    assert service.limit_for("/v1/jobs") > 20 * KIB * KIB and service.limit_for("/easy/submit") == 64 * KIB


async def test_under_the_limit_passes(client):
    r = await client.post("/v1/jobs", content=b"a" * (100 * KIB))
    assert r.status_code == 200 and r.json() == {"bytes": 100 * KIB}


async def test_declared_length_over_the_limit_never_reaches_the_app(client, calls):
    r = await client.post("/v1/jobs", content=b"a" * (100 * KIB + 1))
    assert r.status_code == 413
    body = r.json()["error"]
    assert body["code"] == "media_too_large" and body["retryable"] is False and str(100 * KIB) in body["message"]
    assert calls == []
    assert r.headers["connection"] == "close"


async def test_chunked_body_over_the_limit_stops_reading(client, calls):
    sent: list[int] = []
    r = await client.post("/v1/jobs", content=chunks(1000, 10 * KIB, sent))  # 10 MB offered, no Content-Length
    assert r.status_code == 413 and r.json()["error"]["code"] == "media_too_large"
    assert calls == ["jobs"]
    assert sum(sent) <= 110 * KIB  # read up to the limit plus one chunk, not the 10 MB


async def test_an_app_that_swallows_the_error_still_answers_413(client):
    sent: list[int] = []
    r = await client.post("/v1/swallow", content=chunks(100, KIB, sent))
    assert r.status_code == 413 and r.json()["error"]["code"] == "media_too_large"
    assert sum(sent) <= 5 * KIB


async def test_small_routes_get_small_limits(client):
    r = await client.post("/easy/submit", content=json.dumps({"k": "v" * 2000}))
    assert r.status_code == 413
    r = await client.post("/easy/submit", json={"code": "abc"})
    assert r.status_code == 200 and r.json() == {"got": {"code": "abc"}}
    r = await client.post("/healthz", content=b"x" * 300)
    assert r.status_code == 413


async def test_hostile_json_is_a_typed_4xx(client):
    for raw in (b"[" * 5000, b'{"a":' * 300 + b"1" + b"}" * 300, b"9" * 5000, b"{bad", b"[NaN]", b"\xff\xfe"):
        r = await client.post("/easy/submit", content=raw[:1000])
        assert r.status_code == 422, raw[:20]
        assert r.json()["error"]["code"] == "invalid_parameter" and r.json()["error"]["message"]


async def test_multipart_takes_only_the_expected_parts(client):
    ok = await client.post("/v1/form", files={"audio": ("a.wav", b"RIFF"), "video": ("v.mp4", b"0000")},
                           data={"priority": "3"})
    assert ok.status_code == 200 and ok.json() == {"names": ["audio", "priority", "video"]}
    cases = [
        ({"audio": ("a.wav", b"1"), "extra": ("x.bin", b"2")}, {}, "extra"),  # unknown file part
        ({"audio": ("a.wav", b"1")}, {"hack": "1"}, "hack"),  # unknown text field
        ({}, {"audio": "not a file"}, "audio"),  # text where a file belongs
    ]
    for files, data, name in cases:
        r = await client.post("/v1/form", files=files or None, data=data or None)
        assert r.status_code == 422, (files, data)
        assert r.json()["error"]["code"] == "invalid_parameter" and name in r.json()["error"]["message"]
    many = [("audio", (f"{i}.wav", b"1")) for i in range(5)]
    r = await client.post("/v1/form", files=many)
    assert r.status_code == 422 and "multipart" in r.json()["error"]["message"]


def test_real_socket_chunked_upload_gets_413_before_it_is_sent(calls):
    """Over a real uvicorn socket: the 413 arrives while the client still has most of its body to
    send, i.e. the server did not wait for (or spool) the rest."""
    with serve(make_app(calls)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"y" * (16 * KIB)
            for _ in range(8):  # 128 KiB sent of a body that would go on for 100 MB
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                data = s.recv(65536)
                if not data:
                    break
                reply += data
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 413"), head
            assert json.loads(body)["error"]["code"] == "media_too_large"
            # The server closes the connection rather than reading the remaining body.
            s.settimeout(5)
            try:
                rest = s.recv(65536)
                while rest:
                    rest = s.recv(65536)
            except ConnectionResetError:
                pass
    assert calls == ["jobs"]


def test_route_path_strips_the_mount_prefix():
    from serve_app.api.body_limit import route_path

    assert route_path({"path": "/limited/v1/jobs", "root_path": "/limited"}) == "/v1/jobs"
    assert route_path({"path": "/v1/jobs", "root_path": ""}) == "/v1/jobs"
    assert route_path({"path": "/limited", "root_path": "/limited"}) == "/"
