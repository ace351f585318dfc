"""Schemathesis against the live service's /openapi.json (real Ray cluster, real HTTP, keys on).

A bounded run (derandomized, so CI sees the same requests every time) of positive and negative
cases for every documented operation: no 5xx, every status documented, every body matching the
documented schema and content type. Submissions cannot start renders: random bytes never pass the
media probes, server paths are refused (no ``input_roots``), private URLs are refused and public
hostnames do not resolve in CI; the queue bound is small anyway.
"""

from __future__ import annotations

import time
from collections import Counter

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from ray import serve
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)

from tests.service.harness import deploy, small_args, start_cluster, stop_cluster, Client

KEY = "fuzz-key-0123456789abcdef00"
MIN_REQUESTS = 300
EXAMPLES_PER_MODE = 20  # x 2 modes x the 14 operations; fewer where hypothesis runs out of cases
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    port = start_cluster()
    root = tmp_path_factory.mktemp("fuzz")
    keys = root / "keys.txt"
    keys.write_text(f"fuzz:{KEY}\n")
    (root / "duix" / "temp").mkdir(parents=True)
    deploy(small_args(
        root / "storage",
        auth={"keys_file": str(keys), "admin_tenants": ["fuzz"]},
        jobs={"max_queued_jobs": 2, "url_deadline_s": 5, "url_connect_timeout_s": 2, "max_upload_bytes": 1_000_000},
        duix={"data_dir": str(root / "duix")},
        retention={"min_free_bytes": 0}))
    base = f"http://127.0.0.1:{port}"
    Client(base).wait_http("/readyz", 200)
    yield base
    serve.delete("lipserve")
    stop_cluster()


def test_fuzzed_requests_get_documented_answers(live):
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {KEY}"
    sent: list[str] = []
    failures: dict[str, str] = {}
    t0 = time.monotonic()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=EXAMPLES_PER_MODE, deadline=None, database=None, derandomize=True,
                                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=live, session=session, timeout=30)
                sent.append(f"{operation.label} -> {response.status_code}")
                try:
                    case.validate_response(response, checks=CHECKS)
                except (FailureGroup, Exception) as exc:  # noqa: BLE001 - one report of every distinct failure
                    failures.setdefault(f"{operation.label} {response.status_code}",
                                        f"{type(exc).__name__}: {str(exc)[:600]}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                # No negative case exists for an operation without parameters or body (e.g. /healthz).
                assert mode is GenerationMode.NEGATIVE, operation.label
    took = time.monotonic() - t0
    _checks_bite(schema, live, session)
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
    assert len(sent) >= MIN_REQUESTS, f"only {len(sent)} requests"
    assert not [s for s in sent if s.endswith(tuple(f" {c}" for c in range(500, 600)))]
    print(f"{len(sent)} fuzzed requests in {took:.1f} s:", dict(Counter(sent)))


def _checks_bite(schema, base: str, session: requests.Session) -> None:
    """The checks do fail on what they should: an undocumented status, a body off its schema."""
    case = schema["/v1/jobs/{job_id}"]["GET"].Case(path_parameters={"job_id": "nope"})
    real = case.call(base_url=base, session=session, timeout=30)
    assert real.status_code == 404
    case.validate_response(real, checks=CHECKS)
    for status, body in ((418, real.content), (404, b'{"error": {"code": "not_found"}}')):
        forged = requests.Response()
        forged.status_code, forged._content, forged.url = status, body, real.request.url
        forged.headers.update({"content-type": "application/json"})
        forged.request = real.request
        with pytest.raises(FailureGroup):
            case.validate_response(forged, checks=CHECKS)
