"""Which network addresses the server may connect to on a client's behalf.

URL inputs and webhook targets are chosen by clients, so without a check a client could make the
server fetch its own loopback services, the cloud metadata endpoint (169.254.169.254), Ray's
dashboard or any host on the private network (SSRF). The rule: parse the URL strictly, resolve the
host once, require EVERY resolved address to be publicly routable, and then connect to that vetted
address only (``url_fetch`` pins it), so a DNS answer that changes between check and connect
(rebinding) cannot slip a private address in.

Pure functions plus one small dataclass; no HTTP client here.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Sequence
from urllib.parse import SplitResult, urlsplit

from actors.errors import InvalidParameterError, UnreadableFileError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses (as strings) the host resolves to. Injectable for tests.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_ALLOWED_SCHEMES = {"http": 80, "https": 443}
# A host whose last label is a number is an IPv4 address to browsers and to inet_aton, in forms
# like 2130706433, 0x7f.1, 0177.0.0.1 or 127.1. Only the canonical dotted quad is accepted, so no
# two parsers can disagree about which address a host means.
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)(0x[0-9a-f]*|[0-9]+)\.?$", re.IGNORECASE)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$",
                       re.IGNORECASE)

# Ranges that ipaddress (3.11) still reports as global, or that embed another address.
_EXTRA_BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4", "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48",
    "100::/64", "2001::/32", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
))


@dataclass(frozen=True)
class Target:
    """A parsed http(s) URL: lower-cased scheme and host, explicit port."""

    url: str  # as the client wrote it (for messages)
    scheme: str
    host: str  # no brackets for IPv6 literals
    port: int
    path_and_query: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _ALLOWED_SCHEMES[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True)
class AddressPolicy:
    """``allow_private`` (config ``jobs.allow_private_urls`` / ``webhooks.allow_private``) turns the
    check off, for tests and trusted networks. ``trusted`` lists exceptions that stay allowed while
    the check is on: ``"10.0.0.0/8"`` (any port) or ``"10.1.2.3:9000"`` / ``"[fd00::1]:9000"``."""

    allow_private: bool = False
    trusted: tuple[str, ...] = ()
    _trusted: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None], ...] = field(
        init=False, repr=False, compare=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "_trusted", tuple(_parse_trusted(t) for t in self.trusted))

    def allows(self, ip: IPAddress, port: int) -> bool:
        if self.allow_private:
            return True
        if any(ip in net and (p is None or p == port) for net, p in self._trusted):
            return True
        return is_public_address(ip)


def _parse_trusted(entry: str):
    entry = entry.strip()
    port = None
    m = re.match(r"^\[(.+)\]:(\d+)$", entry) or re.match(r"^([0-9.]+(?:/\d+)?):(\d+)$", entry)
    if m:
        entry, port = m.group(1), int(m.group(2))
    try:
        return ipaddress.ip_network(entry, strict=False), port
    except ValueError as exc:
        raise ValueError(f"trusted address {entry!r} is not an address, a network or address:port") from exc


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (and no IPv6 form that embeds IPv4)."""
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.sixtofour or ip.teredo):
        return False
    if (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified):
        return False
    return not any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version)


def parse_target(url: str) -> Target:
    """Strictly parse a client's http(s) URL; anything odd is an ``InvalidParameterError``."""
    if not isinstance(url, str) or not url or len(url) > 4096:
        raise InvalidParameterError("a URL must be a non-empty string of at most 4096 characters", path=str(url)[:200])
    if any(ord(c) < 0x21 or ord(c) == 0x7f for c in url):
        raise InvalidParameterError("URL contains whitespace or control characters", path=url.strip()[:200])
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameterError(f"URL cannot be parsed: {exc}", path=url) from exc
    scheme = parts.scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise InvalidParameterError("only http and https URLs are accepted", path=url)
    if parts.username is not None or parts.password is not None:
        raise InvalidParameterError("URLs with credentials (user:password@) are not accepted", path=url)
    host = (parts.hostname or "").lower()  # urlsplit strips IPv6 brackets
    if not host:
        raise InvalidParameterError("URL has no host", path=url)
    if "%" in host:  # IPv6 zone ids only make sense for link-local addresses
        raise InvalidParameterError("URL host has a zone id", path=url)
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidParameterError("URL host is not a valid IPv6 address", path=url) from exc
    elif _NUMERIC_LAST_LABEL.search(host):
        try:
            ipaddress.IPv4Address(host.rstrip("."))
        except ValueError as exc:
            raise InvalidParameterError(
                "URL host is a numeric address in a non-standard form (use a dotted quad or a name)", path=url) from exc
        host = host.rstrip(".")
    elif not _HOSTNAME.match(host):
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidParameterError("URL host is not a valid host name", path=url) from exc
        if not _HOSTNAME.match(host):
            raise InvalidParameterError("URL host is not a valid host name", path=url)
    if port is None:
        port = _ALLOWED_SCHEMES[scheme]
    if not 0 < port < 65536:
        raise InvalidParameterError("URL port is out of range", path=url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, scheme=scheme, host=host, port=port, path_and_query=path)


async def system_resolver(host: str, port: int) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


async def vet_target(target: Target, policy: AddressPolicy, resolver: Resolver | None = None) -> IPAddress:
    """Resolve ``target.host`` once and return the address to connect to.

    Every resolved address must be allowed: a name that answers with one public and one private
    address is refused, since which one a later lookup returns is the attacker's choice.
    """
    try:
        literal = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            answers = await (resolver or system_resolver)(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            raise UnreadableFileError("the URL's host name does not resolve", path=target.url) from exc
        addresses = _unique(ipaddress.ip_address(a.split("%", 1)[0]) for a in answers)
        if not addresses:
            raise UnreadableFileError("the URL's host name does not resolve", path=target.url)
    for ip in addresses:
        if not policy.allows(ip, target.port):
            # The message names the rule, not the address: internal DNS contents stay private.
            raise InvalidParameterError(
                "the URL's host is not a public internet address (loopback, private, link-local, multicast "
                "and reserved addresses are refused)", path=target.url)
    return addresses[0]


def _unique(items: Iterable[IPAddress]) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for ip in items:
        if ip not in seen:
            seen.append(ip)
    return seen
