"""SSRF-safe downloads and posts against real local servers (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from actors.errors import InvalidParameterError, MediaTooLargeError, UnreadableFileError
from serve_app.api.address_policy import AddressPolicy, is_public_address, parse_target, vet_target
from serve_app.api.url_fetch import FetchLimits, SafeHttp
from tests.unit.local_http import LocalHttpServer, closed_port, response
from tests.unit.tls_certs import make_tls

pytestmark = pytest.mark.anyio
OPEN = AddressPolicy(allow_private=True)
LIMITS = FetchLimits(max_bytes=1 << 20, deadline_s=5.0, rate_grace_s=1.0)


def fake_dns(mapping: dict[str, list[str]]):
    """A resolver that answers from ``mapping`` (and records what it was asked)."""
    asked: list[str] = []

    async def resolve(host: str, port: int):
        asked.append(host)
        if host not in mapping:
            raise OSError("no such host")
        return mapping[host]

    resolve.asked = asked
    return resolve


async def serve_bytes(data: bytes, **headers):
    async def handler(req, writer):
        writer.write(response(200, data, {"Content-Type": "audio/wav", **headers}))

    return handler


# ------------------------------------------------------------------ parsing and address rules
@pytest.mark.parametrize("url", [
    "http://2130706433/", "http://0x7f.1/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/",
    "http://127.0.0.1.1/", "http://10.0.0.0x1/",
])
def test_numeric_host_forms_are_refused(url):
    with pytest.raises(InvalidParameterError, match="numeric address"):
        parse_target(url)


@pytest.mark.parametrize("url", ["ftp://example.com/a", "file:///etc/passwd", "gopher://x/", "javascript:alert(1)",
                                 "//example.com/a", "http://user:pw@example.com/", "http://exa mple.com/", "http:///a"])
def test_bad_schemes_and_shapes_are_refused(url):
    with pytest.raises(InvalidParameterError) as info:
        parse_target(url)
    assert info.value.message


def test_scheme_and_host_are_case_insensitive():
    t = parse_target("HTTPS://Media.Example.COM:8443/a/B.mp4?x=1")
    assert (t.scheme, t.host, t.port, t.path_and_query) == ("https", "media.example.com", 8443, "/a/B.mp4?x=1")
    assert t.host_header == "media.example.com:8443"
    assert parse_target("http://cafe.de/").host == "cafe.de"  # hex-looking names are still names


@pytest.mark.parametrize("addr", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "198.18.0.1", "192.0.0.8",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8",
    "2002:7f00:1::", "64:ff9b::7f00:1", "2001:db8::1",
])
def test_non_public_addresses(addr):
    assert not is_public_address(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses(addr):
    assert is_public_address(ipaddress.ip_address(addr))


async def test_every_resolved_address_must_be_public():
    dns = fake_dns({"mixed.example": ["93.184.216.34", "10.0.0.7"], "public.example": ["93.184.216.34"]})
    with pytest.raises(InvalidParameterError, match="not a public internet address"):
        await vet_target(parse_target("http://mixed.example/a"), AddressPolicy(), dns)
    ip = await vet_target(parse_target("http://public.example/a"), AddressPolicy(), dns)
    assert str(ip) == "93.184.216.34"


async def test_ipv4_mapped_literal_is_refused():
    with pytest.raises(InvalidParameterError, match="not a public"):
        await vet_target(parse_target("http://[::ffff:127.0.0.1]:80/"), AddressPolicy())


# ------------------------------------------------------------------ downloads
async def test_loopback_is_refused_and_never_contacted(tmp_path):
    async with LocalHttpServer(await serve_bytes(b"secret")) as srv:
        for url in (f"http://127.0.0.1:{srv.port}/x", f"HTTP://localhost:{srv.port}/x",
                    f"http://[::ffff:127.0.0.1]:{srv.port}/x"):
            with pytest.raises(InvalidParameterError) as info:
                await SafeHttp().download(url, tmp_path / "out", LIMITS)
            assert url in info.value.message and "127.0.0.1" not in info.value.message.replace(url, "")
        assert srv.requests == []
    assert not (tmp_path / "out").exists()


async def test_allow_private_lets_a_local_server_through(tmp_path):
    payload = bytes(range(256)) * 1000
    async with LocalHttpServer(await serve_bytes(payload)) as srv:
        res = await SafeHttp(OPEN).download(f"HtTp://127.0.0.1:{srv.port}/clip.wav?sig=1", tmp_path / "a.wav", LIMITS)
    assert res.path.read_bytes() == payload and res.size == len(payload)
    assert res.content_type == "audio/wav"
    assert srv.requests[0].path == "/clip.wav?sig=1"
    assert srv.requests[0].headers["host"] == f"127.0.0.1:{srv.port}"
    assert not (tmp_path / "a.wav.part").exists()


async def test_pinned_address_keeps_the_host_header(tmp_path):
    dns = fake_dns({"media.example": ["127.0.0.1"]})
    async with LocalHttpServer(await serve_bytes(b"abc")) as srv:
        res = await SafeHttp(OPEN, resolver=dns).download(f"http://media.example:{srv.port}/a", tmp_path / "a", LIMITS)
    assert res.path.read_bytes() == b"abc"
    assert srv.requests[0].headers["host"] == f"media.example:{srv.port}"
    assert dns.asked == ["media.example"]  # resolved once: the connection used the vetted address


async def test_redirect_hops_are_checked_again(tmp_path):
    """The first hop is trusted; its redirect to a 'public-looking' name that resolves to loopback is
    refused before anything connects to it."""
    async with LocalHttpServer(await serve_bytes(b"internal")) as internal:
        async def redirect(req, writer):
            target = {"/name": f"http://internal.example:{internal.port}/admin",
                      "/literal": f"http://127.0.0.1:{internal.port}/admin"}[req.path]
            writer.write(response(302, headers={"Location": target}))

        async with LocalHttpServer(redirect) as edge:
            policy = AddressPolicy(trusted=(f"127.0.0.1:{edge.port}",))
            http = SafeHttp(policy, resolver=fake_dns({"internal.example": ["127.0.0.1"]}))
            for path in ("/name", "/literal"):
                url = f"http://127.0.0.1:{edge.port}{path}"
                with pytest.raises(InvalidParameterError, match="not a public internet address") as info:
                    await http.download(url, tmp_path / "x", LIMITS)
                assert url in info.value.message
            assert len(edge.requests) == 2
        assert internal.requests == []


async def test_redirects_are_followed_up_to_three(tmp_path):
    async def chain(req, writer):
        n = int(req.path.strip("/"))
        if n == 0:
            writer.write(response(200, b"end"))
        else:
            writer.write(response(302 if n % 2 else 307, headers={"Location": f"/{n - 1}"}))

    async with LocalHttpServer(chain) as srv:
        res = await SafeHttp(OPEN).download(f"{srv.origin}/3", tmp_path / "ok", LIMITS)
        assert res.path.read_bytes() == b"end" and res.final_url.endswith("/0")
        with pytest.raises(UnreadableFileError, match="more than 3 redirects"):
            await SafeHttp(OPEN).download(f"{srv.origin}/4", tmp_path / "no", LIMITS)


async def test_size_limit_with_and_without_content_length(tmp_path):
    limits = FetchLimits(max_bytes=10_000, deadline_s=5.0)

    async def big(req, writer):
        if req.path == "/declared":
            writer.write(response(200, b"x" * 20_000))
        else:  # no Content-Length: the body ends when the connection closes
            writer.write(response(200, b"", content_length=False))
            for _ in range(40):
                writer.write(b"y" * 1000)
                await writer.drain()

    async with LocalHttpServer(big) as srv:
        for path in ("/declared", "/undeclared"):
            with pytest.raises(MediaTooLargeError, match="10000"):
                await SafeHttp(OPEN).download(f"{srv.origin}{path}", tmp_path / "big", limits)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


async def test_slow_drip_hits_the_minimum_rate(tmp_path):
    limits = FetchLimits(max_bytes=1 << 20, deadline_s=10.0, min_rate_bytes_s=5_000, rate_grace_s=0.3)

    async def drip(req, writer):
        writer.write(response(200, b"", content_length=False))
        while True:
            writer.write(b"z")
            await writer.drain()
            await asyncio.sleep(0.02)

    async with LocalHttpServer(drip) as srv:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(UnreadableFileError, match="slower than the minimum"):
            await SafeHttp(OPEN).download(f"{srv.origin}/slow", tmp_path / "s", limits)
        assert loop.time() - t0 < 3.0


async def test_overall_deadline(tmp_path):
    limits = FetchLimits(max_bytes=1 << 30, deadline_s=0.6, min_rate_bytes_s=1, rate_grace_s=0.2)

    async def steady(req, writer):
        writer.write(response(200, b"", content_length=False))
        while True:
            writer.write(b"z" * 1000)
            await writer.drain()
            await asyncio.sleep(0.01)

    async with LocalHttpServer(steady) as srv:
        with pytest.raises(UnreadableFileError, match="did not finish within 0.6 s"):
            await SafeHttp(OPEN).download(f"{srv.origin}/long", tmp_path / "d", limits)


async def test_refused_and_silent_ports_read_the_same(tmp_path):
    """A closed port and a server that accepts but never answers give one and the same message."""
    limits = FetchLimits(max_bytes=100, deadline_s=0.5)

    async def silent(req, writer):
        await asyncio.sleep(30)

    async with LocalHttpServer(silent) as srv:
        messages = []
        for port in (closed_port(), srv.port):
            url = f"http://127.0.0.1:{port}/x"
            with pytest.raises(UnreadableFileError) as info:
                await SafeHttp(OPEN).download(url, tmp_path / "p", limits)
            messages.append(info.value.message.replace(url, "URL"))
    assert messages[0] == messages[1]
    assert "refused" in messages[0] and "timed out" in messages[0]


async def test_http_error_status_is_named(tmp_path):
    async def missing(req, writer):
        writer.write(response(404, b"nope"))

    async with LocalHttpServer(missing) as srv:
        with pytest.raises(UnreadableFileError, match="HTTP 404"):
            await SafeHttp(OPEN).download(f"{srv.origin}/gone", tmp_path / "g", LIMITS)


async def test_https_pins_the_address_but_checks_the_certificate_name(tmp_path):
    server_ctx, client_ctx = make_tls(tmp_path, "media.example")
    sni_seen = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni_seen.append(name)
    dns = fake_dns({"media.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    async with LocalHttpServer(await serve_bytes(b"tls body"), ssl_context=server_ctx) as srv:
        http = SafeHttp(OPEN, resolver=dns, ssl_context=client_ctx)
        res = await http.download(f"https://media.example:{srv.port}/v.mp4", tmp_path / "v", LIMITS)
        assert res.path.read_bytes() == b"tls body"
        assert sni_seen == ["media.example"]
        assert srv.requests[0].headers["host"] == f"media.example:{srv.port}"
        # Same address, but the certificate is not for this name: the TLS check still applies.
        with pytest.raises(UnreadableFileError):
            await http.download(f"https://other.example:{srv.port}/v.mp4", tmp_path / "w", LIMITS)
        assert len(srv.requests) == 1


async def test_post_returns_status_and_respects_the_policy():
    async def sink(req, writer):
        writer.write(response(201 if req.body == b'{"a":1}' else 400))

    async with LocalHttpServer(sink) as srv:
        status = await SafeHttp(OPEN).post(f"{srv.origin}/hook", b'{"a":1}', {"Content-Type": "application/json"})
        assert status == 201
        with pytest.raises(InvalidParameterError):
            await SafeHttp().post(f"{srv.origin}/hook", b"{}", {})
        assert len(srv.requests) == 1
        assert srv.requests[0].headers["content-type"] == "application/json"
