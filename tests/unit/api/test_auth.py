"""API keys: parsing, hashing, constant-time lookup, and the middleware over HTTP."""

from __future__ import annotations

import hmac

import httpx
import pytest
from fastapi import FastAPI, Request

from actors.errors import InvalidParameterError
from serve_app.api import auth as auth_mod
from serve_app.api.auth import ANONYMOUS, ApiKeyMiddleware, ApiKeyRing, Tenant, require_admin, tenant_of
from actors.errors import ErrorCode, ForbiddenError, UnauthorizedError
from serve_app.api.errors import headers_for, status_for
from serve_app.config import AuthSettings

pytestmark = pytest.mark.anyio
ALICE, BOB, ROOT = "alice-key-0123456789", "bob-key-abcdefghijkl", "root-key-zyxwvutsrqpo"


@pytest.fixture
def ring(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# tenants of the staging cluster\nbob:{BOB}\n\n  ops : {ROOT}   # on-call\n")
    return ApiKeyRing.load(keys_file=str(keys), admin_tenants=["ops"],
                           environ={"LIPSERVE_API_KEYS": f"alice:{ALICE}, alice:{ALICE}x"})


def test_keys_from_env_and_file(ring):
    assert ring.enabled and ring.tenant_names == {"alice", "bob", "ops"}
    assert ring.authenticate(f"Bearer {ALICE}") == Tenant("alice")
    assert ring.authenticate(f"Bearer {ALICE}x") == Tenant("alice")
    assert ring.authenticate(f"bearer   {BOB}") == Tenant("bob")
    assert ring.authenticate(f"Bearer {ROOT}") == Tenant("ops", is_admin=True)


def test_keys_are_kept_only_as_digests(ring):
    blob = repr(vars(ring)) + repr(ring)
    for key in (ALICE, BOB, ROOT):
        assert key not in blob


def test_every_digest_is_compared(ring, monkeypatch):
    """No early exit: a match at the first entry costs as many comparisons as no match at all."""
    counted = []
    real = hmac.compare_digest

    def counting(a, b):
        counted.append(1)
        return real(a, b)

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", counting)
    for header in (f"Bearer {ALICE}", f"Bearer {ROOT}", "Bearer nobody-knows-this-key"):
        counted.clear()
        try:
            ring.authenticate(header)
        except UnauthorizedError:
            pass
        assert len(counted) == 4


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic YWxpY2U6eA==", f"Token {ALICE}",
                                    "Bearer wrong-key-0000000000", f"Bearer {ALICE[:-1]}"])
def test_bad_credentials(ring, header):
    with pytest.raises(UnauthorizedError) as info:
        ring.authenticate(header)
    assert info.value.code == ErrorCode.UNAUTHORIZED and status_for(info.value) == 401 and info.value.message
    assert "Bearer" in headers_for(info.value)["WWW-Authenticate"]


@pytest.mark.parametrize("env, reason", [
    ("alice", "expected 'tenant:key'"),
    ("alice:short", "at least 16"),
    ("bad name:0123456789abcdef", "tenant name"),
    (f"alice:{ALICE},bob:{ALICE}", "two tenants"),
])
def test_bad_configuration_is_refused_without_showing_keys(env, reason):
    with pytest.raises(ValueError, match=reason) as info:
        ApiKeyRing.load(environ={"LIPSERVE_API_KEYS": env})
    assert ALICE not in str(info.value)


