"""Hostile JSON becomes a typed 4xx, never a 500."""

from __future__ import annotations

import pytest

from actors.errors import InvalidParameterError, MediaTooLargeError
from serve_app.api.json_guard import nesting_depth, parse_json


def test_plain_object_parses():
    assert parse_json(b'{"audio": "https://x/a.wav", "box": [1, 2, 3, 4]}') == {
        "audio": "https://x/a.wav", "box": [1, 2, 3, 4]}


def test_depth_limit_counts_structure_not_strings():
    assert nesting_depth({"a": [[1]], "b": "[[[[[[[["}) == 3
    assert parse_json(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', max_depth=2) == {"s": "[" * 30}
    with pytest.raises(InvalidParameterError, match="nested more than 4 levels"):
        parse_json(b'{"a": [[[[1]]]]}', max_depth=4)


@pytest.mark.parametrize("raw, reason", [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),  # past the C parser's recursion guard
    (b"[" * 50 + b"]" * 50, "nested more than 16"),
    (b"9" * 5000, "digits"),
    (b"[NaN]", "NaN"),
    (b"[-Infinity]", "Infinity"),
    (b"{bad", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_hostile_bodies(raw, reason):
    with pytest.raises(InvalidParameterError, match=reason) as info:
        parse_json(raw, max_bytes=1 << 20)
    assert info.value.message.startswith("request body")


def test_size_and_type():
    with pytest.raises(MediaTooLargeError, match="over the JSON limit of 10"):
        parse_json(b'{"a": "0123456789"}', max_bytes=10)
    with pytest.raises(InvalidParameterError, match="must be a JSON object, not array"):
        parse_json(b"[1]")
    assert parse_json(b"[1]", expect=list, what="box") == [1]
    with pytest.raises(InvalidParameterError, match="^box"):
        parse_json(b"{}", expect=list, what="box")
