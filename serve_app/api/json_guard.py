"""JSON request bodies with size and depth limits.

``json.loads`` on hostile input fails in ways a handler rarely expects: deep nesting raises
``RecursionError``, a 5000-digit integer raises ``ValueError``, ``NaN`` parses silently, and a
large body is held in memory whole. Every one of those becomes an ``InvalidParameterError`` (a
typed 4xx) here, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from actors.errors import InvalidParameterError, MediaTooLargeError

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_DEPTH = 16


def nesting_depth(value: Any, limit: int | None = None) -> int:
    """Depth of a parsed JSON value (a scalar is 0), walked without recursion; stops counting
    once past ``limit``. The parse itself is bounded by the byte limit and by the C parser's
    recursion guard (``RecursionError``), so no hand-written pre-scan of the text is needed."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if limit is not None and deepest > limit:
                return deepest
            stack.extend((child, depth) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
               expect: type | None = dict, what: str = "request body") -> Any:
    """Parse ``raw`` or raise a typed error naming ``what``. ``expect``: the required top-level
    type (``None`` for any)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise MediaTooLargeError(f"{what} is {len(raw)} bytes, over the JSON limit of {max_bytes}", path=what)
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise InvalidParameterError(f"{what} is nested too deeply (at most {max_depth} levels)", path=what) from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, huge ints, NaN / Infinity
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or type(exc).__name__
        raise InvalidParameterError(f"{what} is not valid JSON: {reason}", path=what) from exc
    if nesting_depth(value, max_depth) > max_depth:
        raise InvalidParameterError(f"{what} is nested more than {max_depth} levels deep", path=what)
    if expect is not None and not isinstance(value, expect):
        raise InvalidParameterError(
            f"{what} must be a JSON {_json_type(expect)}, not {_json_type(type(value))}", path=what)
    return value


async def read_json(request, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH,
                    expect: type | None = dict, what: str = "request body") -> Any:
    """Read a starlette ``Request``'s body, stopping as soon as it passes ``max_bytes``, and
    parse it with :func:`parse_json`. An empty body is ``{}`` when an object is expected."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise MediaTooLargeError(f"{what} is over the JSON limit of {max_bytes} bytes", path=what)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip() and expect is dict:
        return {}
    return parse_json(raw, max_bytes=max_bytes, max_depth=max_depth, expect=expect, what=what)


def _json_type(t: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            bool: "boolean", type(None): "null"}.get(t, t.__name__)
