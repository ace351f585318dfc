"""Every non-2xx answer of the native API is ``{"error": {code, message, retryable}}`` with a code of
``ErrorCode`` — framework errors (unknown route, wrong method, validation) included — and each route
documents its errors in OpenAPI. The real app and JobIntake over a real SQLite store, no Ray."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from actors.errors import ErrorCode
from serve_app.api.app import build_api
from serve_app.api.intake import JobIntake
from serve_app.api.services import ApiServices
from serve_app.config import LipserveArgs
from serve_app.jobs.async_store import AsyncJobStore
from serve_app.jobs.sqlite_store import SqliteJobStore
from serve_app.jobs.storage import Storage
from tests.media import ASSETS

CODES = {c.value for c in ErrorCode}


@pytest.fixture
def client(tmp_path):
    args = LipserveArgs(storage_dir=str(tmp_path), jobs={"max_queued_jobs": 1, "retry_after_s": 7})
    store = AsyncJobStore(SqliteJobStore(tmp_path / "jobs.sqlite3"))
    storage = Storage(args.storage_dir)

    async def ready():
        return False, {"reason": "no warm pipeline replica yet"}

    svc = ApiServices(args=args, store=store, storage=storage, intake=JobIntake(args, store, storage), readiness=ready)
    with TestClient(build_api(lambda: svc)) as c:
        yield c


def envelope(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "retryable"}
    assert body["error"]["code"] == code and code in CODES
    assert body["error"]["message"].strip()
    return body["error"]


def test_404_unknown_job_and_unknown_route(client):
    err = envelope(client.get("/v1/jobs/nope"), 404, "not_found")
    assert "nope" in err["message"] and err["retryable"] is False
    envelope(client.get("/no/such/route"), 404, "not_found")


def test_405(client):
    envelope(client.put("/v1/jobs"), 405, "method_not_allowed")


def test_validation_errors(client):
    err = envelope(client.get("/v1/jobs", params={"limit": "many"}), 422, "invalid_parameter")
    assert "limit" in err["message"]
    envelope(client.get("/v1/jobs", params={"offset": -1}), 422, "invalid_parameter")
    envelope(client.get("/v1/jobs", params={"status": "weird"}), 422, "invalid_parameter")
    err = envelope(client.post("/v1/jobs", json={"audio": "a.wav", "priority": 10**6}), 422, "invalid_parameter")
    assert "priority" in err["message"]
    envelope(client.post("/v1/jobs", content=b"{not json"), 422, "invalid_parameter")


def test_429_when_the_queue_is_full(client):
    files = {"audio": ("speech.wav", (ASSETS / "demo_speech.wav").read_bytes(), "audio/wav"),
             "video": ("presenter.mp4", (ASSETS / "demo_template.mp4").read_bytes(), "video/mp4")}
    assert client.post("/v1/jobs", files=files).status_code == 202
    r = client.post("/v1/jobs", files=files)
    err = envelope(r, 429, "queue_full")
    assert err["retryable"] is True and r.headers["retry-after"] == "7"


def test_503_readiness_and_result_not_ready(client):
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"


def test_input_errors_name_the_clients_file_not_a_server_path(client, tmp_path):
    files = {"audio": ("notes.txt", b"this is not audio", "text/plain"),
             "video": ("presenter.mp4", (ASSETS / "demo_template.mp4").read_bytes(), "video/mp4")}
    err = envelope(client.post("/v1/jobs", files=files), 422, "unreadable_file")
    assert "notes.txt" in err["message"] and str(tmp_path) not in err["message"]


def test_openapi_documents_every_routes_errors(client):
    spec = client.get("/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        if path.startswith("/v1/"):
            for method, op in ops.items():
                errors = [s for s in op["responses"] if s.startswith(("4", "5"))]
                assert errors, (method, path)
                for s in errors:
                    if s == "422" and "ErrorResponse" not in str(op["responses"][s]):
                        raise AssertionError(f"{method} {path}: 422 is not documented as ErrorResponse")