def test_missing_keys_file_and_unknown_admin(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        ApiKeyRing.load(keys_file=str(tmp_path / "none"), environ={})
    with pytest.raises(ValueError, match="without a key: ghost"):
        ApiKeyRing.load(admin_tenants=["ghost"], environ={"LIPSERVE_API_KEYS": f"alice:{ALICE}"})


def test_no_keys_means_auth_off():
    ring = ApiKeyRing.load(environ={})
    assert not ring.enabled and ring.authenticate(None) is ANONYMOUS


def test_admin_check():
    assert require_admin(Tenant("ops", True)).name == "ops"
    with pytest.raises(ForbiddenError):
        require_admin(Tenant("alice"))


def test_tenant_limits():
    s = AuthSettings.model_validate({"max_queued_per_tenant": 5, "tenants": {"bob": {"max_running": 1, "max_priority": 10}}})
    bob, alice = s.limits_for("bob"), s.limits_for("alice")
    assert (bob.max_queued, bob.max_running, bob.max_priority) == (5, 1, 10)
    assert (alice.max_running, alice.max_priority) == (4, 100)
    assert s.limits_for("ops", is_admin=True).max_priority == 1000
    assert bob.check_priority(10) == 10
    with pytest.raises(InvalidParameterError, match="ceiling of 10"):
        bob.check_priority(11)
    with pytest.raises(ValueError):
        AuthSettings.model_validate({"keyfile": "typo"})


def make_app(ring: ApiKeyRing, protected=("/v1/", "/easy/"), query_token_paths=None) -> FastAPI:
    app = FastAPI()

    async def who(request: Request):
        t = tenant_of(request)
        return {"tenant": t.name, "admin": t.is_admin}

    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/easy/query", "/healthz", "/readyz", "/metrics", "/openapi-ish"):
        app.add_api_route(path, who, methods=["GET"])
    app.add_middleware(ApiKeyMiddleware, keyring=ring, protected_prefixes=protected,
                       query_token_paths=query_token_paths)
    return app


async def test_middleware_over_http(ring):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(ring)), base_url="http://t") as c:
        for path in ("/v1/jobs", "/v1/jobs/abc", "/easy/query"):
            r = await c.get(path)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["retryable"] is False
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = await c.get(path, headers={"Authorization": "Bearer not-a-configured-key"})
            assert r.status_code == 401 and r.json()["error"]["message"] == "the API key is not valid"
            r = await c.get(path, headers={"Authorization": f"Bearer {BOB}"})
            assert r.status_code == 200 and r.json() == {"tenant": "bob", "admin": False}
        r = await c.get("/v1/jobs", headers={"Authorization": f"Bearer {ROOT}"})
        assert r.json() == {"tenant": "ops", "admin": True}
        for path in ("/healthz", "/readyz", "/metrics", "/openapi-ish"):
            r = await c.get(path)
            assert r.status_code == 200 and r.json()["tenant"] == "default"


async def test_duix_can_be_left_open(ring):
    """``duix.auth: none``: the lead passes protected_prefixes=("/v1/",)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(ring, ("/v1/",))),
                                 base_url="http://t") as c:
        assert (await c.get("/easy/query")).status_code == 200
        assert (await c.get("/v1/jobs")).status_code == 401


async def test_auth_off_serves_everyone_as_default():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(ApiKeyRing())), base_url="http://t") as c:
        r = await c.get("/v1/jobs")
        assert r.status_code == 200 and r.json() == {"tenant": "default", "admin": False}


async def test_access_token_query_only_on_the_live_stream_routes(ring):
    from serve_app.api.routes.hls import QUERY_TOKEN_PATHS

    app = make_app(ring, query_token_paths=QUERY_TOKEN_PATHS)

    async def who(request: Request):
        return {"tenant": tenant_of(request).name}

    app.add_api_route("/v1/jobs/{job_id}/hls/{name}", who, methods=["GET"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/v1/jobs/abc/hls/index.m3u8", params={"access_token": BOB})
        assert r.status_code == 200 and r.json() == {"tenant": "bob"}
        r = await c.get("/v1/jobs/abc/hls/seg_00000.m4s", params={"access_token": BOB})
        assert r.status_code == 200
        r = await c.get("/v1/jobs/abc/hls/index.m3u8", params={"access_token": "not-a-configured-key"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "the API key is not valid"
        assert (await c.get("/v1/jobs/abc/hls/index.m3u8")).status_code == 401
        # Anywhere else the query string is no way to authenticate.
        assert (await c.get("/v1/jobs/abc", params={"access_token": BOB})).status_code == 401
        assert (await c.get("/v1/jobs", params={"access_token": BOB})).status_code == 401
        # A header wins over the query string.
        r = await c.get("/v1/jobs/abc/hls/index.m3u8", params={"access_token": BOB},
                        headers={"Authorization": f"Bearer {ROOT}"})
        assert r.json() == {"tenant": "ops"}
    # Off unless the app names the paths.
    plain = make_app(ring)
    plain.add_api_route("/v1/jobs/{job_id}/hls/{name}", who, methods=["GET"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://t") as c:
        assert (await c.get("/v1/jobs/abc/hls/index.m3u8", params={"access_token": BOB})).status_code == 401
